package clustertest_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/clustertest"
	"github.com/idc-dev/idc/internal/hosts"
	"github.com/idc-dev/idc/internal/scenario"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
)

var (
	buildOnce sync.Once
	bin       string
	buildErr  error
	removeBin func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	if removeBin != nil {
		removeBin()
	}
	os.Exit(code)
}

// start builds the idc binary (once) and starts a cluster of three store
// hosts and three domain hosts, or skips where network namespaces cannot
// be made.
func start(t *testing.T) (*clustertest.Cluster, *testenv.History) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := hosts.Check(ctx); err != nil {
		t.Skipf("the cluster tests run hosts as network namespaces, which needs root and ip netns (iproute2): %v", err)
	}
	buildOnce.Do(func() { bin, removeBin, buildErr = scenario.BuildTemp(ctx) })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	c, err := clustertest.Start(ctx, clustertest.Config{Binary: bin, Dir: t.TempDir(), Output: scenario.LogWriter(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	h := testenv.Record(t, c.Client, clustertest.Keys)
	must(t, c.StartDomains(ctx))
	// The group's first full epoch, as every domain sees it.
	waitConnected(t, c, h, testenv.Mark{}, time.Minute, names(c.Domains)...)
	return c, h
}

func names(ns []*clustertest.Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Name)
	}
	return out
}

// bounds derives every bound the checks use from the configuration of
// the store, the members and the coordinator, never from how fast this
// machine is.
type bounds struct {
	// election: a leader lost is replaced within it. etcd's followers
	// time out in [E, 2E) (randomised), and one more E covers a vote
	// that splits.
	election time.Duration
	// step: the store work of one step the test waits for (an epoch
	// change's rounds, a lease's revocation by the leader's lessor, a
	// restarted member catching up): one election timeout, the unit in
	// which the store itself counts a stall.
	step time.Duration
	// failover: a request or a watch a client had on a member that went
	// silent (partitioned, not dead) moves to another: a store request is
	// sent again after half its timeout (store.Etcd's attempts), and a
	// watch that delivers nothing is replaced within two watch checks.
	failover time.Duration
	// ttl, validity and wait are the members' lease: TTL, a member's
	// validity TTL·(1−ρ)−margin, and the coordinator's wait for a
	// departed member TTL·(1+ρ)+margin.
	ttl, validity, wait time.Duration
	// renew is the members' renewal interval (and each renewal's timeout).
	renew time.Duration
	// coordinator: a dead active coordinator's election key lapses
	// within its TTL, which a new store leader may extend by E.
	coordinator time.Duration
}

func boundsOf(c *clustertest.Cluster) bounds {
	cfg, m, co := c.Config(), idc.DefaultConfig(), coordinator.DefaultConfig()
	e := cfg.ElectionTimeout
	ttl := cfg.LeaseTTL
	return bounds{
		election:    3 * e,
		step:        e,
		failover:    max(m.OpTimeout/2, 2*m.WatchCheck, co.OpTimeout/2, 2*co.WatchCheck),
		ttl:         ttl,
		validity:    time.Duration(float64(ttl)*(1-m.Rho)) - m.LeaseMargin,
		wait:        time.Duration(float64(ttl)*(1+co.Rho)) + co.LeaseMargin,
		renew:       m.RenewInterval,
		coordinator: co.ElectionTTL + e,
	}
}

// connectedWith matches a connected record of exactly ids.
func connectedWith(ids ...string) func(proto.EpochRecord) bool {
	want := slices.Sorted(slices.Values(ids))
	return func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && slices.Equal(slices.Sorted(slices.Values(proto.IDs(r.Members))), want)
	}
}

