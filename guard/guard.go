// Package guard is what a shared resource embeds to refuse stale epochs
// (DESIGN §6, guarantees G4 and G5): every request carries a token
// (package token), and the guard admits it only if the token names the
// epoch the guard is fenced at and a member of that epoch — checked when
// the request arrives and again, in one step with the start of its apply,
// when it is applied. Fences come from the store (the fence driver watches
// the group's epoch record); applying the fence of a later epoch aborts
// the requests admitted but not applied of older epochs, waits for the
// applies of older epochs under way, and only then returns, so the fence
// can be acknowledged.
//
// A resource applies a request as
//
//	t := &guard.Ticket{Write: true}
//	if _, err := g.AdmitEncoded(req, t); err != nil { ... refuse ... }  // on arrival
//	...
//	if err := g.Begin(t); err != nil { ... refuse: never applied ... }
//	apply()                                            // e.g. pwrite
//	g.End(t)
//
// or g.Apply(t, apply) for the last three. AdmitEncoded decodes the
// token (package token) and admits it in one step; Admit takes a decoded
// token. The hot path (AdmitEncoded, Begin, End) takes the guard's lock
// three times, looks the group and the member up once, and allocates
// nothing; Begin re-checks a request only if a fence came since its
// admission.
//
// The decisions are package core/guard's pure state; this package adds the
// lock, the waiting a fence does, and metrics.
package guard

import (
	"context"
	"sync"
	"sync/atomic"

	core "github.com/idc-dev/idc/core/guard"
	"github.com/idc-dev/idc/token"
	"github.com/prometheus/client_golang/prometheus"
)

// Reason names why err refused a request, for metrics and logs: no-fence,
// stale, aborted, ahead, not-member, not-writer, or other.
func Reason(err error) string { return core.Reason(err) }

// Fence is what a guard admits in a group from its epoch on.
type Fence = core.Fence

// Ticket is one request between its admission and the end of its apply.
type Ticket = core.Ticket

// Errors of a refusal, for errors.Is (see package core/guard).
var (
	ErrRefused   = core.ErrRefused
	ErrNoFence   = core.ErrNoFence
	ErrStale     = core.ErrStale
	ErrAborted   = core.ErrAborted
	ErrAhead     = core.ErrAhead
	ErrNotMember = core.ErrNotMember
	ErrNotWriter = core.ErrNotWriter
	ErrState     = core.ErrState
)

// Config configures a Guard.
type Config struct {
	// Name is the resource's name, as registered in its groups; it labels
	// the metrics.
	Name string
	// Metrics, if not nil, registers the guard's metrics: requests
	// refused by reason, fences applied.
	Metrics prometheus.Registerer
	// OnFence, if not nil, is called once for every fence that holds
	// (Fence or Raise): its floor is raised, the requests it aborted were
	// aborted, and every apply of an older epoch under way has ended. It
	// is called with the group and the fence as given to Fence or Raise
	// (a fence not above the floor, which changes nothing, holds too),
	// without the guard's lock, from the goroutine that made the fence
	// hold (the one calling Fence or Raise, or the End of the last older
	// apply), and before the fence's completion runs: so what OnFence
	// records (a resource's apply log) precedes the fence's
	// acknowledgement. A fence the guard refuses (epoch 0) is not
	// reported. It must not block.
	OnFence func(group string, f Fence)
}

// Guard is a resource's guard. Its methods are safe for concurrent use.
type Guard struct {
	mu      sync.Mutex
	s       *core.State
	waiters map[string][]func() // per group: fences waiting for older applies to end
	met     *metrics
	onFence func(string, Fence)
}

// New returns a guard that knows no fence: it refuses every request until
// the fence driver applied a fence of its group.
func New(cfg Config) *Guard {
	return &Guard{s: core.New(), waiters: map[string][]func(){}, met: newMetrics(cfg.Metrics, cfg.Name), onFence: cfg.OnFence}
}

// Admit checks a request as it arrives; admitted, it is pending until
// Begin or Cancel, or until a fence of a later epoch aborts it (then
// t.Aborted runs, if set).
func (g *Guard) Admit(t *Ticket) error {
	g.mu.Lock()
	err := g.s.Admit(t)
	g.mu.Unlock()
	if err != nil {
		g.met.refuse(err)
	}
	return err
}

