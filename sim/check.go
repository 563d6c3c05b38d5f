package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc/proto"
)

// ErrViolation is wrapped by every violation of a guarantee Run reports.
var ErrViolation = errors.New("sim: guarantee violated")

// Violation is a guarantee violated in a run: which, when, why, the seed
// and the last steps before it.
type Violation struct {
	Guarantee string
	At        time.Duration
	Detail    string
	Seed      int64
	Trace     string
}

func (v *Violation) Error() string {
	return fmt.Sprintf("%s violated at %v (seed %d): %s\nlast steps:\n%s", v.Guarantee, v.At, v.Seed, v.Detail, v.Trace)
}

// Unwrap makes errors.Is(v, ErrViolation) hold.
func (v *Violation) Unwrap() error { return ErrViolation }

// Check is a guarantee checked after every step of a run. Observe reads
// the records added to the history since its last call (each check keeps
// its own place) and returns a descriptive error at the first violation.
type Check interface {
	Name() string
	Observe(h *History) error
}

// DefaultChecks returns fresh instances of every check.
func DefaultChecks() []Check {
	return []Check{&G1{}, &G2{}, &G3{}, &G4{}, &G5{}, &G6{}, &NoStaleWrite{}}
}

// G1 (one authority): the epoch records written to the store rise
// strictly — each (number, state) after the one before, quiescing before
// connected — so each number is written quiescing at most once and
// connected at most once; a connected epoch after the first was quiescing
// first, with the same members.
type G1 struct {
	seen      int
	last      *proto.EpochRecord
	quiescing map[uint64]*proto.EpochRecord
}

func (*G1) Name() string { return "G1" }

func order(r *proto.EpochRecord) uint64 {
	o := r.Number * 2
	if r.State == proto.Connected {
		o++
	}
	return o
}

func (c *G1) Observe(h *History) error {
	for _, rec := range h.New(&c.seen) {
		if rec.Kind != HEpoch {
			continue
		}
		r := rec.Record
		if c.quiescing == nil {
			c.quiescing = map[uint64]*proto.EpochRecord{}
		}
		if c.last != nil && order(r) <= order(c.last) {
			return fmt.Errorf("epoch record %s written at rev %d after %s: numbers must rise strictly and each be decided once",
				fmtRecord(r), rec.Rev, fmtRecord(c.last))
		}
		switch r.State {
		case proto.Quiescing:
			c.quiescing[r.Number] = r
		case proto.Connected:
			q, ok := c.quiescing[r.Number]
			switch {
			case !ok && r.Number > 1:
				return fmt.Errorf("epoch %d written connected (rev %d) without having been quiescing", r.Number, rec.Rev)
			case ok && !proto.SameMembers(q.Members, r.Members):
				return fmt.Errorf("epoch %d connected (rev %d) as %s but was decided quiescing as %s", r.Number, rec.Rev, fmtRecord(r), fmtRecord(q))
			}
		default:
			return fmt.Errorf("epoch record with unknown state: %s", fmtRecord(r))
		}
		c.last = r
	}
	return nil
}

// G2 (no stale delivery): a message or request sent in epoch e is
// delivered only to a receiver connected in e — by the simulator's own
// record of connects and disconnects — and at most once.
type G2 struct {
	seen      int
	sent      map[uint64]Rec       // by message
	delivered map[uint64]Rec       // by message
	connected map[proto.Ref]uint64 // the epoch each incarnation is connected in
}

func (*G2) Name() string { return "G2" }

