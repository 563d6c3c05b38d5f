package coordinator

import (
	"time"

	"github.com/idc-dev/idc/internal/promutil"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the coordinator's Prometheus metrics, registered with
// Config.Metrics if set.
type metrics struct {
	leader    prometheus.Gauge
	epoch     *prometheus.GaugeVec
	writes    *prometheus.CounterVec
	conflicts *prometheus.CounterVec
	change    *prometheus.HistogramVec
	revokes   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	opts := func(name, help string) (string, string, string, string) { return "idc", "coordinator", name, help }
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		ns, sub, n, h := opts(name, help)
		return promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: n, Help: h}, labels))
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		ns, sub, n, h := opts(name, help)
		return promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: n, Help: h}, labels))
	}
	return &metrics{
		leader:    gauge("leader", "1 while this candidate is the elected (or, without election, an active) coordinator.").WithLabelValues(),
		epoch:     gauge("epoch", "The number of the last epoch record this coordinator wrote, per group.", "group"),
		writes:    counter("epoch_writes_total", "Epoch records written, per group and state.", "group", "state"),
		conflicts: counter("write_conflicts_total", "Epoch writes whose compare-and-swap failed (another writer moved first) or that the store did not answer.", "group"),
		revokes:   counter("revocations_total", "Leases of departed or excluded members revoked, per group.", "group"),
		change: promutil.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "idc", Subsystem: "coordinator", Name: "epoch_change_seconds",
			Help:    "Time from writing an epoch quiescing to writing it connected (quiesce, departed handling, acknowledgements), per group and mode.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"group", "mode"})),
	}
}

// written records a successful epoch write; quiescedAt is when this
// coordinator wrote the record quiescing (zero if it did not).
func (m *metrics) written(rec proto.EpochRecord, quiescedAt time.Time) {
	m.epoch.WithLabelValues(rec.Group).Set(float64(rec.Number))
	m.writes.WithLabelValues(rec.Group, string(rec.State)).Inc()
	if rec.State == proto.Connected && !quiescedAt.IsZero() {
		m.change.WithLabelValues(rec.Group, string(rec.Mode)).Observe(time.Since(quiescedAt).Seconds())
	}
}
