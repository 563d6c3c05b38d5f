package idc_test

import (
	"context"
	"testing"
	"time"

	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/store"
)

// TestL1_BlackholedStoreEndpoint: the coordinator's client has three
// endpoints of one store; one of them is silently blackholed (packets
// dropped both ways, the connection left open), as a dead path in a
// network does, then a second one too. Whichever carried the
// coordinator's watch, election and requests, the group still changes
// epochs while one path is alive, within a bound from the configuration.
func TestL1_BlackholedStoreEndpoint(t *testing.T) {
	const (
		watchCheck = 500 * time.Millisecond
		opTimeout  = time.Second
	)
	e := newEnv(t)
	pa, a := testenv.Proxy(t, e.etcd.Endpoints[0])
	pb, b := testenv.Proxy(t, e.etcd.Endpoints[0])
	_, c := testenv.Proxy(t, e.etcd.Endpoints[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ccli, err := store.Dial(ctx, store.DialConfig{Endpoints: []string{a, b, c}, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ccli.Close() })
	e.coordinator(coordinator.Config{Client: ccli, WatchCheck: watchCheck, OpTimeout: opTimeout})
	e.join("m1")
	e.join("m2")
	e.connected(testenv.Mark{}, 10*time.Second, "m1", "m2")

	// A request or watch may land on a dead connection until gRPC's
	// keep-alive closes it (KeepAliveTime + KeepAliveTimeout); a leader
	// whose election lease lapsed meanwhile is replaced within the
	// election TTL; then a watchdog cycle (2·WatchCheck) and a few store
	// rounds (OpTimeout each). Usually much less is needed: a request
	// stuck on a dead connection is repeated on the next one and a hung
	// watch is replaced on a fresh stream, so a change typically connects
	// in 1-3 s (12 s when a watch replaced on the shared stream waits for
	// the keep-alive), which the log shows; a timing like that is a
	// figure, not a bound. Without the keep-alive the coordinator waited
	// on the dead stream for ever.
	keepalive := store.DefaultKeepAliveTime + store.DefaultKeepAliveTimeout
	bound := keepalive + coordinator.DefaultElectionTTL + 2*watchCheck + 4*opTimeout
	phases := []struct {
		cut, heal interface {
			BlackholeTx()
			BlackholeRx()
			UnblackholeTx()
			UnblackholeRx()
		}
		join    string
		members []string
		bound   time.Duration
	}{
		{cut: pa, join: "m3", members: []string{"m1", "m2", "m3"}, bound: bound},
		{cut: pb, join: "m4", members: []string{"m1", "m2", "m3", "m4"}, bound: bound},
	}
	for i, ph := range phases {
		if ph.heal != nil {
			ph.heal.UnblackholeTx()
			ph.heal.UnblackholeRx()
		}
		ph.cut.BlackholeTx()
		ph.cut.BlackholeRx()
		mark := e.mark()
		start := time.Now()
		e.join(ph.join)
		rec := e.connected(mark, ph.bound+10*time.Second, ph.members...)
		took := rec.Seen.Sub(start)
		t.Logf("phase %d (%d of 3 endpoints blackholed): %s connected after %v (bound %v)", i+1, i+1, ph.join, took.Round(time.Millisecond), ph.bound)
		if took > ph.bound {
			t.Errorf("L1: phase %d: with %d store endpoints blackholed the change took %v, beyond the bound %v", i+1, i+1, took, ph.bound)
		}
	}
	e.h.CheckG1(t, group)
}
