package storage

import (
	"github.com/idc-dev/idc/block"
	"github.com/prometheus/client_golang/prometheus"
)

// serverMetrics are a server's Prometheus metrics; without a registerer
// they are counted all the same, unregistered.
type serverMetrics struct {
	// requests by operation (0: not a request) and status, resolved once.
	requests [block.OpZero + 1][block.StatusShutdown + 1]prometheus.Counter
	conns    prometheus.Gauge
}

func newServerMetrics(reg prometheus.Registerer, name string) *serverMetrics {
	labels := prometheus.Labels{"resource": name}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idc_storage_requests_total", Help: "Block requests answered, by operation and status.", ConstLabels: labels,
	}, []string{"op", "status"})
	m := &serverMetrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{Name: "idc_storage_connections", Help: "Resource connections open.", ConstLabels: labels}),
	}
	for op := range m.requests {
		opName := "invalid"
		if op > 0 {
			opName = block.Op(op).String()
		}
		for st := block.StatusOK; st <= block.StatusShutdown; st++ {
			m.requests[op][st] = requests.WithLabelValues(opName, st.String())
		}
	}
	if reg != nil {
		reg.MustRegister(requests, m.conns)
	}
	return m
}

// count counts a request of op (0: a frame that is not a request)
// answered with st.
func (m *serverMetrics) count(op block.Op, st block.Status) {
	if int(op) < len(m.requests) && st >= block.StatusOK && st <= block.StatusShutdown {
		m.requests[op][st].Inc()
	}
}
