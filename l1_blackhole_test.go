package idc_test

import (
	"context"
	"testing"
	"time"

	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/store"
)

// TestL1_BlackholedStoreEndpoint: the coordinator's client has two
// endpoints of one store; one of them is silently blackholed (packets
// dropped both ways, the connection left open), as a dead path in a
// network does. Whichever of the two carried the coordinator's watch and
// requests, the group still changes epochs, within a bound from the
// configuration: the gRPC keep-alive closes the dead connection
// (KeepAliveTime + KeepAliveTimeout), the watchdog replaces a silent watch
// (2·WatchCheck), and requests caught on the dead path time out
// (OpTimeout) and are retried. Then the other endpoint is blackholed.
// Without keep-alive and watchdog the coordinator waited on the dead
// stream for ever.
func TestL1_BlackholedStoreEndpoint(t *testing.T) {
	const (
		watchCheck = 500 * time.Millisecond
		opTimeout  = time.Second
	)
	e := newEnv(t)
	pa, a := testenv.Proxy(t, e.etcd.Endpoints[0])
	pb, b := testenv.Proxy(t, e.etcd.Endpoints[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ccli, err := store.Dial(ctx, store.DialConfig{Endpoints: []string{a, b}, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ccli.Close() })
	e.coordinator(coordinator.Config{Client: ccli, WatchCheck: watchCheck, OpTimeout: opTimeout})
	e.join("m1")
	e.join("m2")
	e.connected(testenv.Mark{}, 10*time.Second, "m1", "m2")

	// Phase 1: endpoint a is dead, b alive and connected. A request stuck
	// on a is repeated on b within its OpTimeout, and a watch stuck on a's
	// stream is replaced on a fresh stream within 2·WatchCheck: the change
	// takes a few store rounds and at most one watchdog cycle.
	// Phase 2: b is dead, and a, healed, must first reconnect (its old
	// connection was broken by the blackhole): until gRPC's keep-alive
	// closes b's connection (KeepAliveTime + KeepAliveTimeout) b may be the
	// only connection gRPC deems ready, so that is the bound.
	keepalive := store.DefaultKeepAliveTime + store.DefaultKeepAliveTimeout
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
		{cut: pa, join: "m3", members: []string{"m1", "m2", "m3"}, bound: 2*watchCheck + 4*opTimeout},
		{cut: pb, heal: pa, join: "m4", members: []string{"m1", "m2", "m3", "m4"}, bound: keepalive + 2*watchCheck + 4*opTimeout},
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
		t.Logf("phase %d (endpoint %d blackholed): %s connected after %v (bound %v)", i+1, i+1, ph.join, took.Round(time.Millisecond), ph.bound)
		if took > ph.bound {
			t.Errorf("L1: phase %d: with one store endpoint blackholed the change took %v, beyond the bound %v", i+1, took, ph.bound)
		}
	}
	e.h.CheckG1(t, group)
}
