package idc_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
)

// TestG4_CutOffMemberStopsBeforeNextEpoch cuts a member off from the store
// and its peers (its store connection blackholed both ways) while it keeps
// running and doing I/O as a careful application does (Epoch.Err right
// before each I/O). A peer reports it; the coordinator drops it, revokes
// its lease and waits it out (lease mode). The test checks that the
// member's last I/O happened before the next epoch connected (G4), that by
// then it had fenced itself (G6), and logs the lead.
func TestG4_CutOffMemberStopsBeforeNextEpoch(t *testing.T) {
	e := newEnv(t)
	const coordMargin = 100 * time.Millisecond
	e.coordinator(coordinator.Config{LeaseMargin: coordMargin})
	px, through := testenv.Proxy(t, e.etcd.Endpoints[0])
	m := e.join("m", func(c *idc.Config) { c.Client = testenv.Client(t, []string{through}) })
	a := e.join("a")
	old := e.connected(10*time.Second, "a", "m")
	ep := current(t, m, 5*time.Second, "a", "m")

	// m's workload: an I/O every millisecond while its epoch allows it.
	var (
		mu     sync.Mutex
		lastIO time.Time
		ios    int
	)
	ioDone := make(chan struct{})
	go func() {
		defer close(ioDone)
		for ep.Err() == nil {
			mu.Lock()
			lastIO, ios = time.Now(), ios+1
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()

	time.Sleep(200 * time.Millisecond)
	px.BlackholeTx()
	px.BlackholeRx()
	cut := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.ReportFault(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	next := e.h.WaitFor(t, group, 15*time.Second, "connected without m", func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && r.Number > old.Number
	})
	connectSeen := time.Now() // no earlier than the commit of the connect
	if got := proto.IDs(next.Members); len(got) != 1 || got[0] != "a" {
		t.Fatalf("epoch %d connected with %v, want [a]", next.Number, got)
	}
	select {
	case <-m.Done():
	default:
		t.Fatalf("G4/G6 violated: epoch %d connected while m (cut off, not proven stopped) was still running", next.Number)
	}
	if err := m.Err(); !errorsIs(err, idc.ErrFenced) || !errorsIs(err, idc.ErrLeaseExpired) {
		t.Errorf("m: %v, want ErrFenced wrapping ErrLeaseExpired (it could not see the record dropping it)", err)
	}
	<-ioDone
	mu.Lock()
	defer mu.Unlock()
	lead := connectSeen.Sub(lastIO)
	t.Logf("cut at 0: m did %d I/Os, the last at %v; epoch %d connect seen at %v; lead %v",
		ios, lastIO.Sub(cut).Round(time.Millisecond), next.Number, connectSeen.Sub(cut).Round(time.Millisecond), lead.Round(time.Millisecond))
	// The connect commits at least the coordinator's margin after m's own
	// deadline passed (TTL·(1+ρ)+margin from the revocation, against
	// TTL·(1−ρ)−margin from m's last answered renewal, sent before it).
	if lead < coordMargin {
		t.Errorf("G4 violated: m's last I/O only %v before epoch %d connected; want at least the margin %v", lead, next.Number, coordMargin)
	}
	if lastIO.Before(cut) {
		t.Errorf("m stopped its I/O before the cut: the test did not exercise a running, cut-off member")
	}
}
