package member

import (
	"errors"
	"fmt"
	"math/rand/v2"
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
// of etcd's raft library. Each file tells one story; its header comment says
// which guarantee it shows. Regenerate expectations with
//
//	go test ./core/member/ -run TestScripts -rewrite
//
// and read the diff: every line is the machine's real output.
//
// Commands (each prints the actions drained from Ready, one a line, then a
// status line "> phase current=N acked=N ops=E:N,..."):
//
//	new [group=g] [id=b] [inc=2] [ttl=2s] [rho=0] [margin=0s]   (defaults shown)
//	renewed sent=DUR            (also prints the lease deadline)
//	observe n=N state=quiescing|connected members=a/1,b/2 [prev=N:a/1,...] [excluded=c/3,...] [group=h]
//	begin e=N                   (prints "ok" or "err is=KIND,...: TEXT")
//	end e=N
//	tick now=DUR
//	leave
//	lease-lost
//	status                      (prints err and lease deadline as well)
//
// Besides comparing output, the driver checks after every command that:
// no action is emitted once the machine is fenced or left; every WriteAck e
// is emitted with no operation of an epoch before e in flight (G3); Leave is
// emitted with no operation in flight; every Fence error wraps
// proto.ErrFenced and is what Err returns; Connect names this member.
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		d := &driver{}
		datadriven.RunTest(t, path, d.run)
	})
}

type driver struct {
	m      *Machine
	cfg    Config
	epochs map[uint64]bool // every epoch an op was begun in
}

func (d *driver) run(t *testing.T, td *datadriven.TestData) string {
	if td.Cmd != "new" && d.m == nil {
		td.Fatalf(t, "%s before new", td.Cmd)
	}
	var out []string
	wasStopped := d.m != nil && d.m.stopped()
	switch td.Cmd {
	case "new":
		d.cfg = Config{Group: "g", ID: "b", Incarnation: 2, Lease: lease.Config{TTL: 2 * time.Second}}
		td.MaybeScanArgs(t, "group", &d.cfg.Group)
		td.MaybeScanArgs(t, "id", &d.cfg.ID)
		td.MaybeScanArgs(t, "inc", &d.cfg.Incarnation)
		d.cfg.Lease.TTL = scripttest.Dur(t, td, "ttl", d.cfg.Lease.TTL)
		d.cfg.Lease.Margin = scripttest.Dur(t, td, "margin", 0)
		if td.HasArg("rho") {
			var s string
			td.ScanArgs(t, "rho", &s)
			rho, err := strconv.ParseFloat(s, 64)
			if err != nil {
				td.Fatalf(t, "rho: %v", err)
			}
			d.cfg.Lease.Rho = rho
		}
		if err := d.cfg.Lease.Validate(); err != nil {
			td.Fatalf(t, "%v", err)
		}
		d.m = New(d.cfg)
		d.epochs = map[uint64]bool{}
		out = append(out, fmt.Sprintf("member %s/%d of %s; lease valid %v after each answered send",
			d.cfg.ID, d.cfg.Incarnation, d.cfg.Group, d.cfg.Lease.Valid()))
	case "renewed":
		d.m.Renewed(scripttest.Dur(t, td, "sent", -1))
	case "observe":
		d.m.Observe(d.record(t, td))
	case "begin":
		e := scripttest.Uint(t, td, "e")
		err := d.m.Begin(e)
		if err == nil {
			d.epochs[e] = true
			out = append(out, "ok")
		} else {
			out = append(out, fmt.Sprintf("err is=%s: %v", kinds(err), err))
		}
	case "end":
		e := scripttest.Uint(t, td, "e")
		func() {
			defer func() {
				if r := recover(); r != nil {
					td.Fatalf(t, "end e=%d: panic: %v", e, r)
				}
			}()
			d.m.End(e)
		}()
	case "tick":
		d.m.Tick(scripttest.Dur(t, td, "now", -1))
	case "leave":
		d.m.Leave()
	case "lease-lost":
		d.m.LeaseLost()
	case "status":
		if err := d.m.Err(); err != nil {
			out = append(out, fmt.Sprintf("err is=%s: %v", kinds(err), err))
		} else {
			out = append(out, "err none")
		}
		cur, ms := d.m.Current()
		out = append(out, fmt.Sprintf("current e=%d members=%s", cur, scripttest.FmtMembers(ms)))
	default:
		td.Fatalf(t, "unknown command %q", td.Cmd)
	}

	actions := d.m.Ready()
	if wasStopped && len(actions) > 0 {
		t.Errorf("%s: actions %v after the machine stopped", td.Pos, actions)
	}
	for _, a := range actions {
		out = append(out, d.fmtAction(t, td, a))
	}
	if len(d.m.Ready()) != 0 {
		t.Errorf("%s: Ready did not clear the actions", td.Pos)
	}
	if td.Cmd == "renewed" || td.Cmd == "status" {
		if dl, ok := d.m.LeaseDeadline(); ok {
			out = append(out, fmt.Sprintf("lease deadline %v", dl))
		} else {
			out = append(out, "lease deadline none (never answered)")
		}
	}
	out = append(out, d.status())
	return strings.Join(out, "\n") + "\n"
}

