package guard

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// The apply path of the benchmarks: a write of one block into an
// in-memory block store.
const (
	benchBlock   = 4 << 10
	benchStore   = 64 << 20
	benchBlocks  = benchStore / benchBlock
	benchMembers = 8
)

// benchWriter writes blocks into its own part of the store, in turn, so
// that concurrent writers do not share cache lines.
type benchWriter struct {
	mem, data           []byte
	block, first, limit int
	applyFunc           func() error // apply, as a func value built once
}

// newBenchWriter returns the writer i of n into mem.
func newBenchWriter(mem, data []byte, i, n int) *benchWriter {
	per := benchBlocks / n
	w := &benchWriter{mem: mem, data: data, block: i * per, first: i * per, limit: (i + 1) * per}
	w.applyFunc = w.apply
	return w
}

// write writes the next block.
func (w *benchWriter) write() {
	off := w.block * benchBlock
	copy(w.mem[off:off+benchBlock], w.data)
	if w.block++; w.block == w.limit {
		w.block = w.first
	}
}

// apply is write as the func Guard.Apply takes.
func (w *benchWriter) apply() error {
	w.write()
	return nil
}

// BenchmarkApply times a request's apply (a 4 KiB write into an in-memory
// block store) without a guard (baseline) and with one, in the same run,
// serially and with GOMAXPROCS concurrent appliers (parallel; ns/op is
// the wall time over all the appliers' requests). The guard variant
// decodes and admits the request's token with AdmitEncoded, then
// Begin, the write, End; guard-apply does AdmitEncoded and Apply with a
// func value built once. Each applier is its own member of the epoch and
// reuses one Ticket.
// Run: go test -run - -bench . -benchtime 1s ./guard
func BenchmarkApply(b *testing.B) {
	mem := make([]byte, benchStore)
	data := make([]byte, benchBlock)
	for i := range data {
		data[i] = byte(i)
	}
	// Fault the store's pages in now, not in the first sub-benchmark.
	for off := 0; off < benchStore; off += benchBlock {
		copy(mem[off:], data)
	}
	g := New(Config{Name: "disk"})
	if err := g.Fence(context.Background(), "g", Fence{Epoch: 1, Members: members(benchMembers)}); err != nil {
		b.Fatal(err)
	}
	encoded := make([][]byte, benchMembers)
	for i := range encoded {
		encoded[i] = tok(1, i).Append(nil)
	}
	// The variants: one request of applier w, its token decoded from enc
	// into t. Each is called the same way, so that the call costs the
	// baseline what it costs the guard.
	variants := []struct {
		name    string
		request func(w *benchWriter, t *Ticket, enc []byte) error
	}{
		{"baseline", func(w *benchWriter, _ *Ticket, _ []byte) error {
			w.write()
			return nil
		}},
		{"guard", func(w *benchWriter, t *Ticket, enc []byte) error {
			if _, err := g.AdmitEncoded(enc, t); err != nil {
				return err
			}
			if err := g.Begin(t); err != nil {
				return err
			}
			w.write()
			return g.End(t)
		}},
		{"guard-apply", func(w *benchWriter, t *Ticket, enc []byte) error {
			if _, err := g.AdmitEncoded(enc, t); err != nil {
				return err
			}
			return g.Apply(t, w.applyFunc)
		}},
	}
	for _, v := range variants {
		b.Run(v.name+"/serial", func(b *testing.B) {
			w := newBenchWriter(mem, data, 0, 1)
			t := &Ticket{Write: true}
			b.ReportAllocs()
			for b.Loop() {
				if err := v.request(w, t, encoded[0]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(v.name+"/parallel", func(b *testing.B) {
			n := runtime.GOMAXPROCS(0)
			var next atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1)-1) % n
				w := newBenchWriter(mem, data, i, n)
				t := &Ticket{Write: true}
				enc := encoded[i%benchMembers]
				for pb.Next() {
					if err := v.request(w, t, enc); err != nil {
						b.Error(err) // not Fatal: not the benchmark's goroutine
						return
					}
				}
			})
		})
	}
}

// pauseSink is what pause loads.
var pauseSink atomic.Uint64

// pause spins for a few hundred nanoseconds without taking a lock.
func pause() {
	for range 256 {
		pauseSink.Load()
	}
}

// fenceTimes are the times of a benchmark's fences, each from the call of
// Fence to its return: the mean (ns/op) hides how they spread, on a busy
// machine a few fences waiting for a thread the kernel ran elsewhere.
type fenceTimes []time.Duration

