package coordinator

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/internal/scripttest"
	"github.com/idc-dev/idc/proto"
)

// TestScripts runs the interaction scripts in testdata/*.txt, in the manner
// of etcd's raft library. Each file tells one story about one group; its
// header comment says which transition and guarantee it shows. Regenerate
// the expectations with
//
//	go test ./core/coordinator/ -run TestScripts -rewrite
//
// and read the diff: every line is the machine's real output.
//
// The test plays the store: it keeps a View, edits it, and hands a copy to
// the machine only on update (and the commands that report an action's
// outcome), so edits are invisible to the machine until then. Members are
// written id/incarnation; a member's TTL and priority are remembered from
// the live command that created it (default ttl=2s prio=0).
//
// Store edits (print nothing):
//
//	live a/1 b/2=(ttl=3s,prio=2) [ttl=2s] [prio=0]   member records present
//	gone b/2                          member record vanished (lease gone)
//	record n=3 state=connected|quiescing members=a/1,b/2 [prev=2:a/1,b/2,c/3] [excluded=c/3] rev=10
//	                                  the epoch record the store holds (written by someone else)
//	delete-record                     the epoch key is deleted (revision 0)
//	ack e=4 b/2 ...                   quiesce acknowledgements
//	fault e=3 a/1->c[/3] ...          fault reports: reporter/incarnation -> suspect[/incarnation]
//	                                  (default: the suspect's incarnation in the record)
//	left b/2                          graceful-leave marker
//	resource r1 ...                   guarded resources registered
//	config [mode=M] [quiesce=DUR] [resources=r1,r2] [delete]   the group's configuration (proto.GroupConfig)
//	fenceack e=4 r1 ...               fence acknowledgements
//
// Machine events (print the actions drained from Ready, one a line, or
// "no action"):
//
//	new [group=g] [mode=lease] [quiesce=3s] [rho=0.01] [margin=500ms]
//	                                  a fresh machine (the store is kept: a takeover)
//	update [now=D]                    hand the view over
//	tick now=D
//	write-ok [rev=R] [now=D]          the store applied the last WriteEpoch (with
//	                                  its cleanup) at revision R (default +1); then update
//	write-failed [now=D]
//	revoked b/2 at=D                  the store answered the revocation at D
//	revoke-failed b/2 [now=D]
//	cleanup-failed [now=D]            the last Cleanup failed (the driver
//	                                  otherwise carries each out at once and
//	                                  reports CleanedUp)
//	deadline                          prints NextDeadline
//	timing                            prints what the machine remembers (white box)
//
// Besides comparing output the driver checks, on every action, what must
// hold whatever the script: each WriteEpoch is conditioned on the revision
// of the view the machine was last given (G1 CAS); a quiescing epoch's
// number is above every number the store ever held and a connect names the
// record it connects (G1); no write while another is in flight; no member
// is an incarnation ever listed Excluded; a connect has every survivor's
// ack of its number (G3), and every departed member either left, or was
// seen gone by this machine at least TTL·(1+ρ)+margin ago (lease modes), and
// every resource's fence ack of its number (fence modes) (G4); a Revoke
// names a departed or excluded member of the record the machine was given.
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		d := &driver{}
		datadriven.RunTest(t, path, d.run)
	})
}

type driver struct {
	cfg   Config
	m     *Machine
	view  View                       // the store as the test holds it
	clock time.Duration              // the latest time handed to the machine
	reg   map[proto.Ref]proto.Member // every member the script created
	lease int64                      // the last lease ID handed out

	// in-flight write, and store history for the oracles
	last         *WriteEpoch
	cleanup      *Cleanup // to carry out after the actions are printed
	highest      uint64
	everExcluded proto.RefSet
	// seenGone: earliest time this machine was shown r gone (a view
	// without r, or a revocation answer): the lower bound of its wait.
	seenGone map[proto.Ref]time.Duration
}

