// Package coordinator is the pure state machine that drives one group's
// epoch changes (DESIGN §4, coordinator side).
//
// The machine is level-triggered: the driver hands it the whole View of the
// group's keys whenever they change (Update) and the current monotonic time
// whenever a deadline passes (Tick); the machine compares what is with what
// should be and emits the store writes that move the group forward. Every
// epoch write is a compare-and-swap on the revision of the epoch record the
// decision was based on, so two coordinators can never both decide an epoch
// (G1), and a coordinator that takes over needs nothing but the view.
//
// What the machine keeps in memory is only timing it observed itself: when
// it first saw an epoch quiescing (the quiesce deadline) and when it saw a
// departed member's lease gone (the lease wait). A new coordinator restarts
// both from its own observations, which only makes it wait longer.
package coordinator

import (
	"fmt"
	"github.com/idc-dev/idc/internal/mutation"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/proto"
)

// Config is the coordinator's policy for one group.
type Config struct {
	Group string
	// Mode is how departed members are handled (default proto.ModeLease).
	Mode proto.Mode
	// QuiesceTimeout is how long survivors have to acknowledge quiesce
	// before those that have not are dropped in a further epoch.
	QuiesceTimeout time.Duration
	// Rho and Margin are the lease drift bound and safety margin; the wait
	// for a departed member is TTL·(1+Rho)+Margin from when its lease was
	// seen gone.
	Rho    float64
	Margin time.Duration
	// Policy is topology determination (default DropSuspect).
	Policy Policy
	// Damping holds back domains that keep departing (defaults in
	// Damping).
	Damping Damping
}

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = proto.ErrConfig

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Mode == "" {
		c.Mode = proto.ModeLease
	}
	if c.Policy == nil {
		c.Policy = DropSuspect{}
	}
	c.Damping = c.Damping.withDefaults()
	return c
}

// Validate checks c after defaults.
func (c Config) Validate() error {
	switch {
	case !c.Mode.Valid():
		return fmt.Errorf("%w: mode %q (want lease, fence or both)", ErrConfig, c.Mode)
	case c.QuiesceTimeout <= 0:
		return fmt.Errorf("%w: quiesce timeout %v must be positive", ErrConfig, c.QuiesceTimeout)
	case !(c.Rho >= 0 && c.Rho < 0.5): // NaN too
		return fmt.Errorf("%w: drift bound ρ=%v must be in [0, 0.5)", ErrConfig, c.Rho)
	case c.Margin < 0:
		return fmt.Errorf("%w: margin %v must not be negative", ErrConfig, c.Margin)
	case c.Damping.Window < 0 || c.Damping.Hold < 0:
		return fmt.Errorf("%w: damping window %v and hold %v must not be negative", ErrConfig, c.Damping.Window, c.Damping.Hold)
	}
	return proto.CheckName("group", c.Group)
}

// Action is a store operation the driver must carry out, then report back
// (WriteFailed, Revoked, RevokeFailed).
type Action interface{ action() }

// WriteEpoch: write Record to the group's epoch key if and only if the
// key's mod revision is still ExpectRevision (0: the key must not exist).
// The transaction is that one compare and one put: whatever the group's
// size, it never meets the store's limits on operations per transaction.
type WriteEpoch struct {
	Record         proto.EpochRecord
	ExpectRevision int64
}

// Cleanup: delete records a connected epoch made obsolete, best effort,
// in transactions as small as the store needs; then call CleanedUp (or
// CleanupFailed). It is separate from the epoch write so that no amount
// of garbage can make the compare-and-swap fail.
type Cleanup struct {
	// Before: delete acks, fault reports and fence acks of epochs before it.
	Before uint64
	// Left: delete these domains' leave markers, each only if its mod
	// revision is still the one given (a newer marker is not garbage).
	Left map[string]int64
}

// Revoke: revoke the lease of Member's membership, then call Revoked with
// the time the store answered (or RevokeFailed).
type Revoke struct{ Member proto.Member }

func (WriteEpoch) action() {}
func (Cleanup) action()    {}
func (Revoke) action()     {}