// waitConnected waits until an epoch of exactly ids connects after mark
// and every one of them has printed that it is connected in it; it
// returns the record and when the last of them printed it.
func waitConnected(t *testing.T, c *clustertest.Cluster, h *testenv.History, mark testenv.Mark, timeout time.Duration, ids ...string) (testenv.Entry, time.Time) {
	t.Helper()
	e := h.WaitFor(t, c.Config().Group, mark, timeout, fmt.Sprintf("connected with %v", ids), connectedWith(ids...))
	var last time.Time
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, id := range ids {
		p := c.Domain(id).Proc()
		prefix := fmt.Sprintf("%s: epoch %d connected:", id, e.Number)
		if _, _, err := p.WaitFor(ctx, 0, func(l string) bool { return strings.HasPrefix(l, prefix) }); err != nil {
			t.Fatalf("%s never said it is connected in epoch %d: %v", id, e.Number, err)
		}
		for _, l := range p.TimedLines() {
			if strings.HasPrefix(l.Text, prefix) && l.At.After(last) {
				last = l.At
			}
		}
	}
	return e, last
}

// quiet records how many lines every domain printed, to check later that
// none said its epoch ended or its membership did.
type quiet map[*clustertest.Node]int

func quietFrom(c *clustertest.Cluster) quiet {
	q := quiet{}
	for _, d := range c.Domains {
		q[d] = d.Proc().Count()
	}
	return q
}

func (q quiet) check(t *testing.T, what string) {
	t.Helper()
	for d, from := range q {
		lines := d.Proc().Lines()
		for _, l := range lines[from:] {
			if strings.Contains(l, "ended") {
				t.Errorf("%s: %s said %q", what, d.Name, l)
			}
		}
	}
}

// fenced fails if a domain said it was fenced, or its membership ended.
func (q quiet) fenced(t *testing.T, what string) {
	t.Helper()
	for d, from := range q {
		for _, l := range d.Proc().Lines()[from:] {
			if strings.Contains(l, "fenced") || strings.Contains(l, "membership ended") {
				t.Errorf("%s: %s said %q", what, d.Name, l)
			}
		}
	}
}

// noEpochSince fails if any epoch record was written after mark.
func noEpochSince(t *testing.T, c *clustertest.Cluster, h *testenv.History, mark testenv.Mark, what string) {
	t.Helper()
	var after []testenv.Entry
	for _, e := range h.Entries(c.Config().Group) {
		if mark.Precedes(e.Rev) {
			after = append(after, e)
		}
	}
	if len(after) > 0 {
		t.Errorf("%s: epoch records written, want none:\n%s", what, testenv.FormatEntries(after))
	}
}

// restart starts a killed store member again on its data dir and waits
// until it has caught up with the leader.
func restart(t *testing.T, c *clustertest.Cluster, s *clustertest.Node, b bounds) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.StartStore(ctx, s); err != nil {
		t.Fatalf("restart %s on its data dir: %v", s.Name, err)
	}
	caughtUp(t, c, s)
}

