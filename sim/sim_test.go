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
	// The storage scenario's sweep (TestStorageSimulation) takes -sim.seed,
	// -sim.first, -sim.soak and -sim.coordinators too.
	flagStorageSeeds = flag.Int("sim.storage-seeds", 0, "number of seeds TestStorageSimulation runs (default sized for CI)")
)

// defaultSeeds is sized so TestSimulation takes about five minutes with
// -race on two cores (about 13 seeds/s, with channels), and about a minute
// without it (about 200 seeds/s); with TestStorageSimulation's seeds
// (defaultStorageSeeds: a run of the storage scenario costs about a third
// of one of these) the package stays within that.
func defaultSeeds() int {
	switch {
	case testing.Short():
		return 200
	case raceEnabled:
		return 3900
	}
	return 9800
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
		runOne(t, baseConfig(*flagSeed), reproduce)
		return
	}
	n := *flagSeeds
	if n == 0 {
		n = defaultSeeds()
	}
	s := sweep(t, n, baseConfig, reproduce)
	t.Logf("%d runs with guarded resources: %d writes applied, %d refused by the guards", s.guarded, s.applied, s.rejected)
}

// runOne runs the seed of cfg alone, with the trace length of -sim.trace,
// and fails with its violation and the command that reproduces it.
func runOne(t *testing.T, cfg Config, reproduce func(int64) string) {
	cfg.TraceLen = *flagTrace
	res, err := Run(cfg)
	t.Logf("seed %d: %+v", cfg.Seed, summary(res))
	if err != nil {
		t.Fatalf("seed %d: %v\nreproduce: %s", cfg.Seed, err, reproduce(cfg.Seed))
	}
}

// sweepStats sums up a sweep.
type sweepStats struct {
	ran, steps int64
	// Runs with guarded resources, and their writes applied and rejected.
	guarded, applied, rejected int64
	// The storage scenario's figures, summed.
	storage StorageResult
	faults  Faults
}

func (s *sweepStats) add(r Result) {
	s.ran++
	s.steps += int64(r.Steps)
	if r.Resources > 0 {
		s.guarded++
		s.applied += int64(r.Applied)
		s.rejected += int64(r.Rejected)
	}
	st := &s.storage
	rs := r.Storage
	st.Writes += rs.Writes
	st.Reads += rs.Reads
	st.Flushes += rs.Flushes
	st.Reconnects += rs.Reconnects
	st.Resubmitted += rs.Resubmitted
	st.Applied += rs.Applied
	st.Refused += rs.Refused
	st.StaleRefused += rs.StaleRefused
	st.Fences += rs.Fences
	st.Sent += rs.Sent
	st.Resent += rs.Resent
	st.Reports += rs.Reports
	st.Failovers += rs.Failovers
	st.DiskRestarts += rs.DiskRestarts
	s.faults.HeldConns += r.Faults.HeldConns
	s.faults.Crashes += r.Faults.Crashes
	s.faults.ResourceCrashes += r.Faults.ResourceCrashes
}