// fmtAction renders a and checks the invariants that hold when it is
// emitted (the state after the command is the state at emission: one
// command is one event, and no event both emits and changes ops after).
func (d *driver) fmtAction(t *testing.T, td *datadriven.TestData, a Action) string {
	switch a := a.(type) {
	case Connect:
		if !proto.Contains(a.Members, proto.Ref{ID: d.cfg.ID, Incarnation: d.cfg.Incarnation}) {
			t.Errorf("%s: %+v does not name this member", td.Pos, a)
		}
		return fmt.Sprintf("Connect e=%d members=%s", a.Epoch, scripttest.FmtMembers(a.Members))
	case Disconnect:
		return fmt.Sprintf("Disconnect e=%d", a.Epoch)
	case WriteAck:
		if n := d.m.InFlightBefore(a.Epoch); n != 0 {
			t.Errorf("%s: G3: WriteAck e=%d with %d ops of earlier epochs in flight", td.Pos, a.Epoch, n)
		}
		return fmt.Sprintf("WriteAck e=%d", a.Epoch)
	case Fence:
		if !errors.Is(a.Err, proto.ErrFenced) {
			t.Errorf("%s: Fence error %v does not wrap ErrFenced", td.Pos, a.Err)
		}
		if d.m.Phase() != Fenced || d.m.Err() != a.Err {
			t.Errorf("%s: Fence emitted but phase %v err %v", td.Pos, d.m.Phase(), d.m.Err())
		}
		return fmt.Sprintf("Fence is=%s: %v", kinds(a.Err), a.Err)
	case Leave:
		if n := d.inFlight(); n != 0 {
			t.Errorf("%s: Leave with %d ops in flight", td.Pos, n)
		}
		if d.m.Phase() != Left || !errors.Is(d.m.Err(), proto.ErrLeft) {
			t.Errorf("%s: Leave emitted but phase %v err %v", td.Pos, d.m.Phase(), d.m.Err())
		}
		return "Leave"
	}
	t.Errorf("%s: unknown action %T", td.Pos, a)
	return fmt.Sprintf("%#v", a)
}

func (d *driver) inFlight() int {
	n := 0
	for e := range d.epochs {
		n += d.m.InFlight(e)
	}
	return n
}

func (d *driver) status() string {
	cur, _ := d.m.Current()
	var ops []string
	for _, e := range slices.Sorted(func(yield func(uint64) bool) {
		for e := range d.epochs {
			if !yield(e) {
				return
			}
		}
	}) {
		if n := d.m.InFlight(e); n > 0 {
			ops = append(ops, fmt.Sprintf("%d:%d", e, n))
		}
	}
	opsS := "none"
	if len(ops) > 0 {
		opsS = strings.Join(ops, ",")
	}
	return fmt.Sprintf("> %v current=%d acked=%d ops=%s", d.m.Phase(), cur, d.m.Acked(), opsS)
}

func (d *driver) record(t *testing.T, td *datadriven.TestData) *proto.EpochRecord {
	rec := &proto.EpochRecord{Group: d.cfg.Group, Number: scripttest.Uint(t, td, "n"), Mode: proto.ModeLease}
	td.MaybeScanArgs(t, "group", &rec.Group)
	var state string
	td.ScanArgs(t, "state", &state)
	switch proto.State(state) {
	case proto.Quiescing, proto.Connected:
		rec.State = proto.State(state)
	default:
		td.Fatalf(t, "bad state %q", state)
	}
	rec.Members = scripttest.MembersArg(t, td, "members", nil)
	if td.HasArg("prev") {
		var s string
		td.ScanArgs(t, "prev", &s)
		num, ms, ok := strings.Cut(s, ":")
		n, err := strconv.ParseUint(num, 10, 64)
		if !ok || err != nil {
			td.Fatalf(t, "prev=%q: want N:a/1,b/2", s)
		}
		rec.PrevNumber, rec.Prev = n, scripttest.Members(t, td, ms, nil)
	}
	rec.Excluded = scripttest.MembersArg(t, td, "excluded", nil)
	return rec
}

