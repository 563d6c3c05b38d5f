package guard

import (
	"fmt"

	core "github.com/idc-dev/idc/core/guard"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a guard's Prometheus metrics; without a registerer they are
// counted all the same, unregistered.
type metrics struct {
	refused map[string]prometheus.Counter // by reason, resolved once
	fences  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, name string) *metrics {
	labels := prometheus.Labels{"resource": name}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idc_guard_refused_total", Help: "Requests the guard refused, by reason.", ConstLabels: labels,
	}, []string{"reason"})
	m := &metrics{
		refused: map[string]prometheus.Counter{},
		fences:  prometheus.NewCounter(prometheus.CounterOpts{Name: "idc_guard_fences_total", Help: "Fences applied.", ConstLabels: labels}),
	}
	for _, r := range append(core.Reasons, "other") {
		m.refused[r] = refused.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(refused, m.fences)
	}
	return m
}

func (m *metrics) refuse(err error) { m.refused[core.Reason(err)].Inc() }

// abortError is the error of the tickets a fence of epoch aborted in
// group (one error for all of them: a fence may abort many).
func abortError(group string, epoch uint64) error {
	return fmt.Errorf("%w: group %s fenced at %d", ErrAborted, group, epoch)
}
