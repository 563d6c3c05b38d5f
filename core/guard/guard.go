// Package guard is the decision logic of a resource's guard (DESIGN §6),
// as a pure state machine in the manner of etcd's raft RawNode: no
// goroutines, clocks, locks or I/O. Package guard (the root one) wraps it
// with a lock and the waiting a fence needs; the fence driver feeds it
// fences from the store.
//
// Per group the state holds a fence: the lowest epoch admitted (the
// floor), the members admitted in it (registration) and optionally the
// one member whose writes are admitted (the reservation). A request
// carries a token (package token); it is checked when it arrives (Admit)
// and again, atomically with the start of its apply, when it is applied
// (Begin), so a request admitted before a fence and applied after it is
// refused (G5). Applying a fence of a later epoch raises the floor, aborts
// every request admitted but not yet applied of an older epoch, and
// reports whether applies of older epochs are still under way: the fence
// is acknowledged only once they have ended (preempt-and-abort, as an
// NVMe target drains a preempted host's commands).
package guard

import (
	"errors"
	"fmt"
	"slices"

	"github.com/idc-dev/idc/internal/mutation"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

// Fence is what a guard admits in a group from its epoch on.
type Fence struct {
	// Epoch is the floor: requests of older epochs are refused.
	Epoch uint64
	// Members are the domain incarnations admitted in Epoch.
	Members []proto.Ref
	// Writer, if not empty, is the ID of the one member whose writes are
	// admitted in Epoch (a reservation); reads are admitted from every
	// member.
	Writer string
}

// Errors of a refusal, for errors.Is; each wraps ErrRefused.
var (
	// ErrRefused is what every refusal wraps.
	ErrRefused = errors.New("idc: guard: request refused")
	// ErrNoFence: the guard knows no fence of the group (it has not read
	// the group's fences since it started, or the group has none): it
	// refuses everything until it does.
	ErrNoFence = fmt.Errorf("%w: no fence known for the group", ErrRefused)
	// ErrStale: the token's epoch is below the floor: it was fenced.
	ErrStale = fmt.Errorf("%w: stale epoch (fenced)", ErrRefused)
	// ErrAborted: a fence of a later epoch came after the request was
	// admitted and before its apply began: it was never applied.
	ErrAborted = fmt.Errorf("%w: aborted by a fence before its apply", ErrRefused)
	// ErrAhead: the token's epoch is above the floor: the guard has not
	// applied that epoch's fence yet.
	ErrAhead = fmt.Errorf("%w: epoch not fenced yet", ErrRefused)
	// ErrNotMember: the token's domain incarnation is not a member of the
	// floor epoch.
	ErrNotMember = fmt.Errorf("%w: not a member of the epoch", ErrRefused)
	// ErrNotWriter: a write by a member that does not hold the epoch's
	// reservation.
	ErrNotWriter = fmt.Errorf("%w: not the epoch's writer", ErrRefused)
	// ErrState: a ticket used out of turn (admitted twice, ended without
	// a begin): a bug of the resource, not a refusal.
	ErrState = errors.New("idc: guard: ticket used out of turn")
)

// Reason is why a request was refused, for metrics: the error's kind.
func Reason(err error) string {
	for _, r := range [...]struct {
		err  error
		name string
	}{{ErrNoFence, "no-fence"}, {ErrStale, "stale"}, {ErrAborted, "aborted"}, {ErrAhead, "ahead"}, {ErrNotMember, "not-member"}, {ErrNotWriter, "not-writer"}} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// Reasons lists every Reason, for metrics.
var Reasons = []string{"no-fence", "stale", "aborted", "ahead", "not-member", "not-writer"}

type tstate uint8

const (
	tIdle     tstate = iota // not known to the guard
	tPending                // admitted, apply not begun
	tApplying               // apply under way
)

// Ticket is one request between its admission and the end of its apply.
// The resource owns it (embed it in the request's state, or pool it) and
// may reuse it once its apply ended or it was refused, aborted or
// cancelled.
type Ticket struct {
	// Token is the request's token; set it before Admit or Begin.
	Token token.Token
	// Write: the request changes the resource (a reservation admits only
	// its writer's writes).
	Write bool
	// Aborted, if not nil, is called by the wrapping guard (without its
	// lock) when a fence aborts the ticket before its apply began, with
	// an error wrapping ErrAborted.
	Aborted func(*Ticket, error)

	state      tstate
	grp        *group
	epoch      uint64 // the token's epoch when admitted or begun
	gen        uint64 // the group's fence generation when admitted
	prev, next *Ticket
}

// group is a group's fence and its requests.
type group struct {
	name    string
	fence   Fence
	members map[string]member // the fence's members, by ID
	pending Ticket            // sentinel of the admitted tickets' ring
	gen     uint64            // counts the fences applied
	cur     int               // applies under way of the floor epoch
	old     int               // applies under way of older epochs
}

// member is a member of a fence: its ID (the map's key, kept to hand out
// without allocating) and incarnation.
type member struct {
	id  string
	inc uint64
}

// State is the guard's state for every group it knows. Not safe for
// concurrent use.
type State struct {
	groups map[string]*group
}

// New returns a state that knows no fence: it refuses everything until
// Fence is applied for a group.
func New() *State { return &State{groups: map[string]*group{}} }

// check decides on a token; it does not allocate when it admits.
func (s *State) check(t *Ticket) (*group, error) {
	g := s.groups[t.Token.Group]
	switch {
	case g == nil:
		return nil, fmt.Errorf("%w: %s", ErrNoFence, t.Token)
	}
	m, ok := g.members[t.Token.Domain]
	if err := s.verdict(g, t, ok && m.inc == t.Token.Incarnation); err != nil {
		return nil, err
	}
	return g, nil
}

// verdict decides on t's token in group g, whose member it is if member.
func (s *State) verdict(g *group, t *Ticket, member bool) error {
	switch {
	case t.Token.Epoch < g.fence.Epoch:
		return fmt.Errorf("%w: %s, fenced at %d", ErrStale, t.Token, g.fence.Epoch)
	case t.Token.Epoch > g.fence.Epoch:
		return fmt.Errorf("%w: %s, fenced at %d", ErrAhead, t.Token, g.fence.Epoch)
	case !member:
		return fmt.Errorf("%w: %s", ErrNotMember, t.Token)
	case t.Write && g.fence.Writer != "" && t.Token.Domain != g.fence.Writer:
		return fmt.Errorf("%w: %s (the writer is %s)", ErrNotWriter, t.Token, g.fence.Writer)
	}
	return nil
}

// Admit checks a request when it arrives: admitted, it is pending until
// Begin, Cancel or a fence of a later epoch (which aborts it).
func (s *State) Admit(t *Ticket) error {
	if t.state != tIdle {
		return ErrState
	}
	g, err := s.check(t)
	if err != nil {
		return err
	}
	s.pend(g, t)
	return nil
}

// pend makes an admitted ticket pending.
func (s *State) pend(g *group, t *Ticket) {
	t.state, t.grp, t.epoch, t.gen = tPending, g, t.Token.Epoch, g.gen
	t.prev, t.next = g.pending.prev, &g.pending
	t.prev.next, g.pending.prev = t, t
}

// unlink takes a pending ticket off its group's ring.
func (t *Ticket) unlink() {
	t.prev.next, t.next.prev = t.next, t.prev
	t.prev, t.next = nil, nil
}

// Begin checks a request again as its apply begins, and admitted, counts
// the apply as under way until End: a fence of a later epoch is not
// acknowledged before. The check and the start are one step: nothing can
// come between them. A ticket not admitted before is checked here alone.
// A refused ticket is done (reusable).
func (s *State) Begin(t *Ticket) error {
	switch t.state {
	case tPending:
		t.unlink()
		t.state = tIdle
		if t.grp.gen == t.gen || mutation.On(mutation.GuardChecksAtAdmission) {
			// No fence since its admission, whose check therefore
			// stands (or, the broken variant, trusted anyway).
			t.state = tApplying
			s.started(t.grp, t.epoch)
			return nil
		}
	case tApplying:
		return ErrState
	}
	g, err := s.check(t)
	if err != nil {
		t.grp = nil
		return err
	}
	t.state, t.grp, t.epoch = tApplying, g, t.Token.Epoch
	s.started(g, t.epoch)
	return nil
}

func (s *State) started(g *group, e uint64) {
	if e == g.fence.Epoch {
		g.cur++
	} else {
		g.old++
	}
}

// End ends the apply begun with Begin. It reports whether the group's
// applies of epochs older than its floor have all ended with it (a fence
// waiting for them may now be acknowledged).
func (s *State) End(t *Ticket) (drained bool, err error) {
	if t.state != tApplying {
		return false, ErrState
	}
	g := t.grp
	t.state, t.grp = tIdle, nil
	if t.epoch == g.fence.Epoch {
		g.cur--
		return false, nil
	}
	g.old--
	return g.old == 0, nil
}

// Cancel forgets an admitted request whose apply will not begin (the
// resource dropped it). A ticket not pending is left as it is.
func (s *State) Cancel(t *Ticket) {
	if t.state == tPending {
		t.unlink()
		t.state, t.grp = tIdle, nil
	}
}

// Fence applies f to the group name: if f.Epoch is above the floor, it becomes the
// floor with f's members and writer, and every request of an older epoch
// admitted but not begun is aborted — appended to aborted, which is
// returned. A fence not above the floor changes nothing (fences only
// rise; one of the floor's epoch is applied again, with its members).
// Whether the fence may be acknowledged is Drained's to say.
func (s *State) Fence(name string, f Fence, aborted []*Ticket) ([]*Ticket, error) {
	if f.Epoch == 0 {
		return aborted, fmt.Errorf("idc: guard: fence of epoch 0 for group %s", name)
	}
	g := s.groups[name]
	if g == nil {
		g = &group{name: name}
		g.pending.prev, g.pending.next = &g.pending, &g.pending
		s.groups[name] = g
	}
	if f.Epoch < g.fence.Epoch {
		return aborted, nil
	}
	if f.Epoch > g.fence.Epoch {
		g.old += g.cur
		g.cur = 0
		for t := g.pending.next; t != &g.pending; {
			next := t.next
			if t.epoch < f.Epoch && !mutation.On(mutation.GuardChecksAtAdmission) {
				t.unlink()
				t.state, t.grp = tIdle, nil
				aborted = append(aborted, t)
			}
			t = next
		}
	}
	g.gen++
	g.fence = Fence{Epoch: f.Epoch, Members: slices.Clone(f.Members), Writer: f.Writer}
	g.members = make(map[string]member, len(f.Members))
	for _, m := range f.Members {
		g.members[m.ID] = member{id: m.ID, inc: m.Incarnation}
	}
	return aborted, nil
}

// Drained reports whether group's fence may be acknowledged: no apply of
// an epoch below its floor is under way. A group without a fence is not
// drained.
func (s *State) Drained(group string) bool {
	g := s.groups[group]
	return g != nil && g.old == 0
}

// Floor returns group's fence, if it has one.
func (s *State) Floor(group string) (Fence, bool) {
	g := s.groups[group]
	if g == nil {
		return Fence{}, false
	}
	return g.fence, true
}

// AdmitView is Admit for a token decoded with token.ParseView: it looks
// the group and the member up once, and sets t.Token with the state's own
// strings, so admitting a request decoded from bytes allocates nothing.
// A token it refuses is set with copies.
func (s *State) AdmitView(v token.View, t *Ticket) error {
	g, err := s.checkView(v, t)
	if err != nil {
		return err
	}
	s.pend(g, t)
	return nil
}

// BeginView is Begin for a request decoded with token.ParseView and not
// admitted before: it checks the token as AdmitView does and, admitted,
// begins its apply in the same step (for a resource that applies a
// request as soon as it arrives).
func (s *State) BeginView(v token.View, t *Ticket) error {
	g, err := s.checkView(v, t)
	if err != nil {
		return err
	}
	t.state, t.grp, t.epoch = tApplying, g, t.Token.Epoch
	s.started(g, t.epoch)
	return nil
}

// checkView sets t.Token from v, with the state's own strings for the
// names it knows, and decides on it.
func (s *State) checkView(v token.View, t *Ticket) (*group, error) {
	if t.state != tIdle {
		return nil, ErrState
	}
	g := s.groups[string(v.Group)]
	if g == nil {
		if !validView(v) {
			return nil, token.ErrMalformed
		}
		t.Token = token.Token{Group: string(v.Group), Epoch: v.Epoch, Domain: string(v.Domain), Incarnation: v.Incarnation}
		return nil, fmt.Errorf("%w: %s", ErrNoFence, t.Token)
	}
	m, ok := g.members[string(v.Domain)]
	domain := m.id
	if !ok {
		if !validView(v) {
			return nil, token.ErrMalformed
		}
		domain = string(v.Domain)
	}
	t.Token = token.Token{Group: g.name, Epoch: v.Epoch, Domain: domain, Incarnation: v.Incarnation}
	if err := s.verdict(g, t, ok && m.inc == v.Incarnation); err != nil {
		return nil, err
	}
	return g, nil
}

// validView reports whether v's names are valid (token.ParseView's check).
func validView(v token.View) bool { return token.ValidName(v.Group) && token.ValidName(v.Domain) }

// Groups lists the groups with a fence, sorted.
func (s *State) Groups() []string {
	out := make([]string, 0, len(s.groups))
	for name := range s.groups {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// InFlight returns group's requests pending (admitted, not begun) and
// applying (of the floor's epoch and of older ones).
func (s *State) InFlight(group string) (pending, applying, older int) {
	g := s.groups[group]
	if g == nil {
		return 0, 0, 0
	}
	for t := g.pending.next; t != &g.pending; t = t.next {
		pending++
	}
	return pending, g.cur, g.old
}