// kinds names the sentinel errors err wraps, as found by errors.Is.
func kinds(err error) string {
	var k []string
	for _, s := range []struct {
		name string
		err  error
	}{
		{"fenced", proto.ErrFenced},
		{"lease-expired", proto.ErrLeaseExpired},
		{"evicted", proto.ErrEvicted},
		{"left", proto.ErrLeft},
		{"epoch-ended", proto.ErrEpochEnded},
		{"not-connected", proto.ErrNotConnected},
	} {
		if errors.Is(err, s.err) {
			k = append(k, s.name)
		}
	}
	if len(k) == 0 {
		return "unknown"
	}
	return strings.Join(k, ",")
}

func TestEndWithoutBeginPanics(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(m *Machine)
		end   uint64
	}{
		{"fresh machine", func(*Machine) {}, 1},
		{"other epoch than begun", func(m *Machine) {
			connect(t, m, 3)
			if err := m.Begin(3); err != nil {
				t.Fatal(err)
			}
		}, 2},
		{"twice after one begin", func(m *Machine) {
			connect(t, m, 3)
			if err := m.Begin(3); err != nil {
				t.Fatal(err)
			}
			m.End(3)
		}, 3},
		{"after fence, op never begun", func(m *Machine) {
			connect(t, m, 3)
			m.LeaseLost()
		}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(testConfig())
			m.Renewed(0)
			tc.setup(m)
			defer func() {
				r := recover()
				if r == nil {
					t.Fatalf("End(%d) did not panic", tc.end)
				}
				if want := fmt.Sprintf("End(%d) without Begin", tc.end); !strings.Contains(fmt.Sprint(r), want) {
					t.Fatalf("panic %q, want it to say %q", r, want)
				}
			}()
			m.End(tc.end)
		})
	}
}

// TestErrorsIs checks the error kinds callers test for with errors.Is.
func TestErrorsIs(t *testing.T) {
	type check struct {
		err       error
		is, isNot []error
	}
	fenced := func(do func(m *Machine)) error {
		m := New(testConfig())
		m.Renewed(0)
		connect(t, m, 3)
		do(m)
		if m.Phase() != Fenced {
			t.Fatalf("phase %v, want fenced", m.Phase())
		}
		return m.Err()
	}
	begin := func(do func(m *Machine), e uint64) error {
		m := New(testConfig())
		m.Renewed(0)
		do(m)
		return m.Begin(e)
	}
	for name, c := range map[string]check{
		"evicted by excluded": {fenced(func(m *Machine) {
			m.Observe(rec(4, proto.Quiescing, "a/1,b/2", "3:a/1,b/2", "b/2"))
		}), []error{proto.ErrFenced, proto.ErrEvicted}, []error{proto.ErrLeaseExpired, proto.ErrLeft}},
		"evicted by connected": {fenced(func(m *Machine) {
			m.Observe(rec(4, proto.Connected, "a/1", "", ""))
		}), []error{proto.ErrFenced, proto.ErrEvicted}, []error{proto.ErrLeaseExpired}},
		"lease tick": {fenced(func(m *Machine) {
			m.Tick(testConfig().Lease.Valid())
		}), []error{proto.ErrFenced, proto.ErrLeaseExpired}, []error{proto.ErrEvicted}},
		"lease lost": {fenced(func(m *Machine) {
			m.LeaseLost()
		}), []error{proto.ErrFenced, proto.ErrLeaseExpired}, []error{proto.ErrEvicted}},
		"begin joining": {begin(func(*Machine) {}, 1),
			[]error{proto.ErrNotConnected}, []error{proto.ErrEpochEnded, proto.ErrFenced}},
		"begin old epoch": {begin(func(m *Machine) { connect(t, m, 3) }, 2),
			[]error{proto.ErrEpochEnded}, []error{proto.ErrNotConnected, proto.ErrFenced}},
		"begin fenced": {begin(func(m *Machine) { connect(t, m, 3); m.LeaseLost() }, 3),
			[]error{proto.ErrFenced, proto.ErrLeaseExpired}, []error{proto.ErrEpochEnded, proto.ErrNotConnected}},
		"begin left": {begin(func(m *Machine) { connect(t, m, 3); m.Leave() }, 3),
			[]error{proto.ErrLeft}, []error{proto.ErrEpochEnded, proto.ErrNotConnected}},
	} {
		for _, want := range c.is {
			if !errors.Is(c.err, want) {
				t.Errorf("%s: %v is not %v", name, c.err, want)
			}
		}
		for _, not := range c.isNot {
			if errors.Is(c.err, not) {
				t.Errorf("%s: %v is %v", name, c.err, not)
			}
		}
	}
}

