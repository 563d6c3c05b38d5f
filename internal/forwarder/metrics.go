package forwarder

import (
	"sync"

	"github.com/idc-dev/idc/internal/promutil"
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a request fails, the label of idc_forwarder_failed_total.
const (
	reasonInvalid = iota
	reasonEnded
	reasonLost
	reasonClosed
	reasons
)

var reasonNames = [reasons]string{"invalid", "ended", "lost", "closed"}

// metrics are one forwarder's Prometheus metrics, labelled with its
// domain. They are registered with Config.Metrics, if set.
type metrics struct {
	forwarded, answered, queued, unmatched, dials, lost prometheus.Counter
	failed                                              [reasons]prometheus.Counter
	seconds                                             prometheus.Observer
}

var unregistered = sync.OnceValue(func() *metrics { return buildMetrics(nil, "") })

func newMetrics(reg prometheus.Registerer, domain string) *metrics {
	if reg == nil {
		return unregistered()
	}
	return buildMetrics(reg, domain)
}

func buildMetrics(reg prometheus.Registerer, domain string) *metrics {
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "idc", Subsystem: "forwarder", Name: name, Help: help}, append([]string{"domain"}, extra...)))
	}
	failed := counter("failed_total", "Requests failed, by reason (invalid: not a well-formed block request or a duplicate ID, not forwarded; ended: the epoch ended here first; lost: the storage connection failed; closed: the forwarder closed).", "reason")
	seconds := promutil.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "idc", Subsystem: "forwarder", Name: "request_seconds",
		Help:    "Time from a request's forwarding to the storage's answer.",
		Buckets: prometheus.ExponentialBuckets(25e-6, 2, 18), // 25 µs to about 3 s
	}, []string{"domain"}))
	m := &metrics{
		forwarded: counter("forwarded_total", "Requests handed to the storage connection.").WithLabelValues(domain),
		answered:  counter("answered_total", "Requests answered by the storage.").WithLabelValues(domain),
		queued:    counter("queued_total", "Requests that waited for room in the storage connection's send window.").WithLabelValues(domain),
		unmatched: counter("unmatched_answers_total", "Answers from the storage that matched no pending request (dropped).").WithLabelValues(domain),
		dials:     counter("dials_total", "Storage connections dialed (one per epoch that forwarded anything).").WithLabelValues(domain),
		lost:      counter("connections_lost_total", "Storage connections lost (dial failed, reset, closed by the storage, malformed answer).").WithLabelValues(domain),
		seconds:   seconds.WithLabelValues(domain),
	}
	for i, r := range reasonNames {
		m.failed[i] = failed.WithLabelValues(domain, r)
	}
	return m
}