// Machine is the coordinator of one group.
type Machine struct {
	cfg  Config
	view View
	now  time.Duration

	// pending is the revision an epoch write in flight was conditioned on;
	// no new decision is taken until the view has moved past it or the
	// write failed.
	pending    int64
	hasPending bool
	// retryAt holds decisions back after a failed write.
	retryAt time.Duration
	// quiescing is the quiescing epoch last seen and quiescingAt when.
	quiescing   uint64
	quiescingAt time.Duration
	// goneAt is when each departed or excluded incarnation was seen gone.
	goneAt   map[proto.Ref]time.Duration
	revoking map[proto.Ref]bool
	// damp is the flapping history (Config.Damping).
	damp *damper
	// highest is the highest epoch number seen in a record: a record that
	// vanished or went below it is waited on, never decided past (G1).
	highest uint64
	// cleaning: a Cleanup is in flight; cleanAt holds the next one back
	// after a failure.
	cleaning bool
	cleanAt  time.Duration
	// dirty: the view held garbage at the last step.
	dirty bool
	// of, survivors and departed cache the survivors and departed members
	// of the record last asked about (every step asks several times).
	of                  *proto.EpochRecord
	survivors, departed []proto.Member

	actions []Action
}

// New returns a coordinator for cfg.Group. cfg must have been validated.
func New(cfg Config) *Machine {
	cfg = cfg.WithDefaults()
	return &Machine{
		cfg:      cfg,
		view:     NewView(cfg.Group),
		goneAt:   map[proto.Ref]time.Duration{},
		revoking: map[proto.Ref]bool{},
		damp:     newDamper(cfg.Damping),
	}
}

// Ready returns the actions accumulated since the last call and clears them.
func (m *Machine) Ready() []Action {
	a := m.actions
	m.actions = nil
	return a
}

// View returns the last view handed in.
func (m *Machine) View() View { return m.view }

// Update hands in the group's view at local time now.
func (m *Machine) Update(v View, now time.Duration) {
	if m.hasPending && v.EpochRevision != m.pending || v.EpochRevision != m.view.EpochRevision {
		m.hasPending = false
		m.retryAt = 0 // the view moved: no reason to hold back
	}
	m.view = v
	if v.Epoch != nil && v.Epoch.Number > m.highest {
		m.highest = v.Epoch.Number
	}
	m.advance(now)
	m.step()
}

// Tick advances the local monotonic clock.
func (m *Machine) Tick(now time.Duration) {
	m.advance(now)
	m.step()
}

func (m *Machine) advance(now time.Duration) {
	if now > m.now {
		m.now = now
	}
}

// RetryDelay is how long after a failed epoch write the machine decides
// again (sooner if the view changes).
const RetryDelay = 50 * time.Millisecond

// WriteFailed reports that an epoch write did not apply at local time now
// (the compare failed or the store did not answer). The machine decides
// afresh on the next view, or at the latest RetryDelay later.
func (m *Machine) WriteFailed(now time.Duration) {
	m.advance(now)
	m.hasPending = false
	m.retryAt = m.now + RetryDelay
}

// Revoked reports that the store answered the revocation of r's lease at
// local time at (including "no such lease": it is gone either way).
func (m *Machine) Revoked(r proto.Ref, at time.Duration) {
	delete(m.revoking, r)
	m.markGone(r, at)
	m.advance(at)
	m.step()
}

// RevokeFailed reports that a revocation was not answered at local time
// now; it is retried RetryDelay later.
func (m *Machine) RevokeFailed(r proto.Ref, now time.Duration) {
	m.advance(now)
	delete(m.revoking, r)
	m.retryAt = m.now + RetryDelay
}

// CleanedUp reports that the last Cleanup was carried out at local time
// now. The next cleanup waits CleanupRetryDelay, so that the deletions
// have reached the view by then.
func (m *Machine) CleanedUp(now time.Duration) {
	m.advance(now)
	m.cleaning = false
	m.cleanAt = m.now + CleanupRetryDelay
}

// CleanupFailed reports that the last Cleanup was not (wholly) carried out
// at local time now; it is tried again CleanupRetryDelay later.
func (m *Machine) CleanupFailed(now time.Duration) {
	m.advance(now)
	m.cleaning = false
	m.cleanAt = m.now + CleanupRetryDelay
}

// CleanupRetryDelay is how long the machine waits after a cleanup before
// the next one: garbage is no hurry.
const CleanupRetryDelay = time.Second

func (m *Machine) markGone(r proto.Ref, at time.Duration) {
	if _, ok := m.goneAt[r]; !ok {
		m.goneAt[r] = at
	}
}

func (m *Machine) wait(mem proto.Member) time.Duration {
	return lease.Config{TTL: mem.TTL, Rho: m.cfg.Rho, Margin: m.cfg.Margin}.Wait()
}

