package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestGuardMeasure runs the guard's measurement with tiny durations: every
// figure is there and positive, the guard's request path allocates
// nothing, and every fence was timed.
func TestGuardMeasure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := Guard(ctx, GuardOptions{Rounds: 2, Duration: 5 * time.Millisecond, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(progress.String(), "round "); got != 2 {
		t.Errorf("%d progress lines, want 2:\n%s", got, progress.String())
	}
	applies, fences := 0, 0
	for _, r := range res {
		if len(r.Allocs) != 2 {
			t.Fatalf("%+v: %d rounds of allocations, want 2", r, len(r.Allocs))
		}
		switch r.Kind {
		case GuardApply, GuardApplyFunc, GuardApplyDirect:
			applies++
			if r.Concurrency < 1 || len(r.Baseline) != 2 || len(r.Guard) != 2 {
				t.Fatalf("%+v: want a concurrency and 2 rounds", r)
			}
			for i := range r.Guard {
				if r.Baseline[i] <= 0 || r.Guard[i] <= 0 {
					t.Fatalf("%+v: a figure is not positive", r)
				}
			}
			// The count is the whole process's: the collector's, timers',
			// and what goroutines of earlier tests still do. Those are a
			// few allocations per sample whatever its length, so with the
			// 5 ms samples here, on a loaded machine, they came to 0.0135
			// per request. An allocation per request (or per other
			// request) is 0.5 or more, whatever the machine's speed.
			if a := MedianFloat(r.Allocs); a >= 0.5 {
				t.Errorf("%s with %d appliers: %.4f allocations per request, want 0", r.Kind, r.Concurrency, a)
			}
		case GuardFence:
			fences++
			if r.Fences < 2 || r.P50 <= 0 || r.P99 < r.P50 {
				t.Fatalf("%+v: want fences timed, 0 < p50 <= p99", r)
			}
		default:
			t.Fatalf("%+v: unknown kind", r)
		}
	}
	if applies < 2 || applies%2 != 0 || fences != 3 {
		t.Fatalf("%d apply figures and %d fence figures, want 2 per concurrency and 3", applies, fences)
	}
}
