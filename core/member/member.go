// Package member is the pure state machine of one domain's membership in
// one group (DESIGN §4 and §5, member side).
//
// A Machine holds no goroutines, clocks or I/O. The driver feeds it events
// (an epoch record seen in the store, an answered lease renewal, the current
// monotonic time, an operation beginning or ending) by calling its methods,
// then collects the actions it must carry out with Ready, in order. The
// machine is not safe for concurrent use: the driver serialises calls.
package member

import (
	"fmt"
	"time"

	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/proto"
)

// Config names the membership and its lease timing.
type Config struct {
	Group       string
	ID          string
	Incarnation uint64
	Lease       lease.Config
}

// Phase is where the membership stands.
type Phase int

const (
	// Joining: registered, not yet a member of a connected epoch.
	Joining Phase = iota
	// Connected: member of the connected epoch Current.
	Connected
	// Quiescing: the last connected epoch was disconnected; waiting for the
	// next one to connect.
	Quiescing
	// Fenced: stopped for good under this incarnation (fenced, or closed
	// by the driver: Err says which).
	Fenced
	// Left: left the group.
	Left
)

func (p Phase) String() string {
	switch p {
	case Joining:
		return "joining"
	case Connected:
		return "connected"
	case Quiescing:
		return "quiescing"
	case Fenced:
		return "fenced"
	case Left:
		return "left"
	}
	return fmt.Sprintf("Phase(%d)", int(p))
}

// Action is something the driver must do. Carry actions out in the order
// Ready returns them.
type Action interface{ action() }

// Connect: epoch Epoch is connected with this member in it; open its
// channels and hand it to the client.
type Connect struct {
	Epoch   uint64
	Members []proto.Member
}

// Disconnect: epoch Epoch is over; end its context and close its channels.
// Its operations may still be running; the machine acknowledges quiesce
// only once they have all ended.
type Disconnect struct{ Epoch uint64 }

// WriteAck: write the quiesce acknowledgement for epoch Epoch.
type WriteAck struct{ Epoch uint64 }

// Fence: stop for good. Disconnect has already been issued for the
// connected epoch; end every context of the group, stop renewing the lease,
// cut the group's connections. Err wraps proto.ErrFenced.
type Fence struct{ Err error }

// Leave: quiesced after a graceful Leave; write the leave marker and
// revoke the lease.
type Leave struct{}

func (Connect) action()    {}
func (Disconnect) action() {}
func (WriteAck) action()   {}
func (Fence) action()      {}
func (Leave) action()      {}

// Machine is one membership's state.
type Machine struct {
	cfg   Config
	phase Phase
	err   error // why Fenced or Left

	// current is the connected epoch, or the last one while quiescing.
	current uint64
	members []proto.Member
	// seen is the highest epoch number seen in a record, and seenConnected
	// whether that record was connected.
	seen          uint64
	seenConnected bool
	// ackTarget is the quiescing epoch this member must acknowledge (0 for
	// none); acked the highest it has acknowledged.
	ackTarget, acked uint64
	leaving          bool
	// ops counts operations in progress per epoch.
	ops map[uint64]int

	lease   *lease.Tracker
	actions []Action
}

// New returns the machine of a membership that has just registered. Call
// Renewed with the send time of the lease grant before anything else.
func New(cfg Config) *Machine {
	return &Machine{cfg: cfg, ops: map[uint64]int{}, lease: lease.NewTracker(cfg.Lease)}
}

// Phase returns where the membership stands.
func (m *Machine) Phase() Phase { return m.phase }

// Err returns why the membership is fenced or left, or nil.
func (m *Machine) Err() error { return m.err }

// Current returns the connected epoch (or the last one, while quiescing)
// and its members.
func (m *Machine) Current() (uint64, []proto.Member) { return m.current, m.members }

// InFlight returns the number of operations in progress in epoch e.
func (m *Machine) InFlight(e uint64) int { return m.ops[e] }

// InFlightBefore returns the number of operations in progress in epochs
// before e.
func (m *Machine) InFlightBefore(e uint64) int {
	n := 0
	for ep, c := range m.ops {
		if ep < e {
			n += c
		}
	}
	return n
}

// Acked returns the highest epoch this member has acknowledged quiesce for.
func (m *Machine) Acked() uint64 { return m.acked }

// LeaseDeadline returns when the lease may lapse by the local clock.
func (m *Machine) LeaseDeadline() (time.Duration, bool) { return m.lease.Deadline() }

// Ready returns the actions accumulated since the last call and clears them.
func (m *Machine) Ready() []Action {
	a := m.actions
	m.actions = nil
	return a
}

func (m *Machine) emit(a Action) { m.actions = append(m.actions, a) }

func (m *Machine) stopped() bool { return m.phase == Fenced || m.phase == Left }

func (m *Machine) me() proto.Ref { return proto.Ref{ID: m.cfg.ID, Incarnation: m.cfg.Incarnation} }