// caughtUp waits until member s has applied what the leader has.
func caughtUp(t *testing.T, c *clustertest.Cluster, s *clustertest.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		lead, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ls, err1 := c.Client.Status(ctx, lead.ClientURL())
		ms, err2 := c.Client.Status(ctx, s.ClientURL())
		if err1 == nil && err2 == nil && ms.Leader == ls.Leader && ms.RaftAppliedIndex >= ls.RaftAppliedIndex {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s did not catch up with the leader %s: %v %v", s.Name, lead.Name, err1, err2)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// nameOf names n, or says why there is none.
func nameOf(n *clustertest.Node, err error) string {
	if err != nil {
		return err.Error()
	}
	return n.Name
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCluster runs idc on a 3-member etcd cluster across hosts (network
// namespaces) with three domains of group g on hosts of their own, and
// takes the store's hosts and a domain's away one at a time. Each case
// leaves every host up and every domain connected again.
func TestCluster(t *testing.T) {
	c, h := start(t)
	b := boundsOf(c)
	g := c.Config().Group
	all := names(c.Domains)
	bg := context.Background()
	t.Logf("bounds: %+v", b)

	// A minority member lost — killed, then partitioned — and returned:
	// no epoch change at all, nobody fenced (every lease renews through
	// the majority).
	t.Run("MinorityLost", func(t *testing.T) {
		co, err := c.ActiveCoordinator(bg)
		must(t, err)
		lead, err := c.Leader(bg)
		must(t, err)
		victim := c.Other(co, lead)
		if victim == nil {
			t.Fatalf("no store member is neither the leader %s nor the coordinator's %s", lead.Name, co.Name)
		}
		// Long enough for any lease that stopped renewing to lapse, at
		// the member and in the store, and the coordinator to act.
		hold := b.ttl + b.wait + b.election
		for _, how := range []string{"killed", "partitioned"} {
			mark, q := h.Mark(t), quietFrom(c)
			if how == "killed" {
				victim.Proc().Kill()
			} else {
				must(t, victim.Host.Partition(bg))
			}
			time.Sleep(hold)
			if how == "killed" {
				restart(t, c, victim, b)
			} else {
				must(t, victim.Host.Heal(bg))
				caughtUp(t, c, victim)
			}
			time.Sleep(b.ttl) // and after its return
			noEpochSince(t, c, h, mark, "store "+victim.Name+" "+how+" and back")
			q.check(t, "store "+victim.Name+" "+how+" and back")
		}
	})

	// The store's leader lost during an epoch change (a domain leaving):
	// the change completes within the store's election, and in the
	// partition case the clients' failover from the silent member.
	for _, how := range []string{"killed", "partitioned"} {
		t.Run("LeaderLost/"+how, func(t *testing.T) {
			co, err := c.ActiveCoordinator(bg)
			must(t, err)
			// The leader on another host than the active coordinator:
			// this case is the store's alone.
			lead := c.Other(co)
			mctx, mcancel := context.WithTimeout(bg, time.Minute)
			defer mcancel()
			must(t, c.MoveLeader(mctx, lead))
			leaver := c.Domain("d3")
			rest := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == leaver.Name })
			mark, q := h.Mark(t), quietFrom(c)
			delete(q, leaver)
			at := time.Now()
			if how == "killed" {
				lead.Proc().Kill()
			} else {
				must(t, lead.Host.Partition(bg))
			}
			must(t, leaver.Proc().Signal(syscall.SIGTERM)) // leaves gracefully
			bound := b.election + 2*b.step
			if how == "partitioned" {
				bound += b.failover
			}
			e, done := waitConnected(t, c, h, mark, time.Minute, rest...)
			took := done.Sub(at)
			t.Logf("L1: leader %s %s, %s leaving: epoch %d of %v connected at every member %v later (bound %v)", lead.Name, how, leaver.Name, e.Number, rest, took.Round(time.Millisecond), bound)
			if took > bound {
				t.Errorf("L1: the epoch change took %v with the store's leader %s, want at most %v (election %v + 2 steps of %v%s)", took, how, bound, b.election, b.step, map[bool]string{true: fmt.Sprintf(" + client failover %v", b.failover)}[how == "partitioned"])
			}
			// The survivors' leases renewed through the election: their
			// epoch ended for the change, and nothing else.
			q.fenced(t, "leader "+lead.Name+" "+how)
			if nl, err := c.Leader(bg); err != nil || nl == lead {
				t.Errorf("leader after losing %s: %v (want another)", lead.Name, nameOf(nl, err))
			}
			if how == "killed" {
				restart(t, c, lead, b)
			} else {
				must(t, lead.Host.Heal(bg))
				caughtUp(t, c, lead)
			}
			<-leaver.Proc().Exited()
			ctx, cancel := context.WithTimeout(bg, time.Minute)
			defer cancel()
			mark = h.Mark(t)
			must(t, c.StartDomain(ctx, leaver))
			waitConnected(t, c, h, mark, time.Minute, all...)
		})
	}

	// A domain cut off from every store host (its peers still reach it):
	// it fences itself when its lease may have lapsed by its own clock
	// (G6), before the coordinator connects an epoch without it (G4, lease
	// mode), and that epoch comes within the lease's bounds (L1).
	t.Run("DomainPartitioned", func(t *testing.T) {
		d := c.Domain("d1")
		rest := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == d.Name })
		var storeHosts []*hosts.Host
		for _, s := range c.Stores {
			storeHosts = append(storeHosts, s.Host)
		}
		mark := h.Mark(t)
		from := d.Proc().Count()
		at := time.Now()
		must(t, d.Host.Block(bg, storeHosts...))
		ctx, cancel := context.WithTimeout(bg, time.Minute)
		defer cancel()
		_, line, err := d.Proc().WaitFor(ctx, from, func(l string) bool { return strings.Contains(l, "ended") })
		must(t, err)
		var fenced time.Time
		for _, l := range d.Proc().TimedLines()[from:] {
			if l.Text == line {
				fenced = l.At
				break
			}
		}
		if !strings.Contains(line, proto.ErrFenced.Error()) || !strings.Contains(line, proto.ErrLeaseExpired.Error()) {
			t.Errorf("G6: %s's epoch ended with %q, want its own fence: %v: %v", d.Name, line, proto.ErrFenced, proto.ErrLeaseExpired)
		}
		// Its last answered renewal was sent before the cut, and at most
		// two renewal intervals before it (one between renewals, one for
		// the renewal's own timeout).
		lo, hi := b.validity-2*b.renew, b.ttl
		if f := fenced.Sub(at); f < lo || f > hi {
			t.Errorf("G6: %s fenced itself %v after the cut, want within [%v, %v] (validity %v less two renewals; the TTL)", d.Name, f, lo, hi, b.validity)
		} else {
			t.Logf("G6: %s fenced itself %v after the cut (within [%v, %v])", d.Name, f.Round(time.Millisecond), lo, hi)
		}
		e, done := waitConnected(t, c, h, mark, time.Minute, rest...)
		connected := e.Seen
		if done.Before(connected) {
			connected = done
		}
		if !fenced.Before(connected) {
			t.Errorf("G4/G6: epoch %d without %s connected (seen %v) before it fenced itself (%v)", e.Number, d.Name, connected.Format("15:04:05.000"), fenced.Format("15:04:05.000"))
		}
		// The store drops the lease within a TTL of the last renewal, the
		// coordinator waits the lease out from then, and the change's
		// store rounds.
		bound := b.ttl + b.wait + 2*b.step
		took := done.Sub(at)
		t.Logf("L1: %s cut from the store: epoch %d of %v connected %v after the cut (bound %v)", d.Name, e.Number, rest, took.Round(time.Millisecond), bound)
		if took > bound {
			t.Errorf("L1: the epoch without %s took %v after the cut, want at most %v (TTL %v + lease wait %v + 2 steps of %v)", d.Name, took, bound, b.ttl, b.wait, b.step)
		}
		must(t, d.Host.Unblock(bg, storeHosts...))
		// It joins again as a new incarnation.
		mark = h.Mark(t)
		waitConnected(t, c, h, mark, time.Minute, all...)
	})

	// The active coordinator's host killed: another candidate takes over
	// and a change triggered at once completes.
	t.Run("CoordinatorKilled", func(t *testing.T) {
		co, err := c.ActiveCoordinator(bg)
		must(t, err)
		mctx, mcancel := context.WithTimeout(bg, time.Minute)
		defer mcancel()
		must(t, c.MoveLeader(mctx, c.Other(co))) // the coordinator's loss only
		leaver := c.Domain("d2")
		rest := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == leaver.Name })
		mark := h.Mark(t)
		at := time.Now()
		co.Proc().Kill()
		must(t, leaver.Proc().Signal(syscall.SIGTERM))
		e, done := waitConnected(t, c, h, mark, time.Minute, rest...)
		bound := b.coordinator + 2*b.step
		took := done.Sub(at)
		t.Logf("L1: coordinator host %s killed, %s leaving: epoch %d of %v connected %v later (bound %v)", co.Name, leaver.Name, e.Number, rest, took.Round(time.Millisecond), bound)
		if took > bound {
			t.Errorf("L1: the epoch change took %v with the active coordinator killed, want at most %v (election TTL + E %v + 2 steps of %v)", took, bound, b.coordinator, b.step)
		}
		if nc, err := c.ActiveCoordinator(bg); err != nil || nc == co {
			t.Errorf("active coordinator after killing %s's host: %v (want another)", co.Name, nameOf(nc, err))
		}
		restart(t, c, co, b)
		<-leaver.Proc().Exited()
		ctx, cancel := context.WithTimeout(bg, time.Minute)
		defer cancel()
		mark = h.Mark(t)
		must(t, c.StartDomain(ctx, leaver))
		waitConnected(t, c, h, mark, time.Minute, all...)
	})

	// G1 over the whole run: every epoch number decided once, in order.
	h.CheckG1(t, g)
}
