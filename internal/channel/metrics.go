package channel

import (
	"sync"

	"github.com/idc-dev/idc/internal/promutil"
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a frame is dropped.
const (
	dropEpoch     = iota // its epoch is not the link's
	dropDuplicate        // its sequence number was seen
	dropEnded            // its epoch ended before it was delivered
)

// metrics are one mesh's Prometheus metrics, labelled with its group and
// domain. They are registered with Config.Metrics, if set.
type metrics struct {
	opened   prometheus.Counter
	suspect  prometheus.Counter
	stalls   prometheus.Counter
	protocol prometheus.Counter
	drops    [3]prometheus.Counter
	faults   map[string]prometheus.Counter
}

var unregistered = sync.OnceValue(func() *metrics { return buildMetrics(nil, "", "") })

func newMetrics(reg prometheus.Registerer, group, domain string) *metrics {
	if reg == nil {
		return unregistered()
	}
	return buildMetrics(reg, group, domain)
}

func buildMetrics(reg prometheus.Registerer, group, domain string) *metrics {
	labels := []string{"group", "domain"}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "idc", Subsystem: "channel", Name: name, Help: help}, append(labels, extra...)))
	}
	dropped := counter("frames_dropped_total", "Frames dropped, by reason (epoch: not the channel's epoch; duplicate: a sequence number already received; ended: the epoch ended before delivery).", "reason")
	faults := counter("faults_total", "Peers reported lost, by cause (silent, reset, protocol, unreachable, refused, setup).", "cause")
	m := &metrics{
		opened:   counter("opened_total", "Channels opened.").WithLabelValues(group, domain),
		suspect:  counter("suspected_total", "Peers suspected after missed heartbeats.").WithLabelValues(group, domain),
		stalls:   counter("stalled_ticks_total", "Heartbeat ticks that came more than half a heartbeat late (this process was starved); no peer is suspected at such a tick.").WithLabelValues(group, domain),
		protocol: counter("protocol_errors_total", "Channels closed for a frame that broke the protocol.").WithLabelValues(group, domain),
		faults:   map[string]prometheus.Counter{},
	}
	for i, r := range []string{"epoch", "duplicate", "ended"} {
		m.drops[i] = dropped.WithLabelValues(group, domain, r)
	}
	for _, c := range []string{faultSilent, faultReset, faultProtocol, faultUnreachable, faultRefused, faultSetup} {
		m.faults[c] = faults.WithLabelValues(group, domain, c)
	}
	return m
}

func (m *metrics) dropped(reason, n int) { m.drops[reason].Add(float64(n)) }

func (m *metrics) fault(cause string) { m.faults[cause].Inc() }