func (c *G2) Observe(h *History) error {
	if c.sent == nil {
		c.sent, c.delivered, c.connected = map[uint64]Rec{}, map[uint64]Rec{}, map[proto.Ref]uint64{}
	}
	for _, rec := range h.New(&c.seen) {
		switch rec.Kind {
		case HConnect:
			c.connected[rec.Ref] = rec.Epoch
		case HDisconnect:
			if c.connected[rec.Ref] == rec.Epoch {
				delete(c.connected, rec.Ref)
			}
		case HFence:
			delete(c.connected, rec.Ref)
		case HSend:
			c.sent[rec.Msg] = rec
		case HDeliver:
			s, ok := c.sent[rec.Msg]
			d, twice := c.delivered[rec.Msg]
			switch {
			case !ok:
				return fmt.Errorf("%v received message %d in epoch %d at %v: it was never sent", rec.Ref, rec.Msg, rec.Epoch, rec.At)
			case s.Epoch != rec.Epoch:
				return fmt.Errorf("message %d sent by %v in epoch %d at %v was delivered to %v in epoch %d at %v", rec.Msg, s.Ref, s.Epoch, s.At, rec.Ref, rec.Epoch, rec.At)
			case c.connected[rec.Ref] != rec.Epoch:
				return fmt.Errorf("message %d sent by %v in epoch %d at %v was delivered to %v at %v, which was not connected in that epoch (connected in %d)", rec.Msg, s.Ref, s.Epoch, s.At, rec.Ref, rec.At, c.connected[rec.Ref])
			case twice:
				return fmt.Errorf("message %d sent by %v in epoch %d at %v was delivered twice: to %v at %v and to %v at %v", rec.Msg, s.Ref, s.Epoch, s.At, d.Ref, d.At, rec.Ref, rec.At)
			}
			c.delivered[rec.Msg] = rec
		}
	}
	return nil
}

// G3 (quiesce barrier): at the instant epoch n becomes connected in the
// store, no member of n that was a member of an earlier connected epoch
// has an operation of an epoch before n in progress. "In progress" is the
// simulator's own record (begin/end/kill), not the machine's counters.
type G3 struct {
	seen      int
	running   map[uint64]Rec // by op id
	connected map[proto.Ref]bool
}

func (*G3) Name() string { return "G3" }

func (c *G3) Observe(h *History) error {
	if c.running == nil {
		c.running, c.connected = map[uint64]Rec{}, map[proto.Ref]bool{}
	}
	for _, rec := range h.New(&c.seen) {
		switch rec.Kind {
		case HBegin:
			c.running[rec.Op] = rec
		case HEnd, HKill:
			delete(c.running, rec.Op)
		case HEpoch:
			r := rec.Record
			if r.State != proto.Connected {
				continue
			}
			var bad []Rec
			for _, m := range r.Members {
				if !c.connected[m.Ref()] {
					continue
				}
				for _, o := range c.running {
					if o.Ref == m.Ref() && o.Epoch < r.Number {
						bad = append(bad, o)
					}
				}
			}
			if len(bad) > 0 {
				slices.SortFunc(bad, func(a, b Rec) int { return int(a.Op) - int(b.Op) })
				o := bad[0]
				return fmt.Errorf("epoch %d connected (rev %d) while its member %v still had operation %d of epoch %d in progress (begun at %v; %d such operations)",
					r.Number, rec.Rev, o.Ref, o.Op, o.Epoch, o.At, len(bad))
			}
			for _, m := range r.Members {
				c.connected[m.Ref()] = true
			}
		}
	}
	return nil
}

// G4 (departed domains are harmless): no I/O of epoch e, by any
// incarnation, happens after an epoch above e became connected in the
// store. This holds in lease and both modes, and in fence mode without a
// resource (an empty fence set fences nothing, so a departed member must
// be waited out by its lease: DESIGN §6). In fence mode with resources a
// departed member may still run after the next epoch connected — that is
// the point of fencing — and what it does is harmless because the
// resources refuse it: G5 checks that at the resources. Survivors cannot
// act in e late (G3: their operations of e ended before they
// acknowledged); a departed member that still acts is caught here.
type G4 struct {
	seen int
	connected
}

// connected tracks the highest epoch connected in the store, and when.
type connected struct {
	max         uint64
	connectedAt time.Duration
}

// see takes a history record: a connected epoch record above the highest
// raises it.
func (c *connected) see(rec Rec) {
	if rec.Kind == HEpoch && rec.Record.State == proto.Connected && rec.Record.Number > c.max {
		c.max, c.connectedAt = rec.Record.Number, rec.At
	}
}

func (*G4) Name() string { return "G4" }