// AdmitEncoded decodes the token at the start of b into t.Token and
// admits the request, as token.Parse then Admit but in one step: the group and
// the member are looked up once, and t.Token takes the guard's own
// strings, so it allocates nothing for a request it admits. It returns
// the token's length in b; a token that does not decode is refused with
// token's error (errors.Is(err, token.ErrShort), ...).
func (g *Guard) AdmitEncoded(b []byte, t *Ticket) (int, error) {
	// The names are compared with the guard's, which are valid; a token
	// whose names it does not know is refused, after the full check.
	v, n, err := token.Split(b)
	if err != nil {
		return 0, err
	}
	g.mu.Lock()
	err = g.s.AdmitView(v, t)
	g.mu.Unlock()
	if err != nil {
		g.met.refuse(err)
		return n, err
	}
	return n, nil
}

// BeginEncoded decodes the token at the start of b into t.Token and, if
// the guard admits it, begins the request's apply, in one step: for a
// resource that applies a request as soon as it arrives (no Admit before,
// End after). It returns the token's length in b.
func (g *Guard) BeginEncoded(b []byte, t *Ticket) (int, error) {
	v, n, err := token.Split(b)
	if err != nil {
		return 0, err
	}
	g.mu.Lock()
	err = g.s.BeginView(v, t)
	g.mu.Unlock()
	if err != nil {
		g.met.refuse(err)
		return n, err
	}
	return n, nil
}

// Begin checks the request again as its apply begins: admitted, its apply
// is under way until End, and no fence of a later epoch completes
// before. Refused, the request must not be applied.
func (g *Guard) Begin(t *Ticket) error {
	g.mu.Lock()
	err := g.s.Begin(t)
	g.mu.Unlock()
	if err != nil {
		g.met.refuse(err)
	}
	return err
}

// End ends the apply Begin admitted.
func (g *Guard) End(t *Ticket) error {
	g.mu.Lock()
	group := t.Token.Group
	drained, err := g.s.End(t)
	var waiters []func()
	if drained {
		waiters = g.waiters[group]
		delete(g.waiters, group)
	}
	g.mu.Unlock()
	for _, w := range waiters {
		w()
	}
	return err
}

// Cancel forgets an admitted request that will not be applied.
func (g *Guard) Cancel(t *Ticket) {
	g.mu.Lock()
	g.s.Cancel(t)
	g.mu.Unlock()
}

// Apply applies the request with apply if the guard admits it: Begin,
// apply, End. It returns the refusal, or apply's error.
func (g *Guard) Apply(t *Ticket, apply func() error) error {
	if err := g.Begin(t); err != nil {
		return err
	}
	defer g.End(t)
	return apply()
}

// Fence applies f to group and returns once it holds: every request of an
// older epoch admitted but not applied was aborted (their Aborted
// callbacks have run), and every apply of an older epoch under way has
// ended. Then, and only then, may the fence be acknowledged. A fence not
// above the group's floor holds as soon as the applies of epochs below the
// floor have ended (fences only rise). If ctx ends first, Fence returns
// its error; the floor is raised all the same, and Config.OnFence still
// runs once the fence holds.
func (g *Guard) Fence(ctx context.Context, group string, f Fence) error {
	done := make(chan error, 1)
	g.Raise(group, f, func(err error) { done <- err })
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Raise is Fence without waiting: it raises the floor and aborts at once,
// and calls done once the fence holds — before it returns if no apply of
// an older epoch is under way, else from the End that ends the last of
// them. done runs without the guard's lock and must not block; the fence
// driver, which must never block, uses Raise. Config.OnFence, if set,
// runs just before done(nil).
func (g *Guard) Raise(group string, f Fence, done func(error)) {
	g.mu.Lock()
	aborted, err := g.s.Fence(group, f, nil)
	if err != nil {
		g.mu.Unlock()
		done(err)
		return
	}
	// done runs once both the aborts here and the drain have happened,
	// whichever is last.
	steps := new(atomic.Int32)
	steps.Store(2)
	step := func() {
		if steps.Add(-1) == 0 {
			if g.onFence != nil {
				g.onFence(group, f)
			}
			done(nil)
		}
	}
	if g.s.Drained(group) {
		steps.Add(-1)
	} else {
		g.waiters[group] = append(g.waiters[group], step)
	}
	g.mu.Unlock()
	g.met.fences.Inc()
	var abortErr error
	for _, t := range aborted {
		g.met.refuse(ErrAborted)
		if t.Aborted != nil {
			if abortErr == nil {
				abortErr = abortError(group, f.Epoch)
			}
			t.Aborted(t, abortErr)
		}
	}
	step()
}

// Floor returns group's fence, if the guard has one.
func (g *Guard) Floor(group string) (Fence, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.s.Floor(group)
}

// Groups lists the groups the guard holds a fence of, sorted.
func (g *Guard) Groups() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.s.Groups()
}
