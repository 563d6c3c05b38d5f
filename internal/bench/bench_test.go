package bench

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkEpochChange times an epoch change (a new domain joins, until
// every member is connected) beside one plain etcd Put + watch
// notification on the same store; the ratio is reported as "x-store-round".
// Run: go test -run - -bench EpochChange -benchtime 5x ./internal/bench
func BenchmarkEpochChange(b *testing.B) {
	for _, shared := range []bool{false, true} {
		for _, n := range []int{3, 10, 100} {
			b.Run(fmt.Sprintf("members=%d/shared-client=%v", n, shared), func(b *testing.B) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				defer cancel()
				res, err := EpochChange(ctx, Options{Members: n, Reps: b.N, SharedClient: shared, DataDir: b.TempDir()})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(Median(res.Epoch).Microseconds())/1000, "ms/epoch")
				b.ReportMetric(float64(Median(res.Baseline).Microseconds())/1000, "ms/store-round")
				b.ReportMetric(res.Ratio(), "x-store-round")
				b.ReportMetric(float64(Median(res.FromTrigger).Microseconds())/1000, "ms/from-trigger")
				b.ReportMetric(res.TriggerRatio(), "x-from-trigger")
				b.ReportMetric(float64(Median(res.Floor).Microseconds())/1000, "ms/floor")
				b.ReportMetric(res.FloorRatio(), "x-floor")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// TestEpochChangeMeasures checks the measurement itself on a small group:
// every rep is timed and positive, and the baseline is sane.
func TestEpochChangeMeasures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := EpochChange(ctx, Options{Members: 2, Reps: 3, BaselineReps: 5, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Epoch) != 3 || len(res.FromTrigger) != 3 || len(res.Baseline) != 5 || len(res.Floor) != 3 {
		t.Fatalf("got %d epoch, %d baseline and %d floor samples", len(res.Epoch), len(res.Baseline), len(res.Floor))
	}
	for i, d := range res.Epoch {
		if d <= 0 || res.FromTrigger[i] <= 0 || res.FromTrigger[i] > d {
			t.Fatalf("sample %d: epoch %v, from trigger %v", i, d, res.FromTrigger[i])
		}
	}
	for _, d := range append(res.Baseline, res.Floor...) {
		if d <= 0 {
			t.Fatalf("non-positive baseline or floor sample %v", d)
		}
	}
	// The floor is three store writes in sequence, each with its
	// notification: it cannot be cheaper than one store round.
	if Median(res.Floor) < Median(res.Baseline) {
		t.Errorf("floor %v below one store round %v", Median(res.Floor), Median(res.Baseline))
	}
	t.Logf("epoch %v, store round %v, ratio %.1f; floor %v, from trigger / floor %.1f", Median(res.Epoch), Median(res.Baseline), res.Ratio(), Median(res.Floor), res.FloorRatio())
}
