package bench

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// TestScale runs the scale harness on a tiny size: every membership must
// connect, nothing may be fenced or change spontaneously while idle, and
// the ratio must come from two real sets of measurements.
func TestScale(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const groups, reps = 5, 3
	o := ScaleOptions{Groups: []int{groups}, PerClient: 4, Idle: 2 * time.Second, Reps: reps, Timeout: time.Minute, DataDir: t.TempDir()}
	if testing.Verbose() {
		o.Progress = os.Stderr
	}
	rs, err := Scale(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 {
		t.Fatalf("%d results, want 1", len(rs))
	}
	r := rs[0]
	if r.Broke() {
		t.Fatalf("outcome %q (%v)", r.Outcome, r.Err)
	}
	if r.Outcome != "ok" {
		t.Errorf("outcome %q", r.Outcome)
	}
	if r.Memberships != groups*3 || r.Connected != r.Memberships || r.Formation <= 0 {
		t.Fatalf("%d of %d memberships connected, formation %v", r.Connected, r.Memberships, r.Formation)
	}
	// 15 memberships, 4 per client; the base group and the joiners of
	// the timed changes and of the burst use clients too.
	if r.Clients < (r.Memberships+3+2*reps+groups+3)/4 {
		t.Errorf("%d clients for %d memberships at 4 per client", r.Clients, r.Memberships)
	}
	if r.SpontaneousEpochs != 0 || r.Ended != 0 || r.FencedLease != 0 || r.FencedEvicted != 0 {
		t.Errorf("idle groups changed: %d spontaneous epochs %v, %d memberships ended, fenced %d (lease) %d (evicted)",
			r.SpontaneousEpochs, r.SpontaneousReasons, r.Ended, r.FencedLease, r.FencedEvicted)
	}
	if r.Idle < o.Idle || r.IdleCPU <= 0 || r.CPUCores <= 0 || r.CPUPer1000 <= 0 {
		t.Errorf("idle window %v, CPU %v (%.3f cores, %.3f per 1000)", r.Idle, r.IdleCPU, r.CPUCores, r.CPUPer1000)
	}
	// 18 leases renewed once a second over 2 s: some renewals must have
	// been counted, and not wildly more than the memberships can make.
	if r.Renewals <= 0 || r.RenewalsPerSec > 3*r.RenewalsExpected {
		t.Errorf("%d renewals (%.1f/s, expected %.1f/s)", r.Renewals, r.RenewalsPerSec, r.RenewalsExpected)
	}
	if r.RenewSamples == 0 || r.RenewP50 <= 0 || r.RenewP99 < r.RenewP50 || r.RenewMax < r.RenewP99 || r.RenewMax > leaseValidity() {
		t.Errorf("renewal latency from %d samples: p50 %v p99 %v max %v", r.RenewSamples, r.RenewP50, r.RenewP99, r.RenewMax)
	}
	if len(r.Single) != reps || len(r.Loaded) != reps {
		t.Fatalf("%d changes alone and %d beside the groups, want %d each", len(r.Single), len(r.Loaded), reps)
	}
	for _, d := range append(r.Single, r.Loaded...) {
		// An epoch change is at least a lease grant, a registration and
		// two epoch writes, each a store round.
		if d < 100*time.Microsecond || d > time.Minute {
			t.Errorf("implausible epoch change %v", d)
		}
	}
	if want := float64(Median(r.Loaded)) / float64(Median(r.Single)); r.Ratio != want || r.Ratio <= 0 {
		t.Errorf("ratio %v, want %v", r.Ratio, want)
	}
	if r.BurstConnected != groups || r.BurstLost != 0 || r.Burst <= 0 || r.BurstJoins <= 0 || r.BurstJoins > r.Burst || r.BurstPerSec <= 0 {
		t.Errorf("burst: %d of %d groups in %v (joins %v, %.1f/s)", r.BurstConnected, groups, r.Burst, r.BurstJoins, r.BurstPerSec)
	}
	if r.LeaderLosses != 0 {
		t.Errorf("the coordinator lost its election %d times", r.LeaderLosses)
	}
	if r.Formed.Goroutines <= r.Before.Goroutines || r.Formed.FDs <= 0 || r.PeakRSS <= 0 {
		t.Errorf("resources: before %+v, formed %+v, peak rss %d", r.Before, r.Formed, r.PeakRSS)
	}
	// Everything of the size is shut down: the goroutines are back near
	// where they were (a few of the gRPC and etcd runtime may linger).
	if r.After.Goroutines > r.Before.Goroutines+20 {
		t.Errorf("goroutines: %d before, %d after the shutdown", r.Before.Goroutines, r.After.Goroutines)
	}
}

// TestScaleBreaks checks that a size that cannot form in time is reported
// as broken, with ErrNotFormed, instead of hanging, and that Scale then
// stops.
func TestScaleBreaks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := ScaleOptions{Groups: []int{50, 60}, Idle: time.Second, Reps: 1, Timeout: 200 * time.Millisecond, Parallel: 1, DataDir: t.TempDir()}
	rs, err := Scale(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 {
		t.Fatalf("%d results, want 1: Scale goes on after a size broke", len(rs))
	}
	r := rs[0]
	if !errors.Is(r.Err, ErrNotFormed) || r.Connected >= r.Memberships {
		t.Fatalf("outcome %q (%v), %d of %d connected; want ErrNotFormed", r.Outcome, r.Err, r.Connected, r.Memberships)
	}
	if r.After.Goroutines > r.Before.Goroutines+20 {
		t.Errorf("goroutines: %d before, %d after the shutdown", r.Before.Goroutines, r.After.Goroutines)
	}
}

func TestScaleOptions(t *testing.T) {
	for _, o := range []ScaleOptions{{Groups: []int{0}}, {PerClient: -1}, {Idle: -time.Second}, {Reps: -1}, {Timeout: -1}, {Parallel: -1}, {BurstParallel: -1}, {MaxRSS: -1}} {
		if _, err := Scale(context.Background(), o); !errors.Is(err, ErrScaleOptions) {
			t.Errorf("%+v: %v, want ErrScaleOptions", o, err)
		}
	}
}

// BenchmarkScale runs `idc bench scale` at 100 groups with a short idle
// window and reports its figures. Run:
// go test -run - -bench Scale -benchtime 1x ./internal/bench
func BenchmarkScale(b *testing.B) {
	for range b.N {
		rs, err := Scale(context.Background(), ScaleOptions{Groups: []int{100}, Idle: 5 * time.Second, DataDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		r := rs[0]
		if r.Broke() {
			b.Fatal(r.Outcome)
		}
		b.ReportMetric(r.Formation.Seconds(), "s/formation")
		b.ReportMetric(r.CPUPer1000*100, "%core/1000-members")
		b.ReportMetric(r.RenewalsPerSec, "renewals/s")
		b.ReportMetric(float64(r.RenewP99.Microseconds())/1000, "ms/renew-p99")
		b.ReportMetric(float64(r.SpontaneousEpochs+int64(r.Ended)), "spontaneous")
		b.ReportMetric(r.Ratio, "x-beside-alone")
		b.ReportMetric(r.BurstPerSec, "changes/s")
		b.ReportMetric(0, "ns/op")
	}
}