func (c *G4) Observe(h *History) error {
	fenced := h.Mode == proto.ModeFence && h.Resources > 0
	for _, rec := range h.New(&c.seen) {
		c.see(rec)
		switch rec.Kind {
		case HIO:
			if rec.Epoch < c.max && !fenced {
				return fmt.Errorf("%v did I/O of epoch %d (op %d) at %v, after epoch %d connected at %v",
					rec.Ref, rec.Epoch, rec.Op, rec.At, c.max, c.connectedAt)
			}
		}
	}
	return nil
}

// G5 (resources refuse stale epochs), checked two ways at every
// resource — the simulated ones and the storage scenario's storage, whose
// applies come from its apply log:
//
//   - once a resource's fence of epoch f holds (HFenced: the guard's
//     OnFence, the apply log's fence lines), no write of an epoch below f
//     is applied there: its apply neither begins nor ends — a fence holds
//     only after it aborted the requests of older epochs it admitted and
//     their applies under way ended;
//   - in fence and both modes, no write of epoch e is applied at a
//     resource once an epoch above e became connected in the store: the
//     coordinator connects only once every resource acknowledged its
//     fence.
//
// Requests held in the network and released late, slow queues, paused
// and restarted resources all test it. (Lease mode makes no promise of the
// second kind: a request already in the network is what a lease cannot
// stop.)
type G5 struct {
	seen int
	connected
	fences map[string]Rec // by resource: the highest fence that held
}

func (*G5) Name() string { return "G5" }

func (c *G5) Observe(h *History) error {
	for _, rec := range h.New(&c.seen) {
		c.see(rec)
		switch rec.Kind {
		case HFenced:
			if c.fences == nil {
				c.fences = map[string]Rec{}
			}
			if rec.Epoch > c.fences[rec.Note].Epoch {
				c.fences[rec.Note] = rec
			}
		case HApply, HApplied:
			what := "began applying"
			if rec.Kind == HApplied {
				what = "was still applying"
			}
			if f, ok := c.fences[rec.Note]; ok && rec.Epoch < f.Epoch {
				return fmt.Errorf("resource %s %s write %d of %v's epoch %d at %v, after its fence of epoch %d held at %v",
					rec.Note, what, rec.Msg, rec.Ref, rec.Epoch, rec.At, f.Epoch, f.At)
			}
			if rec.Epoch < c.max && h.Mode.UsesFence() {
				return fmt.Errorf("resource %s %s write %d of %v's epoch %d at %v, after epoch %d connected at %v",
					rec.Note, what, rec.Msg, rec.Ref, rec.Epoch, rec.At, c.max, c.connectedAt)
			}
		}
	}
	return nil
}

// NoStaleWrite (the storage scenario, at the block level): once a write
// to a block is acknowledged to the client, no older write to that block
// is applied at the storage afterwards (HWritten: what the block holds
// after each write the storage applied, read back from its bytes), and
// the acknowledgements of a block's writes come in the order they were
// sent; the bytes a write leaves are one write's, for that block. A read
// returns a write at least as new as the one acknowledged when it was
// sent (a stale read is a stale write seen), and one that was sent to its
// block. The client keeps at most one write in flight per block, and
// writes to a block are numbered in the order they are sent.
type NoStaleWrite struct {
	seen  int
	acked map[int]Rec // by block: the last acknowledgement
}

func (*NoStaleWrite) Name() string { return "no-stale-write" }

func (c *NoStaleWrite) Observe(h *History) error {
	for _, rec := range h.New(&c.seen) {
		switch rec.Kind {
		case HAcked:
			if c.acked == nil {
				c.acked = map[int]Rec{}
			}
			if a, ok := c.acked[rec.Block]; ok && rec.Msg < a.Msg {
				return fmt.Errorf("write %d to block %d acknowledged at %v, after the newer write %d was at %v", rec.Msg, rec.Block, rec.At, a.Msg, a.At)
			}
			c.acked[rec.Block] = rec
		case HWritten:
			if rec.Note != storageName {
				return fmt.Errorf("the storage applied request %#x of %v's epoch %d at %v: %s", rec.Op, rec.Ref, rec.Epoch, rec.At, rec.Note)
			}
			if a, ok := c.acked[rec.Block]; ok && rec.Msg < a.Msg {
				return fmt.Errorf("stale write: the storage applied request %#x of %v's epoch %d at %v, putting write %d in block %d, after write %d to it was acknowledged at %v",
					rec.Op, rec.Ref, rec.Epoch, rec.At, rec.Msg, rec.Block, a.Msg, a.At)
			}
		case HRead:
			switch {
			case rec.Note != "":
				return fmt.Errorf("read %#x of block %d at %v: %s", rec.Op, rec.Block, rec.At, rec.Note)
			case rec.Msg < rec.Least:
				return fmt.Errorf("stale read: read %#x of block %d returned write %d at %v, older than write %d acknowledged before it was sent", rec.Op, rec.Block, rec.Msg, rec.At, rec.Least)
			}
		}
	}
	return nil
}