func (d *driver) run(t *testing.T, td *datadriven.TestData) string {
	if td.Cmd != "new" && d.m == nil {
		td.Fatalf(t, "%s before new", td.Cmd)
	}
	var out []string
	machine := true
	switch td.Cmd {
	case "new":
		d.cfg = Config{Group: "g", Mode: proto.ModeLease, QuiesceTimeout: 3 * time.Second, Rho: 0.01, Margin: 500 * time.Millisecond}
		td.MaybeScanArgs(t, "group", &d.cfg.Group)
		if td.HasArg("mode") {
			var s string
			td.ScanArgs(t, "mode", &s)
			d.cfg.Mode = proto.Mode(s)
		}
		d.cfg.QuiesceTimeout = scripttest.Dur(t, td, "quiesce", d.cfg.QuiesceTimeout)
		d.cfg.Margin = scripttest.Dur(t, td, "margin", d.cfg.Margin)
		if td.HasArg("rho") {
			var s string
			td.ScanArgs(t, "rho", &s)
			rho, err := strconv.ParseFloat(s, 64)
			if err != nil {
				td.Fatalf(t, "rho: %v", err)
			}
			d.cfg.Rho = rho
		}
		if err := d.cfg.Validate(); err != nil {
			td.Fatalf(t, "%v", err)
		}
		if d.reg == nil {
			d.view = NewView(d.cfg.Group)
			d.reg = map[proto.Ref]proto.Member{}
			d.everExcluded = proto.RefSet{}
		}
		d.m = New(d.cfg)
		d.last = nil
		d.seenGone = map[proto.Ref]time.Duration{}
		out = append(out, fmt.Sprintf("coordinator of %s: mode=%s quiesce=%v; lease wait for ttl=2s: %v",
			d.cfg.Group, d.cfg.Mode, d.cfg.QuiesceTimeout, d.wait(proto.Member{TTL: 2 * time.Second})))
	case "live":
		machine = false
		ttl := scripttest.Dur(t, td, "ttl", 2*time.Second)
		prio := 0
		td.MaybeScanArgs(t, "prio", &prio)
		for _, a := range td.CmdArgs {
			if !strings.Contains(a.Key, "/") {
				continue
			}
			mem := proto.Member{TTL: ttl, Priority: prio}
			mem.ID, mem.Incarnation = parseRef(t, td, a.Key)
			for _, kv := range a.Vals {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "ttl":
					dur, err := time.ParseDuration(v)
					if err != nil {
						td.Fatalf(t, "%s: %v", kv, err)
					}
					mem.TTL = dur
				case "prio":
					p, err := strconv.Atoi(v)
					if err != nil {
						td.Fatalf(t, "%s: %v", kv, err)
					}
					mem.Priority = p
				default:
					td.Fatalf(t, "%s: unknown member attribute %q", a.Key, kv)
				}
			}
			if old, ok := d.view.Live[mem.ID]; ok {
				td.Fatalf(t, "%s: the record of %s/%d is present (records are created only if absent)", a.Key, old.ID, old.Incarnation)
			}
			if _, ok := d.reg[mem.Ref()]; ok {
				td.Fatalf(t, "%s: an incarnation lives once", a.Key)
			}
			d.lease++
			mem.Lease = d.lease
			d.reg[mem.Ref()] = mem
			d.view.Live[mem.ID] = mem
		}
	case "gone":
		machine = false
		for _, a := range td.CmdArgs {
			id, inc := parseRef(t, td, a.Key)
			if lm, ok := d.view.Live[id]; !ok || lm.Incarnation != inc {
				td.Fatalf(t, "%s is not live", a.Key)
			}
			delete(d.view.Live, id)
		}
	case "record":
		machine = false
		rec := &proto.EpochRecord{Group: d.cfg.Group, Number: scripttest.Uint(t, td, "n"), Mode: d.cfg.Mode}
		var state string
		td.ScanArgs(t, "state", &state)
		rec.State = proto.State(state)
		if rec.State != proto.Quiescing && rec.State != proto.Connected {
			td.Fatalf(t, "bad state %q", state)
		}
		rec.Members = scripttest.MembersArg(t, td, "members", d.complete)
		if td.HasArg("prev") {
			var s string
			td.ScanArgs(t, "prev", &s)
			num, ms, ok := strings.Cut(s, ":")
			n, err := strconv.ParseUint(num, 10, 64)
			if !ok || err != nil {
				td.Fatalf(t, "prev=%q: want N:a/1,b/2", s)
			}
			rec.PrevNumber, rec.Prev = n, scripttest.Members(t, td, ms, d.complete)
		}
		rec.Excluded = scripttest.MembersArg(t, td, "excluded", d.complete)
		rev := int64(scripttest.Uint(t, td, "rev"))
		d.setRecord(rec, rev)
		d.last = nil // a write in flight would now fail its compare
	case "delete-record":
		machine = false
		d.view.Epoch, d.view.EpochRevision = nil, 0
		d.last = nil
	case "ack":
		machine = false
		e := scripttest.Uint(t, td, "e")
		for _, a := range td.CmdArgs {
			if a.Key == "e" {
				continue
			}
			id, inc := parseRef(t, td, a.Key)
			if d.view.Acks[e] == nil {
				d.view.Acks[e] = map[string]uint64{}
			}
			d.view.Acks[e][id] = inc
		}
	case "fault":
		machine = false
		e := scripttest.Uint(t, td, "e")
		for _, a := range td.CmdArgs {
			if a.Key == "e" {
				continue
			}
			rep, sus, ok := strings.Cut(a.Key, "->")
			if !ok {
				td.Fatalf(t, "%s: want reporter/inc->suspect", a.Key)
			}
			id, inc := parseRef(t, td, rep)
			// The suspect's incarnation: as written (c/3), or that of c in
			// the epoch record the store holds, as a member would name it.
			var susInc uint64
			if strings.Contains(sus, "/") {
				sus, susInc = parseRef(t, td, sus)
			} else if d.view.Epoch != nil {
				if m, ok := proto.Find(d.view.Epoch.Members, sus); ok {
					susInc = m.Incarnation
				}
			}
			d.view.Faults = append(d.view.Faults, proto.FaultReport{Epoch: e, Reporter: id, ReporterIncarnation: inc, Suspect: sus, SuspectIncarnation: susInc})
		}
	case "left":
		machine = false
		for _, a := range td.CmdArgs {
			id, inc := parseRef(t, td, a.Key)
			d.view.Left[id] = inc
		}
	case "config":
		machine = false
		var c proto.GroupConfig
		if td.HasArg("mode") {
			var s string
			td.ScanArgs(t, "mode", &s)
			c.Mode = proto.Mode(s)
		}
		c.QuiesceTimeoutMillis = scripttest.Dur(t, td, "quiesce", 0).Milliseconds()
		if td.HasArg("resources") {
			var s string
			td.ScanArgs(t, "resources", &s)
			c.Resources = strings.Split(s, ",")
		}
		raw, _ := json.Marshal(c)
		d.view.Apply(proto.Parsed{Group: d.cfg.Group, Kind: proto.KindConfig}, raw, 0, td.HasArg("delete"))
	case "resource":
		machine = false
		for _, a := range td.CmdArgs {
			d.view.Resources = append(d.view.Resources, a.Key)
		}
		slices.Sort(d.view.Resources)
		d.view.expect()
	case "fenceack":
		machine = false
		e := scripttest.Uint(t, td, "e")
		for _, a := range td.CmdArgs {
			if a.Key == "e" {
				continue
			}
			if d.view.FenceAcks[e] == nil {
				d.view.FenceAcks[e] = map[string]bool{}
			}
			d.view.FenceAcks[e][a.Key] = true
		}
	case "update":
		d.update(d.nowArg(t, td, "now"))
	case "tick":
		now := scripttest.Dur(t, td, "now", -1)
		d.advance(now)
		d.m.Tick(now)
	case "write-ok":
		if d.last == nil {
			td.Fatalf(t, "write-ok with no write in flight")
		}
		w := *d.last
		d.last = nil
		if w.ExpectRevision != d.view.EpochRevision {
			td.Fatalf(t, "write-ok: the compare would fail (expect-rev=%d, the store is at %d); use write-failed", w.ExpectRevision, d.view.EpochRevision)
		}
		rev := d.view.EpochRevision + 1
		if td.HasArg("rev") {
			rev = int64(scripttest.Uint(t, td, "rev"))
		}
		if rev <= d.view.EpochRevision {
			td.Fatalf(t, "write-ok rev=%d: revisions rise (store at %d)", rev, d.view.EpochRevision)
		}
		rec := w.Record
		d.setRecord(&rec, rev)
		d.update(d.nowArg(t, td, "now"))
	case "write-failed":
		if d.last == nil {
			td.Fatalf(t, "write-failed with no write in flight")
		}
		d.last = nil
		now := d.nowArg(t, td, "now")
		d.advance(now)
		d.m.WriteFailed(now)
	case "revoked":
		at := scripttest.Dur(t, td, "at", -1)
		r := d.refArg(t, td)
		// The store answered: the lease and the records under it are gone.
		if lm, ok := d.view.Live[r.ID]; ok && lm.Incarnation == r.Incarnation {
			delete(d.view.Live, r.ID)
		}
		d.markSeen(r, at)
		d.advance(at)
		d.m.Revoked(r, at)
	case "cleanup-failed":
		// Takes back the cleanup the driver carried out, as if the store
		// had refused it (the script's view is not restored).
		now := d.nowArg(t, td, "now")
		d.advance(now)
		d.m.CleanupFailed(now)
	case "revoke-failed":
		now := d.nowArg(t, td, "now")
		d.advance(now)
		d.m.RevokeFailed(d.refArg(t, td), now)
	case "deadline":
		machine = false
		if dl, ok := d.m.NextDeadline(); ok {
			out = append(out, fmt.Sprintf("deadline %v", dl))
		} else {
			out = append(out, "deadline none")
		}
	case "timing":
		machine = false
		out = append(out, d.timing())
	default:
		td.Fatalf(t, "unknown command %q", td.Cmd)
	}

	actions := d.m.Ready()
	for _, a := range actions {
		out = append(out, d.action(t, td, a))
	}
	// The store carries out a cleanup at once (the script's view changes
	// as the watch would show it) and the machine is told.
	for d.cleanup != nil {
		c := d.cleanup
		d.cleanup = nil
		for e := range d.view.Acks {
			if e < c.Before {
				delete(d.view.Acks, e)
			}
		}
		d.view.Faults = slices.DeleteFunc(d.view.Faults, func(f proto.FaultReport) bool { return f.Epoch < c.Before })
		for e := range d.view.FenceAcks {
			if e < c.Before {
				delete(d.view.FenceAcks, e)
			}
		}
		for id := range c.Left {
			delete(d.view.Left, id)
		}
		d.m.CleanedUp(d.clock)
		more := d.m.Ready()
		for _, a := range more {
			out = append(out, d.action(t, td, a))
		}
		actions = append(actions, more...)
	}
	if len(d.m.Ready()) != 0 {
		t.Errorf("%s: Ready did not clear the actions", td.Pos)
	}
	if !machine && len(actions) > 0 {
		t.Errorf("%s: actions without an event", td.Pos)
	}
	if machine && len(actions) == 0 && td.Cmd != "new" {
		out = append(out, "no action")
	}
	return strings.Join(out, "\n")
}