// Observe takes an epoch record seen in the store. Records older than one
// already seen are ignored.
func (m *Machine) Observe(rec *proto.EpochRecord) {
	if m.stopped() || rec == nil || rec.Group != m.cfg.Group {
		return
	}
	connected := rec.State == proto.Connected
	if rec.Number < m.seen || rec.Number == m.seen && (m.seenConnected || !connected) {
		return
	}
	m.seen, m.seenConnected = rec.Number, connected
	me := m.me()
	inRec := proto.Contains(rec.Members, me)

	// Dropped: excluded by topology determination, or in the last connected
	// epoch and not in this one. The coordinator will revoke the lease;
	// stop now rather than wait for that.
	if proto.Contains(rec.Excluded, me) || (!inRec && proto.Contains(rec.Prev, me)) ||
		(!inRec && connected && m.current != 0) {
		m.fence(fmt.Errorf("%w: %w in epoch %d", proto.ErrFenced, proto.ErrEvicted, rec.Number))
		return
	}
	if m.leaving {
		// Already disconnected; the pending Leave completes on quiesce.
		return
	}
	if !connected {
		m.disconnect()
		// A survivor: in the record and in the last connected epoch (its
		// Survivors, without building that list for each of a thousand
		// members).
		if inRec && proto.Contains(rec.Prev, me) && rec.Number > m.ackTarget {
			m.ackTarget = rec.Number
		}
		m.maybeAck()
		return
	}
	if !inRec {
		return // joining, not yet admitted
	}
	if rec.Number > m.current {
		m.disconnect()
		m.current, m.members, m.phase = rec.Number, rec.Members, Connected
		m.emit(Connect{Epoch: rec.Number, Members: rec.Members})
	}
}

// disconnect ends the connected epoch, if there is one.
func (m *Machine) disconnect() {
	if m.phase == Connected {
		m.phase = Quiescing
		m.emit(Disconnect{Epoch: m.current})
	}
}

func (m *Machine) maybeAck() {
	if m.ackTarget > m.acked && m.InFlightBefore(m.ackTarget) == 0 && !m.stopped() {
		m.acked = m.ackTarget
		m.emit(WriteAck{Epoch: m.ackTarget})
	}
}

// Begin starts an operation in epoch e. It fails unless e is the connected
// epoch; the error wraps proto.ErrEpochEnded, ErrNotConnected, ErrFenced or
// (after Leave) ErrLeft.
func (m *Machine) Begin(e uint64) error {
	switch {
	case m.stopped():
		return m.err
	case m.phase != Connected:
		return fmt.Errorf("%w (group %s)", proto.ErrNotConnected, m.cfg.Group)
	case e != m.current:
		return fmt.Errorf("%w: epoch %d of group %s (connected: %d)", proto.ErrEpochEnded, e, m.cfg.Group, m.current)
	}
	m.ops[e]++
	return nil
}

// End ends an operation begun in epoch e. When the last operation of a
// disconnected epoch ends, the machine acknowledges quiesce.
func (m *Machine) End(e uint64) {
	if m.ops[e] <= 0 {
		panic(fmt.Sprintf("member: End(%d) without Begin", e))
	}
	m.ops[e]--
	if m.ops[e] == 0 {
		delete(m.ops, e)
	}
	m.maybeAck()
	m.maybeLeave()
}

// Renewed records that the store answered a lease grant or renewal sent at
// sentAt (local monotonic time).
//
// A renewal sent at or after the deadline fences instead: the lease may
// have lapsed before it was sent (even if no Tick said so in between), and
// a membership never resumes once that may have happened (G6, DESIGN §5).
func (m *Machine) Renewed(sentAt time.Duration) {
	if m.stopped() {
		return
	}
	if dl, ok := m.lease.Deadline(); ok && sentAt >= dl {
		m.fence(fmt.Errorf("%w: %w: renewal sent at %v, not before the deadline %v", proto.ErrFenced, proto.ErrLeaseExpired, sentAt, dl))
		return
	}
	m.lease.Renewed(sentAt)
}

// LeaseLost records that the store said the lease no longer exists.
func (m *Machine) LeaseLost() {
	m.fence(fmt.Errorf("%w: %w (the store no longer has it)", proto.ErrFenced, proto.ErrLeaseExpired))
}

// Tick advances the local monotonic clock to now. If the lease may have
// lapsed, the membership fences itself.
func (m *Machine) Tick(now time.Duration) {
	if !m.stopped() && m.lease.Expired(now) {
		d, _ := m.lease.Deadline()
		m.fence(fmt.Errorf("%w: %w at %v (deadline %v)", proto.ErrFenced, proto.ErrLeaseExpired, now, d))
	}
}

// Leave starts a graceful leave: the connected epoch is disconnected and,
// once its operations have ended, the machine emits Leave.
func (m *Machine) Leave() {
	if m.stopped() || m.leaving {
		return
	}
	m.leaving = true
	m.disconnect()
	m.maybeLeave()
}

func (m *Machine) maybeLeave() {
	if m.leaving && !m.stopped() && len(m.ops) == 0 {
		m.phase, m.err = Left, proto.ErrLeft
		m.emit(Leave{})
	}
}

// Close stops the membership for good at the driver's request: like a
// fence, but the reason is proto.ErrClosed.
func (m *Machine) Close() {
	if m.stopped() {
		return
	}
	m.disconnect()
	m.phase, m.err = Fenced, proto.ErrClosed
	m.emit(Fence{Err: proto.ErrClosed})
}

// fence stops the membership for good.
func (m *Machine) fence(err error) {
	if m.stopped() {
		return
	}
	m.disconnect()
	m.phase, m.err = Fenced, err
	m.emit(Fence{Err: err})
}