// NextDeadline returns the earliest local time at which a Tick may change
// the machine's decision, and false if none is pending.
func (m *Machine) NextDeadline() (time.Duration, bool) {
	var next time.Duration
	found := false
	consider := func(t time.Duration) {
		// A time already reached was decided on at the last step: a Tick
		// cannot change anything then (and a driver timer armed for a past
		// deadline would spin).
		if t <= m.now {
			return
		}
		if !found || t < next {
			next, found = t, true
		}
	}
	if m.retryAt > m.now {
		consider(m.retryAt)
	}
	if m.dirty && !m.cleaning && m.cleanAt > m.now {
		consider(m.cleanAt)
	}
	rec := m.view.Epoch
	if rec != nil && !m.stale() {
		for _, lm := range m.view.Live {
			if until, held := m.held(rec, lm); held {
				consider(until)
			}
		}
	}
	if rec == nil || rec.State != proto.Quiescing || m.stale() {
		return next, found
	}
	for _, s := range m.survivorsOf(rec) {
		if !m.view.acked(rec.Number, s.Ref()) {
			consider(m.quiescingAt + m.quiesceTimeout())
			break
		}
	}
	if m.leases() {
		for _, d := range m.departedOf(rec) {
			if at, ok := m.goneAt[d.Ref()]; ok && !m.view.left(d.Ref()) {
				consider(at + m.wait(d))
			}
		}
	}
	return next, found
}

// survivorsOf returns rec.Survivors(), cached per record.
func (m *Machine) survivorsOf(rec *proto.EpochRecord) []proto.Member {
	m.cache(rec)
	return m.survivors
}

// departedOf returns rec.Departed(), cached per record.
func (m *Machine) departedOf(rec *proto.EpochRecord) []proto.Member {
	m.cache(rec)
	return m.departed
}

func (m *Machine) cache(rec *proto.EpochRecord) {
	if m.of != rec {
		m.of, m.survivors, m.departed = rec, rec.Survivors(), rec.Departed()
	}
}

// fences reports whether changes wait for the resources' fence
// acknowledgements: in fence modes, when the group has resources.
func (m *Machine) fences() bool { return m.mode().UsesFence() && len(m.view.Expected) > 0 }

// mode is the group's mode: its configuration's, else the coordinator's.
func (m *Machine) mode() proto.Mode {
	if m.view.Config.Mode != "" {
		return m.view.Config.Mode
	}
	return m.cfg.Mode
}

// quiesceTimeout is the group's quiesce timeout: its configuration's, else
// the coordinator's.
func (m *Machine) quiesceTimeout() time.Duration {
	if ms := m.view.Config.QuiesceTimeoutMillis; ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return m.cfg.QuiesceTimeout
}

// leases reports whether departed members are waited out by lease: in
// lease modes, and in fence mode while the group has no resource — a
// fence set that is empty fences nothing, so the lease must be waited out
// instead (DESIGN §6).
func (m *Machine) leases() bool {
	if mutation.On(mutation.FenceNothing) {
		return m.mode().UsesLease()
	}
	return m.mode().UsesLease() || m.mode().UsesFence() && len(m.view.Expected) == 0
}

// stale reports whether the view's epoch record is missing or below one
// seen before (the key was deleted or restored from an older copy).
func (m *Machine) stale() bool {
	rec := m.view.Epoch
	return rec == nil && m.highest > 0 || rec != nil && rec.Number < m.highest
}

func (m *Machine) write(rec proto.EpochRecord) {
	m.pending, m.hasPending = m.view.EpochRevision, true
	m.actions = append(m.actions, WriteEpoch{Record: rec, ExpectRevision: m.view.EpochRevision})
}

// step takes the next decision, if any.
func (m *Machine) step() {
	if m.hasPending || m.now < m.retryAt {
		return
	}
	v := &m.view
	rec := v.Epoch
	if m.stale() {
		return // G1: never form or decide again at or below a number seen
	}
	if rec == nil {
		if len(v.Live) > 0 {
			ms := m.liveMembers(nil, nil)
			m.write(proto.EpochRecord{
				Group: m.cfg.Group, Number: 1, State: proto.Connected, Mode: m.mode(),
				Members: ms, Reason: "formed by " + strings.Join(proto.IDs(ms), ", "),
			})
		}
		return
	}
	if rec.State == proto.Quiescing && m.quiescing != rec.Number {
		m.quiescing, m.quiescingAt = rec.Number, m.now
		for _, d := range m.departedOf(rec) {
			if !v.left(d.Ref()) {
				m.damp.departed(d.Ref(), m.now)
			}
		}
	}
	for _, d := range slices.Concat(m.departedOf(rec), rec.Excluded) {
		if !v.live(d.Ref()) {
			m.markGone(d.Ref(), m.now)
		}
	}

	drop := m.dropped(rec)
	if !m.asDesired(rec, drop) {
		m.change(rec, m.liveMembers(rec, drop), drop)
		return
	}
	if rec.State == proto.Connected {
		m.prune(rec)
		m.cleanup(rec)
		return
	}
	m.revokeDeparted(rec)
	if m.connectable(rec) {
		next := *rec
		next.State = proto.Connected
		next.Prev, next.PrevNumber = nil, 0
		next.Excluded = m.stillLive(rec.Excluded)
		m.write(next)
	}
}