// update hands the machine a copy of the store's view.
func (d *driver) update(now time.Duration) {
	d.advance(now)
	v := copyView(d.view)
	for r := range d.reg {
		if !v.live(r) {
			d.markSeen(r, now)
		}
	}
	d.m.Update(v, now)
}

func (d *driver) markSeen(r proto.Ref, at time.Duration) {
	if old, ok := d.seenGone[r]; !ok || at < old {
		d.seenGone[r] = at
	}
}

func (d *driver) advance(now time.Duration) {
	d.clock = max(d.clock, now)
}

func (d *driver) setRecord(rec *proto.EpochRecord, rev int64) {
	d.view.Epoch, d.view.EpochRevision = rec, rev
	d.highest = max(d.highest, rec.Number)
	for _, x := range rec.Excluded {
		d.everExcluded[x.Ref()] = struct{}{}
	}
}

func (d *driver) wait(mem proto.Member) time.Duration {
	return lease.Config{TTL: mem.TTL, Rho: d.cfg.Rho, Margin: d.cfg.Margin}.Wait()
}

// action renders a and checks the guarantees that must hold when it is
// emitted.
func (d *driver) action(t *testing.T, td *datadriven.TestData, a Action) string {
	given := d.m.View() // the view the decision was based on
	bad := func(format string, args ...any) {
		t.Errorf("%s: VIOLATION: "+format, append([]any{td.Pos}, args...)...)
	}
	switch a := a.(type) {
	case WriteEpoch:
		rec := a.Record
		if d.last != nil {
			bad("a second write while %s is in flight", fmtWrite(*d.last))
		}
		w := a
		d.last = &w
		if a.ExpectRevision != given.EpochRevision {
			bad("G1: expect-rev=%d but the decision was based on revision %d", a.ExpectRevision, given.EpochRevision)
		}
		mode := d.cfg.Mode
		if given.Config.Mode != "" {
			mode = given.Config.Mode
		}
		if rec.Group != d.cfg.Group || rec.Mode != mode {
			bad("record of group %q mode %q", rec.Group, rec.Mode)
		}
		for _, mem := range rec.Members {
			if d.everExcluded.Has(mem.Ref()) {
				bad("readmits excluded %s/%d", mem.ID, mem.Incarnation)
			}
		}
		cur := given.Epoch
		switch {
		case rec.State == proto.Quiescing:
			if rec.Number <= d.highest {
				bad("G1: decides epoch %d, the store held %d", rec.Number, d.highest)
			}
		case cur == nil:
			if rec.Number != 1 || d.highest != 0 || len(rec.Prev) != 0 {
				bad("G1: forms epoch %d (store held %d)", rec.Number, d.highest)
			}
		default:
			if cur.State != proto.Quiescing || cur.Number != rec.Number || !proto.SameMembers(cur.Members, rec.Members) || rec.Number < d.highest {
				bad("G1: connect of %d does not follow quiescing %d (store held %d)", rec.Number, cur.Number, d.highest)
			}
			for _, s := range cur.Survivors() {
				if !given.acked(cur.Number, s.Ref()) {
					bad("G3: connects %d without %s/%d's ack", cur.Number, s.ID, s.Incarnation)
				}
			}
			departed := cur.Departed()
			if mode.UsesFence() { // every change (model finding F1)
				for _, r := range append(slices.Clone(given.Resources), given.Config.Resources...) {
					if !given.FenceAcks[cur.Number][r] {
						bad("G4: connects %d without %s's fence ack", cur.Number, r)
					}
				}
			}
			if mode.UsesLease() || mode.UsesFence() && len(given.Resources)+len(given.Config.Resources) == 0 {
				for _, dep := range departed {
					if given.left(dep.Ref()) {
						continue
					}
					at, ok := d.seenGone[dep.Ref()]
					if !ok || d.clock < at+d.wait(dep) {
						bad("G4: connects %d at %v, %s/%d seen gone at %v (ok=%v), wait %v", cur.Number, d.clock, dep.ID, dep.Incarnation, at, ok, d.wait(dep))
					}
				}
			}
		}
		return fmtWrite(a)
	case Cleanup:
		rec := given.Epoch
		if rec == nil || rec.State != proto.Connected || a.Before != rec.Number {
			bad("cleanup before %d, the record given is %v", a.Before, rec)
		}
		for id := range a.Left {
			r := proto.Ref{ID: id, Incarnation: given.Left[id]}
			if given.live(r) || rec != nil && proto.Contains(rec.Members, r) {
				bad("cleanup deletes the leave marker of %s/%d, live or a member", r.ID, r.Incarnation)
			}
		}
		d.cleanup = &a
		out := fmt.Sprintf("Cleanup before:%d", a.Before)
		if len(a.Left) > 0 {
			out += " left:" + strings.Join(slices.Sorted(maps.Keys(a.Left)), "+")
		}
		return out
	case Revoke:
		r := a.Member.Ref()
		rec := given.Epoch
		if rec == nil || !proto.Contains(rec.Departed(), r) && !proto.Contains(rec.Excluded, r) {
			bad("revokes %s/%d, not departed or excluded in the record it was given", r.ID, r.Incarnation)
		}
		if !given.live(r) {
			bad("revokes %s/%d, not live", r.ID, r.Incarnation)
		}
		return fmt.Sprintf("Revoke %s/%d", r.ID, r.Incarnation)
	}
	t.Errorf("%s: unknown action %T", td.Pos, a)
	return fmt.Sprintf("%#v", a)
}

