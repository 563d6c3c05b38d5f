package membership

import (
	"sync"
	"time"

	"github.com/idc-dev/idc/internal/promutil"
	"github.com/prometheus/client_golang/prometheus"
)

// memberMetrics are one membership's Prometheus metrics, labelled with its
// group and domain. They are registered with Config.Metrics, if set.
type memberMetrics struct {
	epoch       prometheus.Gauge
	connected   prometheus.Gauge
	connects    prometheus.Counter
	quiesce     prometheus.Observer
	opsInFlight prometheus.Gauge
	fencedLease prometheus.Counter
	fencedEvict prometheus.Counter
	leaseValid  prometheus.Gauge
	renewFailed prometheus.Counter
	renewed     prometheus.Observer
	watchHung   prometheus.Counter
	// disconnectedAt is when the last epoch was disconnected (the
	// machine's clock; 0 if never).
	disconnectedAt time.Duration
}

// unregistered is the one set of metrics every membership without a
// registry shares: nothing reads them, and building a set per membership
// is most of what a join allocates.
var unregistered = sync.OnceValue(func() *memberMetrics { return buildMemberMetrics(nil, "", "") })

func newMemberMetrics(reg prometheus.Registerer, group, domain string) *memberMetrics {
	if reg == nil {
		m := *unregistered()
		return &m // disconnectedAt is per membership
	}
	return buildMemberMetrics(reg, group, domain)
}

func buildMemberMetrics(reg prometheus.Registerer, group, domain string) *memberMetrics {
	labels := []string{"group", "domain"}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "idc", Subsystem: "member", Name: name, Help: help}, labels))
	}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "idc", Subsystem: "member", Name: name, Help: help}, append(labels, extra...)))
	}
	quiesce := promutil.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "idc", Subsystem: "member", Name: "quiesce_seconds",
		Help:    "Time from an epoch's disconnect to this member's quiesce acknowledgement (its last operation of the epoch ended).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, labels))
	renewed := promutil.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "idc", Subsystem: "member", Name: "renew_seconds",
		Help:    "Time from sending a lease renewal to its answer, for renewals the store answered (their count is the renewals made).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, labels))
	fenced := counter("fenced_total", "Times the membership fenced itself, by reason (lease: its lease may have lapsed; evicted: the coordinator dropped it).", "reason")
	return &memberMetrics{
		epoch:       gauge("epoch", "The connected epoch's number (0 while not connected).").WithLabelValues(group, domain),
		connected:   gauge("connected", "1 while connected in an epoch, else 0.").WithLabelValues(group, domain),
		connects:    counter("epochs_total", "Epochs this membership was connected in.").WithLabelValues(group, domain),
		quiesce:     quiesce.WithLabelValues(group, domain),
		opsInFlight: gauge("ops_in_flight", "Operations in progress, in any epoch.").WithLabelValues(group, domain),
		fencedLease: fenced.WithLabelValues(group, domain, "lease"),
		fencedEvict: fenced.WithLabelValues(group, domain, "evicted"),
		leaseValid:  gauge("lease_valid_seconds", "How long the lease is certainly valid by the local clock, as of the last answered renewal.").WithLabelValues(group, domain),
		renewFailed: counter("renew_failures_total", "Lease renewals the store did not answer.").WithLabelValues(group, domain),
		renewed:     renewed.WithLabelValues(group, domain),
		watchHung:   counter("watch_hung_total", "Epoch watches replaced because they delivered nothing, not even a requested progress notification, within two watch checks.").WithLabelValues(group, domain),
	}
}
