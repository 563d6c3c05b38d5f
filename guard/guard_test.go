package guard

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

func members(n int) []proto.Ref {
	out := make([]proto.Ref, n)
	for i := range out {
		out[i] = proto.Ref{ID: fmt.Sprintf("d%d", i), Incarnation: uint64(i + 1)}
	}
	return out
}

func tok(e uint64, i int) token.Token {
	return token.Token{Group: "g", Epoch: e, Domain: fmt.Sprintf("d%d", i), Incarnation: uint64(i + 1)}
}

// TestAdmittedThenFenced: a request admitted before a fence and applied
// after it is refused, never applied; its Aborted callback says so.
func TestAdmittedThenFenced(t *testing.T) {
	g := New(Config{Name: "disk"})
	ctx := context.Background()
	if err := g.Admit(&Ticket{Token: tok(1, 0)}); !errors.Is(err, ErrNoFence) {
		t.Fatalf("before any fence: %v, want ErrNoFence", err)
	}
	if err := g.Fence(ctx, "g", Fence{Epoch: 1, Members: members(2)}); err != nil {
		t.Fatal(err)
	}
	var abortErr error
	tk := &Ticket{Token: tok(1, 1), Write: true, Aborted: func(_ *Ticket, err error) { abortErr = err }}
	if err := g.Admit(tk); err != nil {
		t.Fatal(err)
	}
	if err := g.Fence(ctx, "g", Fence{Epoch: 2, Members: members(1)}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(abortErr, ErrAborted) || !errors.Is(abortErr, ErrRefused) {
		t.Fatalf("aborted with %v, want ErrAborted", abortErr)
	}
	applied := false
	if err := g.Apply(tk, func() error { applied = true; return nil }); !errors.Is(err, ErrStale) || applied {
		t.Fatalf("apply after the fence: %v (applied %v), want ErrStale and not applied", err, applied)
	}
}

// TestFenceWaitsForApplies: a fence returns only once the applies of
// older epochs under way have ended; one whose context ends first returns
// its error, and the next fence of the same epoch waits again.
func TestFenceWaitsForApplies(t *testing.T) {
	g := New(Config{Name: "disk"})
	ctx := context.Background()
	if err := g.Fence(ctx, "g", Fence{Epoch: 1, Members: members(2)}); err != nil {
		t.Fatal(err)
	}
	tk := &Ticket{Token: tok(1, 0)}
	if err := g.Begin(tk); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := g.Fence(short, "g", Fence{Epoch: 2, Members: members(2)}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fence with an apply of epoch 1 under way: %v, want it to wait", err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Fence(ctx, "g", Fence{Epoch: 2, Members: members(2)}) }()
	select {
	case err := <-done:
		t.Fatalf("fence returned (%v) while an older apply was under way", err)
	case <-time.After(20 * time.Millisecond):
	}
	if err := g.End(tk); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// With nothing under way, a fence returns at once.
	if err := g.Fence(ctx, "g", Fence{Epoch: 3, Members: members(2)}); err != nil {
		t.Fatal(err)
	}
}

// TestOnFence: Config.OnFence reports every fence once it holds — at once
// with nothing under way, else only once the last older apply ended —
// without the guard's lock (it may call the guard) and before the fence's
// completion; a refused fence is not reported, and a fence whose Fence
// call gave up on its context is reported once it holds.
func TestOnFence(t *testing.T) {
	type report struct {
		group string
		epoch uint64
		// floor is the group's floor as OnFence saw it (read from within
		// OnFence: it deadlocks if the guard's lock is held).
		floor uint64
		// completed: the fence's completion had run before OnFence.
		completed bool
	}
	var (
		mu        sync.Mutex
		reports   []report
		completed atomic.Bool
		g         *Guard
	)
	g = New(Config{Name: "disk", OnFence: func(group string, f Fence) {
		floor, _ := g.Floor(group)
		mu.Lock()
		reports = append(reports, report{group, f.Epoch, floor.Epoch, completed.Load()})
		mu.Unlock()
	}})
	got := func() []report {
		mu.Lock()
		defer mu.Unlock()
		return append([]report(nil), reports...)
	}
	raise := func(group string, e uint64) <-chan error {
		done := make(chan error, 1)
		completed.Store(false)
		g.Raise(group, Fence{Epoch: e, Members: members(2)}, func(err error) { completed.Store(true); done <- err })
		return done
	}

	// Nothing under way: reported before Raise returns.
	if err := <-raise("g", 1); err != nil {
		t.Fatal(err)
	}
	if r := got(); len(r) != 1 || r[0] != (report{"g", 1, 1, false}) {
		t.Fatalf("after the fence of 1: %+v", r)
	}
	// An apply of epoch 1 under way: the fence of 2 is reported only once
	// it ended.
	tk := &Ticket{Token: tok(1, 0), Write: true}
	if err := g.Begin(tk); err != nil {
		t.Fatal(err)
	}
	done := raise("g", 2)
	if r := got(); len(r) != 1 {
		t.Fatalf("the fence of 2 reported while an apply of 1 was under way: %+v", r)
	}
	if err := g.End(tk); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := got(); len(r) != 2 || r[1] != (report{"g", 2, 2, false}) {
		t.Fatalf("after the apply of 1 ended: %+v", r)
	}
	// A refused fence (epoch 0) is not reported; a fence below the floor
	// holds and is reported as given; another group's is its own.
	if err := <-raise("g", 0); err == nil {
		t.Fatal("a fence of epoch 0 was accepted")
	}
	if err := <-raise("g", 1); err != nil {
		t.Fatal(err)
	}
	if err := <-raise("h", 5); err != nil {
		t.Fatal(err)
	}
	if r := got(); len(r) != 4 || r[2] != (report{"g", 1, 2, false}) || r[3] != (report{"h", 5, 5, false}) {
		t.Fatalf("after the fences of 0 and 1 in g and 5 in h: %+v", r)
	}
	// Fence gives up on its context; the fence is reported once it holds.
	tk = &Ticket{Token: tok(2, 0)}
	if err := g.Begin(tk); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Fence(ctx, "g", Fence{Epoch: 3, Members: members(2)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Fence with an ended context and an older apply under way: %v", err)
	}
	if r := got(); len(r) != 4 {
		t.Fatalf("the fence of 3 reported before it held: %+v", r)
	}
	if err := g.End(tk); err != nil {
		t.Fatal(err)
	}
	if r := got(); len(r) != 5 || r[4].group != "g" || r[4].epoch != 3 {
		t.Fatalf("the fence of 3 not reported once it held: %+v", r)
	}
}

// TestConcurrentAppliers (run with -race): appliers apply requests of the
// epoch they last saw while fences rise. G5 is checked from a log ordered
// by one counter: no apply of epoch e starts after a fence above e
// returned, and none ends after it (the fence waited for it).
func TestConcurrentAppliers(t *testing.T) {
	g := New(Config{Name: "disk"})
	ctx := context.Background()
	const appliers, fences = 8, 200
	ms := members(appliers)
	if err := g.Fence(ctx, "g", Fence{Epoch: 1, Members: ms}); err != nil {
		t.Fatal(err)
	}
	var (
		clock    atomic.Uint64
		epoch    atomic.Uint64 // the latest fence applied
		fencedAt [fences + 2]atomic.Uint64
		stop     atomic.Bool
		applied  atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		log      []struct{ e, start, end uint64 }
	)
	epoch.Store(1)
	for i := range appliers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := &Ticket{Write: true}
			for !stop.Load() {
				// Admit with the epoch seen, apply a little later: a
				// fence may come between.
				tk.Token = tok(epoch.Load(), i)
				if g.Admit(tk) != nil {
					continue
				}
				if i%2 == 0 {
					time.Sleep(time.Microsecond)
				}
				err := g.Apply(tk, func() error {
					start := clock.Add(1)
					applied.Add(1)
					end := clock.Add(1)
					mu.Lock()
					log = append(log, struct{ e, start, end uint64 }{tk.Token.Epoch, start, end})
					mu.Unlock()
					return nil
				})
				if err != nil && !errors.Is(err, ErrStale) {
					t.Error(err)
					return
				}
			}
		}()
	}
	for e := uint64(2); e <= fences+1; e++ {
		if err := g.Fence(ctx, "g", Fence{Epoch: e, Members: ms}); err != nil {
			t.Fatal(err)
		}
		fencedAt[e].Store(clock.Add(1))
		epoch.Store(e)
		time.Sleep(50 * time.Microsecond)
	}
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(log) < fences {
		t.Fatalf("only %d applies in %d fences: the test did not exercise the guard", len(log), fences)
	}
	for _, a := range log {
		for e := a.e + 1; e <= fences+1; e++ {
			if f := fencedAt[e].Load(); f != 0 && (a.start > f || a.end > f) {
				t.Fatalf("G5 violated: an apply of epoch %d ran at %d..%d, after the fence of %d returned at %d", a.e, a.start, a.end, e, f)
			}
		}
	}
	t.Logf("%d applies across %d fences", len(log), fences)
}

// TestHotPathAllocates: admitting, beginning and ending a request, and
// decoding its token with Parse, allocate nothing.
func TestHotPathAllocates(t *testing.T) {
	g := New(Config{Name: "disk"})
	if err := g.Fence(context.Background(), "g", Fence{Epoch: 4, Members: members(3), Writer: "d1"}); err != nil {
		t.Fatal(err)
	}
	b := tok(4, 1).Append(nil)
	tk := &Ticket{Write: true}
	check := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, path := range []struct {
		name string
		run  func()
	}{
		{"AdmitEncoded, Begin, End", func() {
			_, err := g.AdmitEncoded(b, tk)
			check(err)
			check(g.Begin(tk))
			check(g.End(tk))
		}},
		{"BeginEncoded, End", func() {
			_, err := g.BeginEncoded(b, tk)
			check(err)
			check(g.End(tk))
		}},
	} {
		if n := testing.AllocsPerRun(1000, path.run); n != 0 {
			t.Fatalf("%s: %v allocations", path.name, n)
		}
	}
	if want := tok(4, 1); tk.Token.String() != want.String() {
		t.Fatalf("AdmitEncoded decoded %v", tk.Token)
	}
	// A token the guard cannot admit is refused, and set with copies.
	other := &Ticket{}
	if _, err := g.AdmitEncoded(token.Token{Group: "h", Epoch: 1, Domain: "x", Incarnation: 1}.Append(nil), other); !errors.Is(err, ErrNoFence) || other.Token.Group != "h" || other.Token.Domain != "x" {
		t.Fatalf("%v, %v", other.Token, err)
	}
}

// FuzzAdmitEncoded: any bytes are either admitted (a token of the floor
// epoch from a member, which encodes back to the bytes read) or refused
// with an error wrapping one of token's errors or ErrRefused; never a
// panic.
func FuzzAdmitEncoded(f *testing.F) {
	f.Add(tok(4, 1).Append(nil))
	f.Add(tok(3, 1).Append(nil))
	f.Add(token.Token{Group: "g", Epoch: 4, Domain: "d/1", Incarnation: 2}.Append(nil))
	f.Add(token.Token{Group: "h", Epoch: 4, Domain: "d1", Incarnation: 2}.Append(nil))
	f.Add([]byte{1, 0, 1, 'g', 0, 0})
	g := New(Config{Name: "disk"})
	if err := g.Fence(context.Background(), "g", Fence{Epoch: 4, Members: members(3)}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tk := &Ticket{}
		n, err := g.AdmitEncoded(b, tk)
		if err != nil {
			for _, e := range []error{token.ErrShort, token.ErrVersion, token.ErrMalformed, token.ErrSigned, ErrRefused} {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("error %v is neither a token error nor a refusal", err)
		}
		g.Cancel(tk)
		if n > len(b) || string(tk.Token.Append(nil)) != string(b[:n]) {
			t.Fatalf("admitted %v (%d bytes), which does not encode back to %x", tk.Token, n, b[:n])
		}
		if _, _, err := token.ParseView(b); err != nil {
			t.Fatalf("admitted %v, which token.ParseView refuses: %v", tk.Token, err)
		}
	})
}