func fmtWrite(w WriteEpoch) string {
	r := w.Record
	s := fmt.Sprintf("WriteEpoch n=%d %s members=%s", r.Number, r.State, scripttest.FmtMembers(r.Members))
	if r.PrevNumber != 0 || len(r.Prev) != 0 {
		s += fmt.Sprintf(" prev=%d:%s", r.PrevNumber, scripttest.FmtMembers(r.Prev))
	}
	if len(r.Excluded) != 0 {
		s += " excluded=" + scripttest.FmtMembers(r.Excluded)
	}
	s += fmt.Sprintf(" expect-rev=%d", w.ExpectRevision)
	return s + fmt.Sprintf(" reason=%q", r.Reason)
}

func (d *driver) timing() string {
	m := d.m
	var gone []string
	for _, r := range slices.SortedFunc(maps.Keys(m.goneAt), func(a, b proto.Ref) int {
		return strings.Compare(fmt.Sprint(a.ID, a.Incarnation), fmt.Sprint(b.ID, b.Incarnation))
	}) {
		gone = append(gone, fmt.Sprintf("%s/%d@%v", r.ID, r.Incarnation, m.goneAt[r]))
	}
	g := "none"
	if len(gone) > 0 {
		g = strings.Join(gone, ",")
	}
	var rv []string
	for r, ok := range m.revoking {
		if ok {
			rv = append(rv, fmt.Sprintf("%s/%d", r.ID, r.Incarnation))
		}
	}
	slices.Sort(rv)
	rs := "none"
	if len(rv) > 0 {
		rs = strings.Join(rv, ",")
	}
	return fmt.Sprintf("now=%v quiescing=%d@%v gone=%s revoking=%s", m.now, m.quiescing, m.quiescingAt, g, rs)
}

