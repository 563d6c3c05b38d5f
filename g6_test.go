package idc_test

import (
	"context"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestG6_SelfFenceBeforeStoreExpiry cuts a member off from the store (its
// connection blackholed in both directions) right after the store answered
// one of its lease renewals, while it does I/O as a careful application
// does (Epoch.Err right before each I/O).
//
// Its store client is tapped. The store processed the last renewal it
// answered after the tap saw it sent, and set the lease to expire TTL after
// processing it: that send time + TTL is a lower bound of the lease's
// nominal expiry in the store. (A watcher sees the expiry late: etcd looks
// for expired leases only every 500 ms, which would hide most of the
// lead.) The member must have fenced itself (Done closed) and done its
// last I/O at least its margin before that bound, and do nothing more.
func TestG6_SelfFenceBeforeStoreExpiry(t *testing.T) {
	const (
		ttl    = 2 * time.Second
		rho    = 0.05
		margin = 100 * time.Millisecond
	)
	e := newEnv(t)
	e.coordinator(coordinator.Config{Rho: rho}) // at least the members' ρ
	px, through := testenv.Proxy(t, e.etcd.Endpoints[0])
	mcli, tap := testenv.TappedClient(t, []string{through}, proto.Keys{})
	m := e.join("m", func(c *idc.Config) { c.Client, c.LeaseTTL, c.Rho, c.LeaseMargin = mcli, ttl, rho, margin })
	e.join("p", bystander)
	ep := current(t, m, 10*time.Second, "m", "p")
	lease := leaseOf(t, ep.Members(), "m")
	io := startIO(ep)

	// The store's expiry of m's lease as a direct client's watch sees it:
	// late, so only to check that the bound is one, and to log.
	expired := make(chan time.Time, 1)
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := e.cli.Watch(wctx, proto.Keys{}.Member(group, "m"))
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					expired <- time.Now()
					return
				}
			}
		}
	}()

	waited := tap.WaitAnswered(t, lease, time.Now(), 5*time.Second)
	px.BlackholeTx()
	px.BlackholeRx()
	cut := time.Now()
	mark := e.mark()

	waitDone(t, m, 5*time.Second)
	fenced := time.Now() // no earlier than the fence
	if err := m.Err(); !errorsIs(err, idc.ErrFenced) || !errorsIs(err, idc.ErrLeaseExpired) {
		t.Fatalf("m: %v, want ErrFenced wrapping ErrLeaseExpired", err)
	}
	if ep.Context().Err() == nil {
		t.Error("G6 violated: m's epoch context still live after fencing")
	}
	if cause := context.Cause(ep.Context()); !errorsIs(cause, idc.ErrFenced) || !errorsIs(cause, idc.ErrLeaseExpired) {
		t.Errorf("the epoch context's cause is %v, want the fence (ErrFenced wrapping ErrLeaseExpired), not a plain disconnect", cause)
	}
	if _, err := ep.Begin(); !errorsIs(err, idc.ErrFenced) {
		t.Errorf("G6 violated: Begin after fencing: %v", err)
	}
	if err := ep.Err(); !errorsIs(err, idc.ErrFenced) {
		t.Errorf("G6 violated: Epoch.Err after fencing: %v", err)
	}
	lastIO, ios := io.stopped(t, 5*time.Second)

	renewal, ok := tap.LastAnswered(lease)
	if !ok {
		t.Fatal("the tap saw no answered renewal of m's lease")
	}
	expiry := renewal.Sent.Add(ttl) // no later than the store's nominal expiry
	var seen time.Time
	select {
	case seen = <-expired:
	case <-time.After(10 * time.Second):
		t.Fatal("the store never expired m's lease")
	}
	at := func(x time.Time) time.Duration { return x.Sub(cut).Round(time.Millisecond) }
	t.Logf("cut at 0; m's last answered renewal sent at %v (the one awaited: %v); store's nominal expiry no earlier than %v, seen at %v; "+
		"m did %d I/Os, the last at %v; m fenced by %v; lead %v",
		at(renewal.Sent), renewal.Sent.Equal(waited.Sent), at(expiry), at(seen), ios, at(lastIO), at(fenced), expiry.Sub(fenced).Round(time.Millisecond))
	if seen.Before(expiry) {
		t.Fatalf("the store expired m's lease at %v, before the bound %v the test derived from the tap: the bound is wrong", at(seen), at(expiry))
	}

	// m fences TTL·(1−ρ) − margin after it sent that renewal (it read its
	// clock before the tap did), so at least margin + TTL·ρ before the
	// bound: member and store share one clock here. The test asks for the
	// margin; the drift allowance TTL·ρ (100 ms), unused with one clock, is
	// the slack for the test's seeing the fence and reading the clock for
	// the last I/O after m checked its own.
	if lead := expiry.Sub(fenced); lead < margin {
		t.Errorf("G6 violated: m fenced itself only %v before the store's nominal expiry of its lease (no earlier than its last answered renewal's send + TTL); want at least its margin %v", lead, margin)
	}
	if lead := expiry.Sub(lastIO); lead < margin {
		t.Errorf("G6 violated: m's last I/O only %v before the store's nominal expiry of its lease; want at least its margin %v", lead, margin)
	}
	if lastIO.Before(cut) {
		t.Errorf("m stopped its I/O before the cut: the test did not exercise a running, cut-off member")
	}
	e.connected(mark, 10*time.Second, "p")
}