// add notes the time since t0 and stops b's timer (first, so that the
// slice's growth is not counted); the caller starts it again.
func (ts *fenceTimes) add(b *testing.B, t0 time.Time) {
	el := time.Since(t0)
	b.StopTimer()
	*ts = append(*ts, el)
}

// report reports the median and the 99th percentile.
func (ts fenceTimes) report(b *testing.B) {
	if len(ts) == 0 {
		return
	}
	slices.Sort(ts)
	b.ReportMetric(float64(ts[len(ts)/2]), "p50-ns")
	b.ReportMetric(float64(ts[len(ts)*99/100]), "p99-ns")
}

// BenchmarkFence times fences that raise a group's floor by one epoch
// (same members): with nothing in flight (inflight=0); with 64 requests
// of the floor's epoch admitted, which the fence aborts (inflight=64;
// their Aborted callback does nothing); and with 64 requests of the
// floor's epoch applying, which another goroutine began and ends as soon
// as it sees the floor risen, so the time includes the drain: the ends,
// the last one's wake-up of the fence (inflight=64-applying). The
// requests are admitted or begun with the timer stopped.
func BenchmarkFence(b *testing.B) {
	ctx := context.Background()
	ms := members(benchMembers)
	// setup returns a guard fenced at epoch 1, and 64 tickets of it.
	setup := func(b *testing.B) (*Guard, []Ticket) {
		g := New(Config{Name: "disk"})
		if err := g.Fence(ctx, "g", Fence{Epoch: 1, Members: ms}); err != nil {
			b.Fatal(err)
		}
		ts := make([]Ticket, 64)
		for i := range ts {
			ts[i] = Ticket{Token: tok(1, i%benchMembers), Write: true, Aborted: func(*Ticket, error) {}}
		}
		return g, ts
	}
	b.Run("inflight=0", func(b *testing.B) {
		g, _ := setup(b)
		e := uint64(1)
		b.ReportAllocs()
		for b.Loop() {
			e++
			if err := g.Fence(ctx, "g", Fence{Epoch: e, Members: ms}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("inflight=64", func(b *testing.B) {
		g, ts := setup(b)
		var times fenceTimes
		e := uint64(1)
		// admit admits the 64 requests of the floor's epoch.
		admit := func() {
			for i := range ts {
				ts[i].Token.Epoch = e
				if err := g.Admit(&ts[i]); err != nil {
					b.Fatal(err)
				}
			}
		}
		admit()
		b.ReportAllocs()
		for b.Loop() {
			e++
			t0 := time.Now()
			if err := g.Fence(ctx, "g", Fence{Epoch: e, Members: ms}); err != nil {
				b.Fatal(err)
			}
			times.add(b, t0) // stops the timer
			admit()
			b.StartTimer()
		}
		times.report(b)
	})
	b.Run("inflight=64-applying", func(b *testing.B) {
		g, ts := setup(b)
		var times fenceTimes
		e := uint64(1)
		// The applier, told the floor's epoch, begins the 64 requests of
		// it (so that their tickets are in its core's cache, as they are
		// in an applier's), says so, and waits (spinning: no sleep in the
		// measured time) until the floor has risen above it, which the
		// fence does under the guard's lock just before it waits; then it
		// ends them. Between two looks at the floor it spins a little
		// without the lock, so as not to contend for it with the fence.
		start := make(chan uint64)
		ready, done := make(chan error), make(chan error)
		go func() {
			for epoch := range start {
				var err error
				for i := range ts {
					ts[i].Token.Epoch = epoch
					err = errors.Join(err, g.Begin(&ts[i]))
				}
				ready <- err
				for {
					if f, _ := g.Floor("g"); f.Epoch > epoch {
						break
					}
					pause()
				}
				for i := range ts {
					err = errors.Join(err, g.End(&ts[i]))
				}
				done <- err
			}
		}()
		defer close(start)
		// begin has the applier begin the 64 requests of the floor's epoch.
		begin := func() {
			start <- e
			if err := <-ready; err != nil {
				b.Fatal(err)
			}
		}
		begin()
		b.ReportAllocs()
		for b.Loop() {
			e++
			t0 := time.Now()
			if err := g.Fence(ctx, "g", Fence{Epoch: e, Members: ms}); err != nil {
				b.Fatal(err)
			}
			times.add(b, t0) // stops the timer
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			begin()
			b.StartTimer()
		}
		// Let the applier end its last requests.
		if err := g.Fence(ctx, "g", Fence{Epoch: e + 1, Members: ms}); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		times.report(b)
	})
}