// TestRandomEvents drives machines with random, often contradictory event
// sequences and checks the invariants that must hold whatever the store
// says: G3 at every WriteAck, G6 at every Tick, nothing after Fence or
// Leave, Begin only in the connected epoch, Connect/Disconnect properly
// paired, a record excluding this member always fences it.
func TestRandomEvents(t *testing.T) {
	me := proto.Member{ID: "b", Incarnation: 2}
	pool := []proto.Member{{ID: "a", Incarnation: 1}, me, {ID: "b", Incarnation: 1}, {ID: "c", Incarnation: 3}}
	subset := func(r *rand.Rand, pMe float64) []proto.Member {
		var out []proto.Member
		for _, m := range pool {
			p := 0.5
			if m == me {
				p = pMe
			}
			if r.Float64() < p {
				out = append(out, m)
			}
		}
		return out
	}
	for seed := uint64(0); seed < 2000; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		cfg := testConfig()
		m := New(cfg)
		var (
			now         time.Duration
			top         uint64 // highest record number generated
			seen        uint64
			connected   bool   // per the actions: an epoch is open
			open        uint64 // which
			lastConnect uint64
			lastAck     uint64
			ops         = map[uint64]int{}
			stopped     bool
			renewedOnce bool
			log         []string
		)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d: %s\nevents:\n%s", seed, fmt.Sprintf(format, args...), strings.Join(log, "\n"))
		}
		if r.IntN(10) > 0 {
			m.Renewed(0)
			renewedOnce = true
		}
		for step := 0; step < 60; step++ {
			var ev string
			excludesMe := false
			switch k := r.IntN(100); {
			case k < 35:
				n := top + 1
				if top > 0 && r.IntN(4) == 0 {
					n = top - uint64(r.IntN(2)) // stale or duplicate number
				}
				if n > top {
					top = n
				}
				rc := &proto.EpochRecord{Group: cfg.Group, Number: n, State: proto.Connected, Members: subset(r, 0.8)}
				if r.IntN(2) == 0 {
					rc.State = proto.Quiescing
					rc.PrevNumber, rc.Prev = n-1, subset(r, 0.7)
				}
				if r.IntN(6) == 0 {
					rc.Excluded = subset(r, 0.3)
				}
				if r.IntN(15) == 0 {
					rc.Group = "other"
				}
				excludesMe = rc.Group == cfg.Group && n > seen && proto.Contains(rc.Excluded, me.Ref())
				if rc.Group == cfg.Group && n > seen {
					seen = n
				}
				ev = fmt.Sprintf("observe %+v", *rc)
				m.Observe(rc)
			case k < 55:
				e := open + uint64(r.IntN(3)) - 1
				if open == 0 {
					e = uint64(r.IntN(3))
				}
				err := m.Begin(e)
				ev = fmt.Sprintf("begin %d: %v", e, err)
				if err == nil {
					if !connected || e != open || m.Phase() != Connected {
						fail("Begin(%d) succeeded with connected=%v open=%d phase=%v", e, connected, open, m.Phase())
					}
					ops[e]++
				}
			case k < 75:
				var es []uint64
				for e, n := range ops {
					if n > 0 {
						es = append(es, e)
					}
				}
				if len(es) == 0 {
					continue
				}
				slices.Sort(es)
				e := es[r.IntN(len(es))]
				ops[e]--
				ev = fmt.Sprintf("end %d", e)
				m.End(e)
			case k < 88:
				now += time.Duration(r.IntN(800)) * time.Millisecond
				ev = fmt.Sprintf("tick %v", now)
				m.Tick(now)
				dl, ok := m.LeaseDeadline()
				if !stopped && m.Phase() != Fenced && m.Phase() != Left && (!ok || now >= dl) {
					fail("G6: not fenced at %v, deadline %v (answered %v)", now, dl, ok)
				}
				if m.Phase() == Fenced && !stopped && ok && now < dl {
					fail("fenced by tick at %v before deadline %v", now, dl)
				}
			case k < 96:
				s := now - time.Duration(r.IntN(1500))*time.Millisecond
				if s < 0 {
					s = 0
				}
				before, _ := m.LeaseDeadline()
				m.Renewed(s)
				after, _ := m.LeaseDeadline()
				ev = fmt.Sprintf("renewed %v", s)
				if stopped && after != before {
					fail("Renewed after stop moved the deadline %v → %v", before, after)
				}
				if !stopped && renewedOnce && after < before {
					fail("Renewed shortened the deadline %v → %v", before, after)
				}
				if !stopped {
					if want := max(before, s+cfg.Lease.Valid()); renewedOnce && after != want {
						fail("deadline %v, want %v", after, want)
					}
					renewedOnce = true
				}
			case k < 98:
				ev = "leave"
				m.Leave()
			default:
				ev = "lease-lost"
				m.LeaseLost()
				if m.Phase() != Fenced && m.Phase() != Left {
					fail("LeaseLost left phase %v", m.Phase())
				}
			}
			acts := m.Ready()
			log = append(log, fmt.Sprintf("%s → %+v > %v", ev, acts, m.Phase()))
			if stopped && len(acts) > 0 {
				fail("actions after stop")
			}
			for _, a := range acts {
				switch a := a.(type) {
				case Connect:
					if connected {
						fail("Connect %d while %d open", a.Epoch, open)
					}
					if !proto.Contains(a.Members, me.Ref()) {
						fail("Connect %d does not name me: %v", a.Epoch, a.Members)
					}
					if a.Epoch <= lastConnect {
						fail("Connect %d after Connect %d", a.Epoch, lastConnect)
					}
					connected, open, lastConnect = true, a.Epoch, a.Epoch
				case Disconnect:
					if !connected || a.Epoch != open {
						fail("Disconnect %d with connected=%v open=%d", a.Epoch, connected, open)
					}
					connected = false
				case WriteAck:
					if connected && open < a.Epoch {
						fail("WriteAck %d while epoch %d is still open", a.Epoch, open)
					}
					for e, n := range ops {
						if e < a.Epoch && n > 0 {
							fail("G3: WriteAck %d with %d ops of epoch %d in flight", a.Epoch, n, e)
						}
					}
					if a.Epoch <= lastAck {
						fail("WriteAck %d after WriteAck %d", a.Epoch, lastAck)
					}
					lastAck = a.Epoch
				case Fence:
					if connected {
						fail("Fence while epoch %d open (no Disconnect first)", open)
					}
					if !errors.Is(a.Err, proto.ErrFenced) {
						fail("Fence error %v", a.Err)
					}
					stopped = true
				case Leave:
					if connected {
						fail("Leave while epoch %d open", open)
					}
					for e, n := range ops {
						if n > 0 {
							fail("Leave with %d ops of epoch %d in flight", n, e)
						}
					}
					stopped = true
				}
			}
			if excludesMe && !stopped {
				fail("a record excluding me did not fence")
			}
			if (m.Phase() == Connected) != connected {
				fail("phase %v but connected=%v by the actions", m.Phase(), connected)
			}
			if stopped != (m.Phase() == Fenced || m.Phase() == Left) {
				fail("phase %v but stopped=%v by the actions", m.Phase(), stopped)
			}
		}
	}
}

