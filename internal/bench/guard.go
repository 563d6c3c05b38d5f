package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

// The kinds of guard figure.
const (
	// GuardApply is a request through the guard: its token decoded with
	// Guard.AdmitEncoded from its encoding, Begin, the write, End. Its
	// baseline is the write alone.
	GuardApply = "apply"
	// GuardApplyFunc is the same with Guard.Apply around the write (a
	// func value built once): AdmitEncoded, Apply.
	GuardApplyFunc = "apply-func"
	// GuardApplyDirect is a request applied as soon as it arrives:
	// Guard.BeginEncoded (decoded, checked and begun in one step), the
	// write, End.
	GuardApplyDirect = "apply-direct"
	// GuardFence is a fence raising the floor by one epoch, timed from
	// the call of Guard.Fence to its return.
	GuardFence = "fence"
)

// Goals of the guard, against the apply path without it in the same run.
const (
	// GoalGuardAdded is the most a request through the guard may take
	// beyond the same request without it, in ns.
	GoalGuardAdded = 100.0
	// GoalGuardAllocs is the most allocations per request through the
	// guard.
	GoalGuardAllocs = 0.0
)

// The apply path the guard is measured on: a write of guardBlock bytes
// into an in-memory block store of guardStore bytes.
const (
	guardBlock   = 4 << 10
	guardStore   = 64 << 20
	guardBlocks  = guardStore / guardBlock
	guardMembers = 8  // members of the epoch; applier i is member i mod guardMembers
	guardFlight  = 64 // requests in flight at a fence
	// guardMaxFences bounds the fences timed per figure and round (their
	// times are kept in memory).
	guardMaxFences = 100_000
)

// GuardOptions configure Guard.
type GuardOptions struct {
	// Rounds is how many times every figure is measured (default 5); the
	// figures are medians.
	Rounds int
	// Duration is how long each figure of a round is measured (default
	// 200 ms). The baseline and the two ways through the guard of one
	// concurrency run in turn, 10 ms each, until each has run for
	// Duration; a short calibration run precedes each one's first.
	Duration time.Duration
	// Progress receives a line per round (may be nil).
	Progress io.Writer
}

func (o *GuardOptions) defaults() {
	if o.Rounds <= 0 {
		o.Rounds = 5
	}
	if o.Duration <= 0 {
		o.Duration = 200 * time.Millisecond
	}
}