// G6 (self-fencing): no I/O under a lease at or after its nominal expiry
// in the store — the time the store processed its last keepalive plus the
// TTL — even if the store revoked it earlier.
type G6 struct {
	seen   int
	leases map[int64]Rec // last grant or keepalive
}

func (*G6) Name() string { return "G6" }

func (c *G6) Observe(h *History) error {
	if c.leases == nil {
		c.leases = map[int64]Rec{}
	}
	for _, rec := range h.New(&c.seen) {
		switch rec.Kind {
		case HGrant, HKeepAlive:
			c.leases[rec.Lease] = rec
		case HIO:
			ka, ok := c.leases[rec.Lease]
			if !ok {
				return fmt.Errorf("%v did I/O (op %d, epoch %d) at %v under lease %d, which the store never granted", rec.Ref, rec.Op, rec.Epoch, rec.At, rec.Lease)
			}
			if exp := ka.At + ka.TTL; rec.At >= exp {
				return fmt.Errorf("%v did I/O (op %d, epoch %d) at %v under lease %d, which nominally expired at %v (last keepalive processed at %v, TTL %v): %v late",
					rec.Ref, rec.Op, rec.Epoch, rec.At, rec.Lease, exp, ka.At, ka.TTL, rec.At-exp)
			}
		}
	}
	return nil
}

