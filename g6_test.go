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
// connection blackholed in both directions) and checks that it fences
// itself before the store expires its lease, by at least its safety
// margin, and that it does nothing more after.
func TestG6_SelfFenceBeforeStoreExpiry(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{})
	px, through := testenv.Proxy(t, e.etcd.Endpoints[0])
	mcli := testenv.Client(t, []string{through})
	const margin = 100 * time.Millisecond
	m := e.join("m", func(c *idc.Config) { c.Client = mcli; c.LeaseMargin = margin; c.Rho = 0.01 })
	e.join("p")
	ep := current(t, m, 10*time.Second, "m", "p")

	// The store's expiry of m's lease, seen by a direct client.
	expired := make(chan time.Time, 1)
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := e.cli.Watch(wctx, proto.Keys{}.Member(group, "m"))

	time.Sleep(300 * time.Millisecond) // let a renewal or two through
	px.BlackholeTx()
	px.BlackholeRx()
	cut := time.Now()
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

	waitDone(t, m, 5*time.Second)
	fenced := time.Now()
	if err := m.Err(); !errorsIs(err, idc.ErrFenced) || !errorsIs(err, idc.ErrLeaseExpired) {
		t.Fatalf("m: %v, want ErrFenced wrapping ErrLeaseExpired", err)
	}
	if ep.Context().Err() == nil {
		t.Error("G6 violated: m's epoch context still live after fencing")
	}
	if _, err := ep.Begin(); !errorsIs(err, idc.ErrFenced) {
		t.Errorf("G6 violated: Begin after fencing: %v", err)
	}
	if err := ep.Err(); !errorsIs(err, idc.ErrFenced) {
		t.Errorf("G6 violated: Epoch.Err after fencing: %v", err)
	}
	var storeExpiry time.Time
	select {
	case storeExpiry = <-expired:
	case <-time.After(10 * time.Second):
		t.Fatal("the store never expired m's lease")
	}
	lead := storeExpiry.Sub(fenced)
	t.Logf("cut at 0; m fenced at %v; store expired its lease at %v; lead %v", fenced.Sub(cut).Round(time.Millisecond), storeExpiry.Sub(cut).Round(time.Millisecond), lead.Round(time.Millisecond))
	if fenced.Sub(cut) > 2*time.Second {
		t.Errorf("m fenced %v after the cut, later than its TTL", fenced.Sub(cut))
	}
	// The store expires no earlier than TTL after it received the last
	// renewal; m fences TTL·(1−ρ)−margin after it sent it.
	if lead < margin {
		t.Errorf("G6 violated: m fenced only %v before the store expired its lease; want at least the margin %v", lead, margin)
	}
	e.connected(10*time.Second, "p")
}