func (o GuardOptions) say(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// GuardResult is one figure. For GuardApply and GuardApplyFunc:
// requests applied by Concurrency appliers with the guard and, in turn
// with them in the same round, without it. For GuardFence: fences with
// InFlight requests pending (Applying false) or applying (Applying true).
type GuardResult struct {
	Kind string `json:"kind"`
	// Concurrency is the number of appliers (GuardApply, GuardApplyFunc),
	// each on its own goroutine, its own blocks and its own ticket.
	Concurrency int `json:"concurrency,omitempty"`
	// Baseline and Guard hold ns per request, every round: the wall time
	// over the requests of all the appliers (as testing.B.RunParallel
	// reports), without the guard and with it. The request without the
	// guard is the write alone, the same in GuardApply's and
	// GuardApplyFunc's results.
	Baseline []float64 `json:"baseline_ns_per_op,omitempty"`
	Guard    []float64 `json:"guard_ns_per_op,omitempty"`
	// Allocs holds the allocations of the whole process per request
	// through the guard (GuardApply, GuardApplyFunc) or per fence
	// (GuardFence), every round.
	Allocs []float64 `json:"allocs_per_op"`
	// InFlight is the number of requests of the floor's epoch at each
	// fence (GuardFence): admitted and pending, which the fence aborts,
	// or, if Applying, begun, which a goroutine ends as soon as it sees
	// the floor risen (the fence waits for them).
	InFlight int  `json:"in_flight,omitempty"`
	Applying bool `json:"applying,omitempty"`
	// Fences is the number of fences timed (GuardFence), over all
	// rounds (at most 100 000 a round); P50 and P99 their median and
	// 99th percentile.
	Fences int           `json:"fences,omitempty"`
	P50    time.Duration `json:"p50_ns,omitempty"`
	P99    time.Duration `json:"p99_ns,omitempty"`

	times []time.Duration // every fence's time
}

// Added is the time the guard adds to a request, in ns: the median over
// the rounds of the guard's figure minus the baseline's of the same
// round.
func (r GuardResult) Added() float64 {
	d := make([]float64, min(len(r.Guard), len(r.Baseline)))
	for i := range d {
		d[i] = r.Guard[i] - r.Baseline[i]
	}
	return MedianFloat(d)
}

// Met reports whether an apply figure meets the goals as printed (added
// ns to the unit, allocations to two decimals): Added below
// GoalGuardAdded and no allocation. A fence has no goal: false.
func (r GuardResult) Met() bool {
	if r.Kind == GuardFence {
		return false
	}
	return math.Round(r.Added()) < GoalGuardAdded && math.Round(MedianFloat(r.Allocs)*100)/100 <= GoalGuardAllocs
}

// Guard measures package guard: per request, the guard's check-and-apply
// beside the same apply without the guard, with one applier and with
// GOMAXPROCS; and the time a fence takes to apply and be acknowledged
// (to return) with nothing in flight, with requests pending and with
// requests applying. In every round it measures, per concurrency, the
// baseline and the two ways through the guard in turn (slices of 10 ms),
// then the fences. The results come in that order: GuardApply and
// GuardApplyFunc per concurrency (the two share the baseline's figures),
// then the fences.
func Guard(ctx context.Context, o GuardOptions) ([]GuardResult, error) {
	o.defaults()
	concs := []int{1}
	if n := runtime.GOMAXPROCS(0); n > 1 {
		concs = append(concs, n)
	}
	ab, err := newApplyBench()
	if err != nil {
		return nil, err
	}
	var fences []*fenceBench
	for _, f := range []struct {
		n        int
		applying bool
	}{{0, false}, {guardFlight, false}, {guardFlight, true}} {
		fb, err := newFenceBench(f.n, f.applying)
		if err != nil {
			return nil, err
		}
		fences = append(fences, fb)
	}
	// Every result first: the figures below point into out.
	var out []GuardResult
	for _, c := range concs {
		out = append(out, GuardResult{Kind: GuardApply, Concurrency: c}, GuardResult{Kind: GuardApplyFunc, Concurrency: c},
			GuardResult{Kind: GuardApplyDirect, Concurrency: c})
	}
	fenceAt := len(out)
	for _, fb := range fences {
		out = append(out, GuardResult{Kind: GuardFence, InFlight: fb.n, Applying: fb.applying})
	}
	type applyFigure struct {
		base, guard, fn, direct *guardRunner
		r, rf, rd               *GuardResult
	}
	var figs []applyFigure
	for i, c := range concs {
		figs = append(figs, applyFigure{
			base: ab.runner("baseline", c), guard: ab.runner(GuardApply, c), fn: ab.runner(GuardApplyFunc, c),
			direct: ab.runner(GuardApplyDirect, c),
			r:      &out[3*i], rf: &out[3*i+1], rd: &out[3*i+2],
		})
	}
	for round := range o.Rounds {
		o.say("guard: round %d of %d", round+1, o.Rounds)
		for _, f := range figs {
			ss, err := interleave(ctx, o.Duration, f.base, f.guard, f.fn, f.direct)
			if err != nil {
				return nil, err
			}
			base := ss[0].nsPerOp()
			f.r.Baseline, f.r.Guard = append(f.r.Baseline, base), append(f.r.Guard, ss[1].nsPerOp())
			f.r.Allocs = append(f.r.Allocs, ss[1].allocsPerOp())
			f.rf.Baseline, f.rf.Guard = append(f.rf.Baseline, base), append(f.rf.Guard, ss[2].nsPerOp())
			f.rf.Allocs = append(f.rf.Allocs, ss[2].allocsPerOp())
			f.rd.Baseline, f.rd.Guard = append(f.rd.Baseline, base), append(f.rd.Guard, ss[3].nsPerOp())
			f.rd.Allocs = append(f.rd.Allocs, ss[3].allocsPerOp())
		}
		for i, fb := range fences {
			r := &out[fenceAt+i]
			times, allocs, err := fb.measure(ctx, o.Duration)
			if err != nil {
				return nil, err
			}
			r.times = append(r.times, times...)
			r.Allocs = append(r.Allocs, allocs)
		}
	}
	for i := fenceAt; i < len(out); i++ {
		r := &out[i]
		r.Fences, r.P50, r.P99 = len(r.times), Median(r.times), Percentile(r.times, 99)
	}
	return out, nil
}

// applyBench is the apply path and its guard, shared by every apply
// figure.
type applyBench struct {
	mem, data []byte
	g         *guard.Guard
	encoded   [guardMembers][]byte // member i's token of the guard's epoch
}

func newApplyBench() (*applyBench, error) {
	ab := &applyBench{mem: make([]byte, guardStore), data: make([]byte, guardBlock), g: guard.New(guard.Config{Name: "bench"})}
	for i := range ab.data {
		ab.data[i] = byte(i)
	}
	// Fault the store's pages in now, not in the first figure measured.
	for off := 0; off < guardStore; off += guardBlock {
		copy(ab.mem[off:], ab.data)
	}
	ms := guardRefs()
	if err := ab.g.Fence(context.Background(), "g", guard.Fence{Epoch: 1, Members: ms}); err != nil {
		return nil, err
	}
	for i, m := range ms {
		ab.encoded[i] = token.Token{Group: "g", Epoch: 1, Domain: m.ID, Incarnation: m.Incarnation}.Append(nil)
	}
	return ab, nil
}

// guardRefs returns the members of the benchmarks' epochs.
func guardRefs() []proto.Ref {
	ms := make([]proto.Ref, guardMembers)
	for i := range ms {
		ms[i] = proto.Ref{ID: fmt.Sprintf("d%d", i), Incarnation: uint64(i + 1)}
	}
	return ms
}

// applier is one applier: its blocks of the store (taken in turn), its
// token's encoding and its ticket.
type applier struct {
	ab                  *applyBench
	block, first, limit int
	enc                 []byte
	t                   guard.Ticket
	apply               func() error // write, built once
	err                 error
}

// write writes the applier's next block.
func (a *applier) write() {
	off := a.block * guardBlock
	copy(a.ab.mem[off:off+guardBlock], a.ab.data)
	if a.block++; a.block == a.limit {
		a.block = a.first
	}
}

// run applies n requests of kind: "baseline" (the write alone),
// GuardApply, GuardApplyFunc or GuardApplyDirect. The loops allocate
// nothing.
func (a *applier) run(kind string, n int) error {
	g := a.ab.g
	switch kind {
	case "baseline":
		for range n {
			a.write()
		}
	case GuardApply:
		for range n {
			if _, err := g.AdmitEncoded(a.enc, &a.t); err != nil {
				return err
			}
			if err := g.Begin(&a.t); err != nil {
				return err
			}
			a.write()
			if err := g.End(&a.t); err != nil {
				return err
			}
		}
	case GuardApplyFunc:
		for range n {
			if _, err := g.AdmitEncoded(a.enc, &a.t); err != nil {
				return err
			}
			if err := g.Apply(&a.t, a.apply); err != nil {
				return err
			}
		}
	case GuardApplyDirect:
		for range n {
			if _, err := g.BeginEncoded(a.enc, &a.t); err != nil {
				return err
			}
			a.write()
			if err := g.End(&a.t); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("bench: guard: unknown kind %q", kind)
	}
	return nil
}

// runner returns the runner of kind with c appliers, each on its own
// part of the store.
func (ab *applyBench) runner(kind string, c int) *guardRunner {
	r := &guardRunner{kind: kind}
	per := guardBlocks / c
	for i := range c {
		a := &applier{ab: ab, block: i * per, first: i * per, limit: (i + 1) * per, enc: ab.encoded[i%guardMembers]}
		a.t.Write = true
		a.apply = func() error { a.write(); return nil }
		r.appliers = append(r.appliers, a)
	}
	return r
}

// guardRunner runs an apply figure's appliers; n, the requests per
// applier, is calibrated once.
type guardRunner struct {
	kind     string
	appliers []*applier
	n        int
}

// applySample is one timed run of an apply figure.
type applySample struct {
	ops     int
	elapsed time.Duration
	mallocs uint64
}

func (s applySample) nsPerOp() float64     { return float64(s.elapsed.Nanoseconds()) / float64(s.ops) }
func (s applySample) allocsPerOp() float64 { return float64(s.mallocs) / float64(s.ops) }

// timed runs n requests on every applier, each on its own goroutine,
// started together, and counts the allocations of the whole process
// meanwhile. The goroutines are started before the count and the clock.
func (r *guardRunner) timed(n int) (applySample, error) {
	var (
		ready, done sync.WaitGroup
		start       = make(chan struct{})
	)
	for _, a := range r.appliers {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			a.err = a.run(r.kind, n)
		}()
	}
	ready.Wait()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	t0 := time.Now()
	close(start)
	done.Wait()
	el := time.Since(t0)
	runtime.ReadMemStats(&after)
	s := applySample{ops: n * len(r.appliers), elapsed: el, mallocs: after.Mallocs - before.Mallocs}
	for _, a := range r.appliers {
		if a.err != nil {
			return s, a.err
		}
	}
	return s, nil
}

// guardSlice is how long one runner runs before the next takes over when
// runners are interleaved.
const guardSlice = 10 * time.Millisecond

// interleave runs each of rs for about d in all, in slices of guardSlice
// taken in turn (in reverse order every other turn), so that load from
// elsewhere hits them alike, and returns their sums.
func interleave(ctx context.Context, d time.Duration, rs ...*guardRunner) ([]applySample, error) {
	slice := min(d, guardSlice)
	turns := max(1, int((d+slice/2)/slice))
	sums := make([]applySample, len(rs))
	for turn := range turns {
		for j := range rs {
			if turn%2 == 1 {
				j = len(rs) - 1 - j
			}
			s, err := rs[j].measure(ctx, slice)
			if err != nil {
				return nil, err
			}
			sums[j].ops += s.ops
			sums[j].elapsed += s.elapsed
			sums[j].mallocs += s.mallocs
		}
	}
	return sums, nil
}

// measure runs r for about d (calibrating it the first time).
func (r *guardRunner) measure(ctx context.Context, d time.Duration) (applySample, error) {
	if err := ctx.Err(); err != nil {
		return applySample{}, err
	}
	if r.n == 0 {
		n := 64
		for {
			s, err := r.timed(n)
			if err != nil {
				return s, err
			}
			if s.elapsed >= d/8 || n >= 1<<28 {
				r.n = max(1, int(float64(n)*float64(d)/float64(max(s.elapsed, time.Microsecond))))
				break
			}
			n *= 4
		}
	}
	return r.timed(r.n)
}

// fenceBench times the fences of one figure on a guard of its own.
type fenceBench struct {
	g        *guard.Guard
	ms       []proto.Ref
	epoch    uint64 // the guard's floor
	n        int
	applying bool
	tickets  []guard.Ticket
	aborted  int          // tickets the fence aborted (their Aborted callback counts)
	ending   atomic.Int64 // applies the ender is about to end, or ended
}

func newFenceBench(n int, applying bool) (*fenceBench, error) {
	fb := &fenceBench{g: guard.New(guard.Config{Name: "bench"}), ms: guardRefs(), epoch: 1, n: n, applying: applying}
	if err := fb.g.Fence(context.Background(), "g", guard.Fence{Epoch: 1, Members: fb.ms}); err != nil {
		return nil, err
	}
	fb.tickets = make([]guard.Ticket, n)
	for i := range fb.tickets {
		m := fb.ms[i%guardMembers]
		fb.tickets[i] = guard.Ticket{Token: token.Token{Group: "g", Domain: m.ID, Incarnation: m.Incarnation}, Write: true,
			Aborted: func(*guard.Ticket, error) { fb.aborted++ }}
	}
	return fb, nil
}

// guardPause is what pause loads.
var guardPause atomic.Uint64

// pause spins for a few hundred nanoseconds without taking a lock.
func pause() {
	for range 256 {
		guardPause.Load()
	}
}

// measure times fences for about d (at most guardMaxFences) and returns
// their times and the allocations of the whole process per fence (the
// admissions or begins before each fence, untimed, allocate nothing).
// Before each fence, fb.n requests of the floor's epoch are admitted
// here; or, if they are applying, begun by an applier goroutine (so that
// their tickets are in its core's cache, as they are in an applier's),
// which then spins until it sees the floor risen (the fence raises it
// under the guard's lock just before it waits) and ends them. The
// applier pauses between two looks at the floor so as not to contend
// for the lock with the fence.
func (fb *fenceBench) measure(ctx context.Context, d time.Duration) ([]time.Duration, float64, error) {
	var (
		start        = make(chan uint64)
		ready, ended = make(chan error), make(chan error)
	)
	if fb.applying {
		go func() {
			for epoch := range start {
				var err error
				for i := range fb.tickets {
					t := &fb.tickets[i]
					t.Token.Epoch = epoch
					err = errors.Join(err, fb.g.Begin(t))
				}
				ready <- err
				for {
					if f, _ := fb.g.Floor("g"); f.Epoch > epoch {
						break
					}
					pause()
				}
				for i := range fb.tickets {
					fb.ending.Add(1)
					err = errors.Join(err, fb.g.End(&fb.tickets[i]))
				}
				ended <- err
			}
		}()
		defer close(start)
	}
	times := make([]time.Duration, 0, guardMaxFences)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	begin := time.Now()
	for len(times) < cap(times) && time.Since(begin) < d {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		fb.aborted = 0
		fb.ending.Store(0)
		if fb.applying {
			start <- fb.epoch
			if err := <-ready; err != nil {
				return nil, 0, err
			}
		} else {
			for i := range fb.tickets {
				t := &fb.tickets[i]
				t.Token.Epoch = fb.epoch
				if err := fb.g.Admit(t); err != nil {
					return nil, 0, err
				}
			}
		}
		fb.epoch++
		t0 := time.Now()
		err := fb.g.Fence(ctx, "g", guard.Fence{Epoch: fb.epoch, Members: fb.ms})
		el := time.Since(t0)
		if err != nil {
			return nil, 0, err
		}
		if fb.applying {
			// The last End let the fence return: every End has begun.
			early := fb.ending.Load() != int64(fb.n)
			if err := <-ended; err != nil {
				return nil, 0, err
			}
			if early {
				return nil, 0, errors.New("bench: guard: a fence returned before the applies of the older epoch ended")
			}
		} else if fb.aborted != fb.n {
			return nil, 0, fmt.Errorf("bench: guard: a fence aborted %d of %d pending requests", fb.aborted, fb.n)
		}
		times = append(times, el)
	}
	runtime.ReadMemStats(&after)
	return times, float64(after.Mallocs-before.Mallocs) / float64(max(1, len(times))), nil
}
