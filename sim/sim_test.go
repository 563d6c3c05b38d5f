package sim

import (
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	flagSeeds  = flag.Int("sim.seeds", 0, "number of seeds TestSimulation runs (default sized for CI)")
	flagSeed   = flag.Int64("sim.seed", -1, "run only this seed (and print its trace)")
	flagFirst  = flag.Int64("sim.first", 1, "first seed of TestSimulation")
	flagSoak   = flag.Duration("sim.soak", 0, "keep running fresh seeds for this long")
	flagDoms   = flag.Int("sim.domains", 0, "domains per run (0: default)")
	flagCoords = flag.Int("sim.coordinators", 0, "coordinators per run (0: by seed)")
	flagRho    = flag.Float64("sim.rho", 0, "clock-rate drift bound ρ (0: default)")
	flagTrace  = flag.Int("sim.trace", 0, "with -sim.seed: keep (and on failure print) this many last steps")
)

// defaultSeeds is sized so TestSimulation takes about five minutes with
// -race on two cores (about 13 seeds/s, with channels), and about a minute
// without it (about 200 seeds/s).
func defaultSeeds() int {
	switch {
	case testing.Short():
		return 200
	case raceEnabled:
		return 4000
	}
	return 10000
}

func baseConfig(seed int64) Config {
	return Config{Seed: seed, Domains: *flagDoms, Coordinators: *flagCoords, Rho: *flagRho}
}

func reproduce(seed int64) string {
	cmd := fmt.Sprintf("go test ./sim -run TestSimulation -sim.seed=%d -v", seed)
	if *flagDoms != 0 {
		cmd += fmt.Sprintf(" -sim.domains=%d", *flagDoms)
	}
	if *flagCoords != 0 {
		cmd += fmt.Sprintf(" -sim.coordinators=%d", *flagCoords)
	}
	if *flagRho != 0 {
		cmd += fmt.Sprintf(" -sim.rho=%v", *flagRho)
	}
	return cmd
}

// TestSimulation runs many seeds of the correct machines under faults and
// fails at the first violation, with a command that reproduces it.
func TestSimulation(t *testing.T) {
	if *flagSeed >= 0 {
		cfg := baseConfig(*flagSeed)
		cfg.TraceLen = *flagTrace
		res, err := Run(cfg)
		t.Logf("seed %d: %+v", *flagSeed, summary(res))
		if err != nil {
			t.Fatalf("seed %d: %v\nreproduce: %s", *flagSeed, err, reproduce(*flagSeed))
		}
		return
	}
	n := *flagSeeds
	if n == 0 {
		n = defaultSeeds()
	}
	deadline := time.Time{}
	last := *flagFirst + int64(n)
	if *flagSoak > 0 {
		deadline = time.Now().Add(*flagSoak)
		last = math.MaxInt64 // until the deadline
	}
	start := time.Now()
	var (
		next  atomic.Int64
		ran   atomic.Int64
		steps atomic.Int64
		// Runs with resources, and their writes applied and rejected.
		guarded, applied, rejected atomic.Int64
		mu                         sync.Mutex
		failed                     error
		fseed                      int64 = -1
	)
	next.Store(*flagFirst)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seed := next.Add(1) - 1
				if seed >= last || !deadline.IsZero() && time.Now().After(deadline) {
					return
				}
				mu.Lock()
				stop := failed != nil && seed > fseed
				mu.Unlock()
				if stop {
					return
				}
				res, err := Run(baseConfig(seed))
				ran.Add(1)
				steps.Add(int64(res.Steps))
				if res.Resources > 0 {
					guarded.Add(1)
					applied.Add(int64(res.Applied))
					rejected.Add(int64(res.Rejected))
				}
				if err != nil {
					mu.Lock()
					if failed == nil || seed < fseed {
						failed, fseed = err, seed
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("%d seeds in %v: %.1f seeds/s, %.0f steps/s", ran.Load(), el.Round(time.Millisecond),
		float64(ran.Load())/el.Seconds(), float64(steps.Load())/el.Seconds())
	t.Logf("%d runs with guarded resources: %d writes applied, %d refused by the guards", guarded.Load(), applied.Load(), rejected.Load())
	if failed != nil {
		t.Fatalf("seed %d: %v\nreproduce: %s", fseed, failed, reproduce(fseed))
	}
}

func summary(r Result) string {
	return fmt.Sprintf("coordinators=%d steps=%d epochs=%d ios=%d refused=%d resources=%d writes=%d applied=%d rejected=%d faults=%+v simulated=%v hash=%x",
		r.Coordinators, r.Steps, r.Epochs, r.IOs, r.Refused, r.Resources, r.Writes, r.Applied, r.Rejected, r.Faults, r.Simulated, r.TraceHash)
}

// TestDeterministic runs one seed twice and compares the hash of every step.
func TestDeterministic(t *testing.T) {
	for _, seed := range []int64{1, 7, 42} {
		a, errA := Run(Config{Seed: seed})
		b, errB := Run(Config{Seed: seed})
		if a.TraceHash != b.TraceHash || a.Steps != b.Steps || (errA == nil) != (errB == nil) {
			t.Fatalf("seed %d ran differently: %s vs %s", seed, summary(a), summary(b))
		}
		c, _ := Run(Config{Seed: seed + 1000})
		if c.TraceHash == a.TraceHash {
			t.Fatalf("seeds %d and %d gave the same trace", seed, seed+1000)
		}
	}
}

// TestMain runs the simulator's tests with a lazier garbage collector: a
// run allocates many small, short-lived events on a small heap, and with
// the default GOGC the collector, not the simulation, takes most of the
// time (docs/VERIFICATION.md, seeds/s).
func TestMain(m *testing.M) {
	debug.SetGCPercent(800)
	os.Exit(m.Run())
}