// checkL1 is checked at the end of a run, after the quiet period: the
// store's epoch record is connected, its members are exactly the domains
// that did not crash (each in its latest incarnation), and each of them
// has delivered that epoch.
func (w *World) checkL1() error {
	var rec *proto.EpochRecord
	if e := w.store.kvs[keys.Epoch(group)]; e != nil {
		if r, err := proto.DecodeEpoch(e.val); err == nil {
			rec = &r
		}
	}
	var why []string
	if rec == nil {
		why = append(why, "no epoch record was ever written")
	} else {
		if rec.State != proto.Connected {
			why = append(why, fmt.Sprintf("epoch %d is still quiescing", rec.Number))
		}
		for _, d := range w.domains {
			if d.dead {
				if m, ok := proto.Find(rec.Members, d.id); ok {
					why = append(why, fmt.Sprintf("crashed domain %v is still a member", m.Ref()))
				}
				continue
			}
			ms := d.ms
			switch {
			case ms == nil:
				why = append(why, fmt.Sprintf("domain %s never registered", d.id))
			case ms.stopped:
				why = append(why, fmt.Sprintf("domain %s's latest incarnation %v stopped (%v) and it has not joined again", d.id, ms.ref(), ms.drv.Err()))
			case !proto.Contains(rec.Members, ms.ref()):
				why = append(why, fmt.Sprintf("live domain %v is not a member (phase %v)", ms.ref(), ms.drv.Phase()))
			case ms.delivered != rec.Number:
				why = append(why, fmt.Sprintf("member %v has not delivered epoch %d (delivered %d, phase %v)", ms.ref(), rec.Number, ms.delivered, ms.drv.Phase()))
			}
		}
		for _, m := range rec.Members {
			idx := slices.IndexFunc(w.domains, func(d *Domain) bool { return d.id == m.ID })
			if idx < 0 || w.domains[idx].ms == nil || w.domains[idx].ms.inc != m.Incarnation {
				why = append(why, fmt.Sprintf("member %v is not a domain's latest incarnation", m.Ref()))
			}
		}
	}
	if w.client != nil {
		// The storage scenario: with faults stopped, every request of the
		// disk's client completes (and the disk has none left, abandoned
		// ones included).
		if u := w.client.unfinished(); len(u) > 0 {
			why = append(why, fmt.Sprintf("%d of the client's requests have no outcome: %s", len(u), strings.Join(u, ", ")))
		}
		if !w.client.up {
			why = append(why, "the client is not connected to the disk")
		}
		if w.disk.dk == nil {
			why = append(why, "the disk's process is down")
		} else if s := w.disk.dk.Stats(); s.Pending > 0 {
			why = append(why, fmt.Sprintf("the disk has %d requests without an outcome (path %q, epoch %d, connected %v)", s.Pending, s.Path, s.Epoch, s.Connected))
		}
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("no progress within the bound: after %v of faults and %v quiet (bound %v): %s\nstore: %s\n%s",
		w.cfg.Duration, w.cfg.Quiet, w.cfg.Bound(), strings.Join(why, "; "), fmtRecord(rec), w.describe())
}

// describe says where every node stands, for an L1 failure.
func (w *World) describe() string {
	var b strings.Builder
	live := w.store.sortedKeys(keys.Groups(), "")
	fmt.Fprintf(&b, "store keys at rev %d: %s\n", w.store.rev, strings.Join(live, " "))
	var el []string
	for _, k := range w.store.sortedKeys(keys.Election(), "") {
		e := w.store.kvs[k]
		el = append(el, fmt.Sprintf("%s=%s(create %d, lease %d)", k, e.val, e.create, e.lease))
	}
	fmt.Fprintf(&b, "election keys: %s\n", strings.Join(el, " "))
	for _, c := range w.coords {
		fmt.Fprintf(&b, "%s: down=%v backlog=%d %s\n", c.n.name, c.n.down, len(c.n.backlog), c.describe())
	}
	for _, d := range w.domains {
		fmt.Fprintf(&b, "%s: dead=%v", d.id, d.dead)
		if ms := d.ms; ms != nil {
			var cur uint64
			if ep := ms.drv.Last(); ep != nil {
				cur = ep.Number()
			}
			fmt.Fprintf(&b, " %v phase=%v last=%d delivered=%d stopped=%v ops=%d joining=%v", ms.ref(), ms.drv.Phase(), cur, ms.delivered, ms.stopped, len(d.ops), d.joining)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// checkBounded is checked at the end of a run, after L1: the store holds
// nothing a connected epoch made obsolete — no acks, fault reports or
// fence acks of an epoch before the connected one, no leave marker but a
// live incarnation's — so that a store under churn stays bounded
// (DESIGN §9). The coordinator's cleanups have had the quiet period.
func (w *World) checkBounded() error {
	var rec *proto.EpochRecord
	if e := w.store.kvs[keys.Epoch(group)]; e != nil {
		if r, err := proto.DecodeEpoch(e.val); err == nil {
			rec = &r
		}
	}
	if rec == nil || rec.State != proto.Connected {
		return nil // L1 reports it
	}
	var garbage []string
	for _, k := range w.store.sortedKeys(keys.Group(group), "") {
		p, ok := keys.Parse(k)
		if !ok {
			continue
		}
		switch p.Kind {
		case proto.KindAcks, proto.KindFaults, proto.KindFenceAcks:
			if p.Epoch < rec.Number {
				garbage = append(garbage, k)
			}
		case proto.KindLeft:
			var l proto.Left
			_ = json.Unmarshal(w.store.kvs[k].val, &l)
			m := w.store.kvs[keys.Member(group, p.Name)]
			var live proto.Member
			if m != nil {
				_ = json.Unmarshal(m.val, &live)
			}
			if m == nil || live.Incarnation != l.Incarnation {
				garbage = append(garbage, k)
			}
		}
	}
	if len(garbage) == 0 {
		return nil
	}
	return fmt.Errorf("the store still holds %d obsolete keys after a quiet period of %v, with epoch %d connected: %s",
		len(garbage), w.cfg.Quiet, rec.Number, strings.Join(garbage, " "))
}
