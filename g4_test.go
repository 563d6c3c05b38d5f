package idc_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
)

// TestG4_CutOffMemberStopsBeforeNextEpoch cuts a member off from the store
// and its peers (its store connection blackholed both ways), right after
// the store answered one of its lease renewals, while it keeps running and
// doing I/O as a careful application does (Epoch.Err right before each
// I/O). A peer reports it; the coordinator drops it, revokes its lease and
// waits it out (lease mode).
//
// The member's and the coordinator's store clients are tapped: the test
// knows when m sent its last answered renewal, and when the coordinator
// sent the transaction that connected the next epoch, which is a lower
// bound of the connect (a watcher sees the connect late, which would hide
// part of the lead). It checks that m's last I/O came before that send by
// at least both margins (G4), and that by the connect m had fenced itself
// (G6).
func TestG4_CutOffMemberStopsBeforeNextEpoch(t *testing.T) {
	const (
		ttl          = 2 * time.Second
		rho          = 0.01
		memberMargin = 100 * time.Millisecond
		coordMargin  = 100 * time.Millisecond
	)
	e := newEnv(t)
	ccli, ctap := testenv.TappedClient(t, e.etcd.Endpoints, proto.Keys{})
	e.coordinator(coordinator.Config{Client: ccli, Rho: rho, LeaseMargin: coordMargin})
	px, through := testenv.Proxy(t, e.etcd.Endpoints[0])
	mcli, mtap := testenv.TappedClient(t, []string{through}, proto.Keys{})
	m := e.join("m", func(c *idc.Config) {
		c.Client, c.LeaseTTL, c.Rho, c.LeaseMargin = mcli, ttl, rho, memberMargin
	})
	a := e.join("a", bystander)
	old := e.connected(testenv.Mark{}, 10*time.Second, "a", "m")
	ep := current(t, m, 5*time.Second, "a", "m")
	lease := leaseOf(t, old.Members, "m")
	io := startIO(ep)

	// Cut m off right after the store answered a renewal of its lease, so
	// that the renewal is its last answered one and the revocation follows
	// it closely.
	waited := mtap.WaitAnswered(t, lease, time.Now(), 5*time.Second)
	px.BlackholeTx()
	px.BlackholeRx()
	cut := time.Now()
	mark := e.mark()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.ReportFault(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	next := e.h.WaitFor(t, group, mark, 15*time.Second, "connected after m's report", func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && r.Number > old.Number
	})
	running := false
	select {
	case <-m.Done():
	default:
		running = true
	}
	if got := proto.IDs(next.Members); len(got) != 1 || got[0] != "a" {
		t.Fatalf("epoch %d connected with %v, want [a]", next.Number, got)
	}
	lastIO, ios := io.stopped(t, 10*time.Second)
	if err := m.Err(); !errorsIs(err, idc.ErrFenced) || !errorsIs(err, idc.ErrLeaseExpired) {
		t.Errorf("m: %v, want ErrFenced wrapping ErrLeaseExpired (it could not see the record dropping it)", err)
	}

	renewal, ok := mtap.LastAnswered(lease)
	if !ok {
		t.Fatal("the tap saw no answered renewal of m's lease")
	}
	connect, err := ctap.FirstWrite(group, next.Number, proto.Connected)
	if err != nil {
		t.Fatal(err)
	}
	if !connect.Sent.Before(next.Seen) {
		t.Fatalf("tap: the connect of epoch %d sent at %v, not before the recorder saw it at %v", next.Number, connect.Sent, next.Seen)
	}
	// m's own deadline is no later than this: it read its clock before the
	// tap saw the renewal sent.
	deadline := renewal.Sent.Add(time.Duration(math.Floor(float64(ttl)*(1-rho))) - memberMargin)
	at := func(x time.Time) time.Duration { return x.Sub(cut).Round(time.Millisecond) }
	lead := connect.Sent.Sub(lastIO)
	t.Logf("cut at 0; m's last answered renewal sent at %v (the one awaited: %v), its deadline by then at most %v; m did %d I/Os, the last at %v; "+
		"epoch %d connect sent at %v, seen at %v; lead %v",
		at(renewal.Sent), renewal.Sent.Equal(waited.Sent), at(deadline), ios, at(lastIO),
		next.Number, at(connect.Sent), at(next.Seen), lead.Round(time.Millisecond))

	// m does no I/O after its deadline: TTL·(1−ρ) − memberMargin after it
	// sent its last answered renewal. The store answered that renewal
	// before the revocation, so the revocation came after the renewal was
	// sent; the coordinator sends the connect no earlier than TTL·(1+ρ) +
	// coordMargin after the revocation was answered. On this machine every
	// clock runs at one rate, so the connect is sent at least memberMargin
	// + coordMargin + 2·TTL·ρ after m's last I/O. The test asks for the two
	// margins; the drift allowance 2·TTL·ρ, unused with one clock, is the
	// slack for the instant between m's reading its clock in Epoch.Err and
	// the test's reading it for the I/O.
	if want := memberMargin + coordMargin; lead < want {
		t.Errorf("G4 violated: m's last I/O only %v before the connect of epoch %d was sent; want at least the margins %v (m: %v, coordinator: %v)",
			lead, next.Number, want, memberMargin, coordMargin)
	}
	if running {
		t.Errorf("G4/G6 violated: epoch %d connected while m (cut off, not proven stopped) was still running", next.Number)
	}
	if lastIO.Before(cut) {
		t.Errorf("m stopped its I/O before the cut: the test did not exercise a running, cut-off member")
	}
	e.h.CheckG1(t, group)
}