// cleanup asks for the records that connected epoch rec made obsolete to
// be deleted: acks, fault reports and fence acks of earlier epochs, and
// the leave markers of incarnations that are neither live nor members of
// rec (a domain that left before it was ever admitted leaves one behind,
// as does every incarnation whose departure an epoch has since handled).
func (m *Machine) cleanup(rec *proto.EpochRecord) {
	v := &m.view
	c := Cleanup{Before: rec.Number}
	garbage := false
	for e := range v.Acks {
		garbage = garbage || e < rec.Number
	}
	for e := range v.FenceAcks {
		garbage = garbage || e < rec.Number
	}
	for _, f := range v.Faults {
		garbage = garbage || f.Epoch < rec.Number
	}
	for id, inc := range v.Left {
		r := proto.Ref{ID: id, Incarnation: inc}
		if !v.live(r) && !proto.Contains(rec.Members, r) && !mutation.On(mutation.KeepLeaveMarkers) {
			if c.Left == nil {
				c.Left = map[string]int64{}
			}
			c.Left[id] = v.LeftRev[id]
		}
	}
	m.dirty = garbage || len(c.Left) > 0
	if !m.dirty || m.cleaning || m.now < m.cleanAt {
		return
	}
	m.cleaning = true
	m.actions = append(m.actions, c)
}

// prune forgets timing kept for incarnations the connected epoch rec no
// longer names.
func (m *Machine) prune(rec *proto.EpochRecord) {
	for r := range m.goneAt {
		if !proto.Contains(rec.Excluded, r) {
			delete(m.goneAt, r)
		}
	}
}

// dropped returns the incarnations that must not be members of the next
// epoch, with the reason for each.
func (m *Machine) dropped(rec *proto.EpochRecord) map[proto.Ref]string {
	v := &m.view
	drop := map[proto.Ref]string{}
	for _, x := range rec.Excluded {
		drop[x.Ref()] = "excluded"
	}
	for _, d := range m.departedOf(rec) {
		drop[d.Ref()] = "departed"
	}
	// Valid fault reports: the reporter is a live member of the current
	// epoch, the suspect a member, the report from the last connected epoch.
	since := rec.Number
	if rec.State == proto.Quiescing {
		since = rec.PrevNumber
	}
	var reports []proto.FaultReport
	for _, f := range v.Faults {
		rep := proto.Ref{ID: f.Reporter, Incarnation: f.ReporterIncarnation}
		sus := proto.Ref{ID: f.Suspect, Incarnation: f.SuspectIncarnation}
		if f.Epoch >= since && proto.Contains(rec.Members, rep) && v.live(rep) && proto.Contains(rec.Members, sus) {
			reports = append(reports, f)
		}
	}
	slices.SortFunc(reports, func(a, b proto.FaultReport) int {
		return strings.Compare(a.Reporter+"/"+a.Suspect, b.Reporter+"/"+b.Suspect)
	})
	for r, why := range m.cfg.Policy.Drop(rec.Members, reports) {
		if _, ok := drop[r]; !ok {
			drop[r] = why
		}
	}
	if rec.State == proto.Quiescing && m.now >= m.quiescingAt+m.quiesceTimeout() {
		for _, s := range m.survivorsOf(rec) {
			if !v.acked(rec.Number, s.Ref()) {
				if _, ok := drop[s.Ref()]; !ok {
					drop[s.Ref()] = fmt.Sprintf("%s did not quiesce within %v", s.ID, m.quiesceTimeout())
				}
			}
		}
	}
	return drop
}

// held reports whether live member lm, not a member of rec, is held back
// from admission for flapping (Config.Damping), and until when.
func (m *Machine) held(rec *proto.EpochRecord, lm proto.Member) (time.Duration, bool) {
	until, held := m.damp.heldUntil(lm.ID, m.now) // a map lookup for domains that never flapped
	if !held || proto.Contains(rec.Members, lm.Ref()) {
		return 0, false
	}
	return until, true
}