func testConfig() Config {
	return Config{Group: "g", ID: "b", Incarnation: 2,
		Lease: lease.Config{TTL: 2 * time.Second, Rho: 0.01, Margin: 250 * time.Millisecond}}
}

// connect brings m (joining, lease answered) to connected epoch e.
func connect(t *testing.T, m *Machine, e uint64) {
	t.Helper()
	m.Observe(rec(e, proto.Connected, "a/1,b/2", "", ""))
	if cur, _ := m.Current(); m.Phase() != Connected || cur != e {
		t.Fatalf("phase %v epoch %d, want connected %d", m.Phase(), cur, e)
	}
	m.Ready()
}

// rec builds a record of group g; prev is "N:a/1,b/2" or empty.
func rec(n uint64, st proto.State, members, prev, excluded string) *proto.EpochRecord {
	parse := func(s string) []proto.Member {
		var out []proto.Member
		for _, f := range strings.Split(s, ",") {
			if id, inc, ok := strings.Cut(f, "/"); ok {
				i, _ := strconv.ParseUint(inc, 10, 64)
				out = append(out, proto.Member{ID: id, Incarnation: i})
			}
		}
		return out
	}
	r := &proto.EpochRecord{Group: "g", Number: n, State: st, Members: parse(members), Excluded: parse(excluded)}
	if num, ms, ok := strings.Cut(prev, ":"); ok {
		r.PrevNumber, _ = strconv.ParseUint(num, 10, 64)
		r.Prev = parse(ms)
	}
	return r
}

func TestPhaseString(t *testing.T) {
	for p, want := range map[Phase]string{Joining: "joining", Connected: "connected", Quiescing: "quiescing",
		Fenced: "fenced", Left: "left", Phase(9): "Phase(9)"} {
		if got := p.String(); got != want {
			t.Errorf("Phase(%d).String() = %q, want %q", int(p), got, want)
		}
	}
}
