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

// TestL1_ReconnectAfterCrash: a member crashes (its lease simply stops
// being renewed); once the store expires its lease the survivors connect
// in a new epoch within detection + lease wait + a few store rounds.
func TestL1_ReconnectAfterCrash(t *testing.T) {
	e := newEnv(t)
	const margin = 100 * time.Millisecond
	e.coordinator(coordinator.Config{LeaseMargin: margin, Rho: 0.01})
	a := e.join("a")
	e.join("b")
	c := e.join("c")
	e.connected(10*time.Second, "a", "b", "c")
	start := time.Now()
	idc.Crash(c)
	e.connected(15*time.Second, "a", "b")
	took := time.Since(start)
	current(t, a, 5*time.Second, "a", "b")
	// detection ≤ TTL + etcd's expiry granularity (~0.5 s); wait
	// TTL·(1+ρ)+margin; then a few store rounds.
	bound := 2*time.Second + 500*time.Millisecond + time.Duration(float64(2*time.Second)*1.01) + margin + time.Second
	t.Logf("reconnected %v after the crash (bound %v)", took.Round(time.Millisecond), bound)
	if took > bound {
		t.Errorf("L1: reconnected after %v, beyond the bound %v", took, bound)
	}
	e.h.CheckG1(t, group)
}

// TestL1_CoordinatorCrashMidChange crashes the active coordinator while an
// epoch is quiescing; the standby is elected once the crashed one's
// election lease runs out and completes the change.
func TestL1_CoordinatorCrashMidChange(t *testing.T) {
	e := newEnv(t)
	cliA := testenv.Client(t, e.etcd.Endpoints)
	stopA := e.coordinator(coordinator.Config{Client: cliA, Name: "A", ElectionTTL: time.Second})
	waitLeader(t, e.cli, "A")
	e.coordinator(coordinator.Config{Name: "B", ElectionTTL: time.Second})
	a := e.join("a")
	e.join("b")
	e.connected(10*time.Second, "a", "b")
	ep := current(t, a, 5*time.Second, "a", "b")
	op, err := ep.Begin()
	if err != nil {
		t.Fatal(err)
	}
	e.join("c")
	e.h.WaitFor(t, group, 10*time.Second, "quiescing with c", func(r proto.EpochRecord) bool {
		return r.State == proto.Quiescing && len(r.Members) == 3
	})
	// Crash A: its client goes away mid-change, so it cannot resign; its
	// election key stays until the session lease expires.
	cliA.Close()
	stopA()
	op.End()
	start := time.Now()
	e.connected(15*time.Second, "a", "b", "c")
	t.Logf("standby completed the change %v after the crash", time.Since(start).Round(time.Millisecond))
	waitLeader(t, e.cli, "B")
	e.h.CheckG1(t, group)
}

// waitLeader waits until the coordinator election is held by name.
func waitLeader(t *testing.T, cli *clientv3.Client, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := cli.Get(ctx, proto.Keys{}.Election(), clientv3.WithFirstCreate()...)
		cancel()
		if err == nil && len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) == name {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("coordinator %s was not elected", name)
}
