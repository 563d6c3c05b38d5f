package coordinator

import (
	"time"

	"github.com/idc-dev/idc/internal/promutil"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the coordinator's Prometheus metrics (idc_coordinator_*).
type Metrics struct {
	leader        prometheus.Gauge
	epoch         *prometheus.GaugeVec
	writes        *prometheus.CounterVec
	writeFailed   *prometheus.CounterVec
	cleanupFailed *prometheus.CounterVec
	relists       prometheus.Counter
	change        *prometheus.HistogramVec
	revokes       *prometheus.CounterVec
	stepDowns     prometheus.Counter
}

// NewMetrics returns the coordinator's metrics, registered with reg if it
// is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics { return newMetrics(reg) }

func newMetrics(reg prometheus.Registerer) *Metrics {
	opts := func(name, help string) (string, string, string, string) { return "idc", "coordinator", name, help }
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		ns, sub, n, h := opts(name, help)
		return promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: n, Help: h}, labels))
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		ns, sub, n, h := opts(name, help)
		return promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: n, Help: h}, labels))
	}
	return &Metrics{
		leader:        gauge("leader", "1 while this candidate is the elected (or, without election, an active) coordinator.").WithLabelValues(),
		epoch:         gauge("epoch", "The number of the last epoch record this coordinator wrote, per group.", "group"),
		writes:        counter("epoch_writes_total", "Epoch records written, per group and state.", "group", "state"),
		writeFailed:   counter("epoch_write_failures_total", "Epoch writes not applied, per group and kind: conflict (the compare-and-swap failed: another writer moved first), rejected (the store refused the request as such), unavailable (no answer, or no leader).", "group", "kind"),
		cleanupFailed: counter("cleanup_failures_total", "Cleanups of obsolete records that failed, per group and kind (rejected, unavailable); they are retried.", "group", "kind"),
		relists:       counter("relists_total", "Times the watch over every group failed or fell silent and everything was listed again.").WithLabelValues(),
		revokes:       counter("revocations_total", "Leases of departed or excluded members revoked, per group.", "group"),
		stepDowns:     counter("step_downs_total", "Times this candidate stopped leading other than by being stopped: its election lease lapsed by its own clock, was gone, or its key vanished.").WithLabelValues(),
		change: promutil.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "idc", Subsystem: "coordinator", Name: "epoch_change_seconds",
			Help:    "Time from writing an epoch quiescing to writing it connected (quiesce, departed handling, acknowledgements), per group and mode.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"group", "mode"})),
	}
}

// written records a successful epoch write; took is how long since this
// coordinator wrote the record quiescing (zero if it did not).
func (m *Metrics) written(rec proto.EpochRecord, took time.Duration) {
	m.epoch.WithLabelValues(rec.Group).Set(float64(rec.Number))
	m.writes.WithLabelValues(rec.Group, string(rec.State)).Inc()
	if rec.State == proto.Connected && took > 0 {
		m.change.WithLabelValues(rec.Group, string(rec.Mode)).Observe(took.Seconds())
	}
}