// sweep runs n seeds from -sim.first (or fresh seeds for -sim.soak) of
// the configurations cfg gives, on every CPU, and fails at the lowest
// seed that violates a guarantee, with the command that reproduces it.
func sweep(t *testing.T, n int, cfg func(int64) Config, reproduce func(int64) string) sweepStats {
	deadline := time.Time{}
	last := *flagFirst + int64(n)
	if *flagSoak > 0 {
		deadline = time.Now().Add(*flagSoak)
		last = math.MaxInt64 // until the deadline
	}
	start := time.Now()
	var (
		next   atomic.Int64
		mu     sync.Mutex
		stats  sweepStats
		failed error
		fseed  int64 = -1
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
				res, err := Run(cfg(seed))
				mu.Lock()
				stats.add(res)
				if err != nil && (failed == nil || seed < fseed) {
					failed, fseed = err, seed
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("%d seeds in %v: %.1f seeds/s, %.0f steps/s", stats.ran, el.Round(time.Millisecond),
		float64(stats.ran)/el.Seconds(), float64(stats.steps)/el.Seconds())
	if failed != nil {
		t.Fatalf("seed %d: %v\nreproduce: %s", fseed, failed, reproduce(fseed))
	}
	return stats
}

func summary(r Result) string {
	s := fmt.Sprintf("coordinators=%d steps=%d epochs=%d ios=%d refused=%d resources=%d writes=%d applied=%d rejected=%d faults=%+v simulated=%v hash=%x",
		r.Coordinators, r.Steps, r.Epochs, r.IOs, r.Refused, r.Resources, r.Writes, r.Applied, r.Rejected, r.Faults, r.Simulated, r.TraceHash)
	if r.Storage != (StorageResult{}) {
		s += fmt.Sprintf(" storage=%+v", r.Storage)
	}
	return s
}

// TestDeterministic runs one seed twice and compares the hash of every
// step, in the generic runs and in the storage scenario's.
func TestDeterministic(t *testing.T) {
	for _, storage := range []bool{false, true} {
		for _, seed := range []int64{1, 7, 42} {
			a, errA := Run(Config{Seed: seed, Storage: storage})
			b, errB := Run(Config{Seed: seed, Storage: storage})
			if a.TraceHash != b.TraceHash || a.Steps != b.Steps || (errA == nil) != (errB == nil) {
				t.Fatalf("seed %d (storage %v) ran differently: %s vs %s", seed, storage, summary(a), summary(b))
			}
			c, _ := Run(Config{Seed: seed + 1000, Storage: storage})
			if c.TraceHash == a.TraceHash {
				t.Fatalf("seeds %d and %d (storage %v) gave the same trace", seed, seed+1000, storage)
			}
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

// defaultStorageSeeds is sized so that TestStorageSimulation takes a few
// seconds without -race and about half a minute with it on two cores
// (some 7 seeds/s); TestSimulation runs fewer seeds to make room.
func defaultStorageSeeds() int {
	switch {
	case testing.Short():
		return 50
	case raceEnabled:
		return 200
	}
	return 600
}

func storageConfig(seed int64) Config {
	return Config{Seed: seed, Storage: true, Coordinators: *flagCoords, Rho: *flagRho}
}

func reproduceStorage(seed int64) string {
	cmd := fmt.Sprintf("go test ./sim -run TestStorageSimulation -sim.seed=%d -v", seed)
	if *flagCoords != 0 {
		cmd += fmt.Sprintf(" -sim.coordinators=%d", *flagCoords)
	}
	if *flagRho != 0 {
		cmd += fmt.Sprintf(" -sim.rho=%v", *flagRho)
	}
	return cmd
}

// TestStorageSimulation runs many seeds of the storage scenario (the
// storage, two driver domains with the real forwarder, the multipath
// disk and its client) under faults, and fails at the first violation;
// it also fails if the seeds did not reach what the scenario is there to
// check: failovers, stale writes refused by the storage's guard, held
// storage connections, the client's reconnects, restarts of the disk.
func TestStorageSimulation(t *testing.T) {
	if *flagSeed >= 0 {
		runOne(t, storageConfig(*flagSeed), reproduceStorage)
		return
	}
	n := *flagStorageSeeds
	if n == 0 {
		n = defaultStorageSeeds()
	}
	s := sweep(t, n, storageConfig, reproduceStorage)
	st := s.storage
	t.Logf("storage scenario: %d writes and %d reads completed, %d flushes; %d reconnects of the client, %d requests sent again by it; "+
		"%d writes applied, %d requests refused by the guard (%d stale writes), %d fences; the disk sent %d (%d again), reported %d paths, failed over %d times, restarted %d times; "+
		"%d storage connections held, %d crashes of domains, %d of the storage",
		st.Writes, st.Reads, st.Flushes, st.Reconnects, st.Resubmitted, st.Applied, st.Refused, st.StaleRefused, st.Fences,
		st.Sent, st.Resent, st.Reports, st.Failovers, st.DiskRestarts, s.faults.HeldConns, s.faults.Crashes, s.faults.ResourceCrashes)
	if s.ran >= 50 && (st.Writes == 0 || st.Failovers == 0 || st.StaleRefused == 0 || st.Resubmitted == 0 || st.DiskRestarts == 0 || s.faults.HeldConns == 0) {
		t.Errorf("the storage scenario did not reach what it checks in %d seeds", s.ran)
	}
}
