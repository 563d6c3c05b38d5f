package idc_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gather returns every sample of reg as "name{l=v,...}" → value
// (histograms as their sample count).
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			key := fmt.Sprintf("%s{%s}", mf.GetName(), strings.Join(ls, ","))
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestMetrics runs a coordinator and two domains on one registry through
// a join, an operation that holds a quiesce, and a fault report, and checks
// the figures each exports.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t)
	e.coordinator(coordinator.Config{Metrics: reg})
	withReg := func(c *idc.Config) { c.Metrics = reg }
	a := e.join("a", withReg)
	c := e.join("c", withReg)
	e.connected(testenv.Mark{}, 10*time.Second, "a", "c")
	ep := current(t, a, 5*time.Second, "a", "c")
	op, err := ep.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if got := gather(t, reg)["idc_member_ops_in_flight{domain=a,group=g}"]; got != 1 {
		t.Errorf("ops in flight of a = %v, want 1", got)
	}
	mark := e.mark()
	e.join("b", withReg)
	<-ep.Context().Done()
	time.Sleep(50 * time.Millisecond) // the op holds quiesce for a while
	op.End()
	e.connected(mark, 10*time.Second, "a", "b", "c")
	current(t, a, 5*time.Second, "a", "b", "c")
	mark = e.mark()
	if err := a.ReportFault(t.Context(), "c"); err != nil {
		t.Fatal(err)
	}
	waitDone(t, c, 10*time.Second)
	fin := e.connected(mark, 10*time.Second, "a", "b")

	// a is in every epoch: it acknowledged every one written quiescing
	// (all but epoch 1) and connected in every one written connected. The
	// figures must all be exact once the last writes have been reported.
	current(t, a, 5*time.Second, "a", "b")
	want := map[string]float64{
		"idc_coordinator_leader{}":                                    1,
		"idc_coordinator_epoch{group=g}":                              float64(fin.Number),
		"idc_coordinator_epoch_writes_total{group=g,state=connected}": float64(fin.Number),
		"idc_coordinator_revocations_total{group=g}":                  1,
		"idc_coordinator_epoch_change_seconds{group=g,mode=lease}":    float64(fin.Number - 1), // every change but the forming of epoch 1
		"idc_member_epoch{domain=a,group=g}":                          float64(fin.Number),
		"idc_member_connected{domain=a,group=g}":                      1,
		"idc_member_connected{domain=c,group=g}":                      0,
		"idc_member_ops_in_flight{domain=a,group=g}":                  0,
		"idc_member_fenced_total{domain=c,group=g,reason=evicted}":    1,
		"idc_member_quiesce_seconds{domain=a,group=g}":                float64(fin.Number - 1),
		"idc_member_epochs_total{domain=a,group=g}":                   float64(len(connectedRecords(e))),
	}
	var m map[string]float64
	var wrong []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m, wrong = gather(t, reg), nil
		for key, w := range want {
			if got, ok := m[key]; !ok || got != w {
				wrong = append(wrong, fmt.Sprintf("%s = %v (present %v), want %v", key, got, ok, w))
			}
		}
		if len(wrong) == 0 || time.Now().After(deadline) {
			break
		}
	}
	sort.Strings(wrong)
	for _, w := range wrong {
		t.Error(w)
	}
	if got := m["idc_member_lease_valid_seconds{domain=a,group=g}"]; got <= 0 || got > 2 {
		t.Errorf("a's lease validity = %v s, want in (0, 2]", got)
	}
}

// connectedRecords returns the connected records of the test group so far.
func connectedRecords(e *env) []proto.EpochRecord {
	var out []proto.EpochRecord
	for _, r := range e.h.Records(group) {
		if r.State == proto.Connected {
			out = append(out, r)
		}
	}
	return out
}