func copyView(v View) View {
	c := v
	if v.Epoch != nil {
		rec := *v.Epoch
		c.Epoch = &rec
	}
	c.Live = maps.Clone(v.Live)
	c.Acks = map[uint64]map[string]uint64{}
	for e, m := range v.Acks {
		c.Acks[e] = maps.Clone(m)
	}
	c.Faults = slices.Clone(v.Faults)
	c.Left = maps.Clone(v.Left)
	c.Resources = slices.Clone(v.Resources)
	c.Expected = slices.Clone(v.Expected)
	c.FenceAcks = map[uint64]map[string]bool{}
	for e, m := range v.FenceAcks {
		c.FenceAcks[e] = maps.Clone(m)
	}
	return c
}

func (d *driver) nowArg(t *testing.T, td *datadriven.TestData, key string) time.Duration {
	return scripttest.Dur(t, td, key, d.clock)
}

func (d *driver) refArg(t *testing.T, td *datadriven.TestData) proto.Ref {
	for _, a := range td.CmdArgs {
		if strings.Contains(a.Key, "/") {
			id, inc := parseRef(t, td, a.Key)
			return proto.Ref{ID: id, Incarnation: inc}
		}
	}
	td.Fatalf(t, "%s: want a member id/incarnation", td.Cmd)
	return proto.Ref{}
}

// parseRef reads id/incarnation.
func parseRef(t *testing.T, td *datadriven.TestData, s string) (string, uint64) {
	r := scripttest.Ref(t, td, s)
	return r.ID, r.Incarnation
}

// complete fills in a member the script names: TTL and priority from the
// live command that created it (default ttl=2s).
func (d *driver) complete(r proto.Ref) proto.Member {
	if mem, ok := d.reg[r]; ok {
		return mem
	}
	return proto.Member{ID: r.ID, Incarnation: r.Incarnation, TTL: 2 * time.Second}
}