// asDesired reports whether rec's members are exactly the live member
// records not in drop and not held back: the check every view update makes,
// so it neither sorts nor allocates.
func (m *Machine) asDesired(rec *proto.EpochRecord, drop map[proto.Ref]string) bool {
	n := 0
	for _, lm := range m.view.Live {
		if _, ok := drop[lm.Ref()]; !ok {
			if _, held := m.held(rec, lm); !held {
				n++
			}
		}
	}
	if n != len(rec.Members) {
		return false
	}
	for _, mem := range rec.Members {
		if _, ok := drop[mem.Ref()]; ok || !m.view.live(mem.Ref()) {
			return false
		}
	}
	return true
}

// liveMembers returns the live member records not in drop, sorted by ID
// (with rec: and not held back; rec is nil when forming the first epoch).
func (m *Machine) liveMembers(rec *proto.EpochRecord, drop map[proto.Ref]string) []proto.Member {
	var out []proto.Member
	for _, lm := range m.view.Live {
		if _, ok := drop[lm.Ref()]; ok {
			continue
		}
		if rec != nil {
			if _, held := m.held(rec, lm); held {
				continue
			}
		}
		out = append(out, lm)
	}
	return proto.SortMembers(out)
}

// stillLive returns those of ms whose membership record is still present.
func (m *Machine) stillLive(ms []proto.Member) []proto.Member {
	var out []proto.Member
	for _, x := range ms {
		if m.view.live(x.Ref()) {
			out = append(out, x)
		}
	}
	return out
}

// change writes the next epoch, quiescing, with the desired members.
func (m *Machine) change(rec *proto.EpochRecord, desired []proto.Member, drop map[proto.Ref]string) {
	prev, prevNum := rec.Members, rec.Number
	if rec.State == proto.Quiescing {
		prev, prevNum = rec.Prev, rec.PrevNumber
	}
	var excluded []proto.Member
	for _, lm := range m.view.Live {
		if _, ok := drop[lm.Ref()]; ok {
			excluded = append(excluded, lm)
		}
	}
	m.write(proto.EpochRecord{
		Group: m.cfg.Group, Number: rec.Number + 1, State: proto.Quiescing, Mode: m.mode(),
		Members: desired, Prev: prev, PrevNumber: prevNum,
		Excluded: proto.SortMembers(excluded),
		Reason:   m.reason(rec, desired, drop),
	})
}

func (m *Machine) reason(rec *proto.EpochRecord, desired []proto.Member, drop map[proto.Ref]string) string {
	var parts []string
	cur, next := proto.Set(rec.Members), proto.Set(desired)
	for _, d := range desired {
		if !cur.Has(d.Ref()) {
			parts = append(parts, d.ID+" joined")
		}
	}
	for _, old := range rec.Members {
		if next.Has(old.Ref()) {
			continue
		}
		switch why, ok := drop[old.Ref()]; {
		case ok:
			parts = append(parts, why)
		case m.view.left(old.Ref()):
			parts = append(parts, old.ID+" left")
		default:
			parts = append(parts, old.ID+" lease gone")
		}
	}
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), "; ")
}

// revokeDeparted revokes the lease of every departed or excluded member
// whose membership is still live (DESIGN §5: a member cut off from its
// peers only would otherwise renew forever).
func (m *Machine) revokeDeparted(rec *proto.EpochRecord) {
	for _, d := range slices.Concat(m.departedOf(rec), rec.Excluded) {
		r := d.Ref()
		if lm, ok := m.view.Live[r.ID]; ok && lm.Incarnation == r.Incarnation && !m.revoking[r] {
			if _, gone := m.goneAt[r]; !gone {
				m.revoking[r] = true
				m.actions = append(m.actions, Revoke{Member: lm})
			}
		}
	}
}

// connectable reports whether the quiescing epoch rec may connect: every
// survivor acknowledged quiesce (G3) and every departed member is proven
// stopped or fenced (G4).
func (m *Machine) connectable(rec *proto.EpochRecord) bool {
	v := &m.view
	for _, s := range m.survivorsOf(rec) {
		if !v.acked(rec.Number, s.Ref()) && !mutation.On(mutation.ConnectEarly) {
			return false
		}
	}
	// Fence modes fence every change, not only those with departed
	// members: a survivor's request of the old epoch may still be in the
	// network after its operation ended and it acknowledged (the spin
	// model's finding F1, model/README.md).
	departed := m.departedOf(rec)
	if m.fences() && !v.fenced(rec.Number) && !(mutation.On(mutation.FenceOnlyDepartures) && len(departed) == 0) {
		return false
	}
	if m.leases() {
		for _, d := range departed {
			if v.left(d.Ref()) {
				continue
			}
			at, ok := m.goneAt[d.Ref()]
			if ok && mutation.On(mutation.TrustStoreExpiry) {
				continue
			}
			if !ok || m.now < at+m.wait(d) {
				return false
			}
		}
	}
	return true
}
