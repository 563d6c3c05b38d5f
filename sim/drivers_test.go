package sim

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/membership"
	"github.com/idc-dev/idc/proto"
)

// TestRealDriversInSimulatedWorld runs the real coordinator Leader and
// real membership drivers over the simulated store, network and clocks:
// the same code as on etcd, deterministically, in one goroutine.
func TestRealDriversInSimulatedWorld(t *testing.T) {
	w := bareWorld(1)
	cfg := w.cfg
	cn := w.addNode("c1", clock{rate: 1.01, offset: time.Hour})
	coordinator.StartLeader(coordinator.LeaderConfig{
		Store: storeClient{w, cn.id}, Clock: nodeClock{w, cn.id}, Machine: cfg.coordConfig(),
		OpTimeout: cfg.OpTimeout, WatchCheck: time.Second, MaxTxnOps: cfg.MaxTxnOps, Logger: quiet,
	})
	var ds []*membership.Driver
	for i, id := range []string{"a", "b", "c"} {
		n := w.addNode(id, clock{rate: 0.99, offset: time.Duration(i) * time.Minute})
		membership.Start(membership.Config{
			Group: group, ID: id, Incarnation: uint64(i + 1), Lease: cfg.memberLease(),
			RenewInterval: cfg.renewInterval(), OpTimeout: cfg.OpTimeout, WatchCheck: time.Second,
			Store: storeClient{w, n.id}, Clock: nodeClock{w, n.id}, Logger: quiet,
		}, func(d *membership.Driver, err error) {
			if err != nil {
				t.Errorf("join %s: %v", id, err)
				return
			}
			ds = append(ds, d)
		})
	}
	w.runFor(10 * time.Second)
	if len(ds) != 3 {
		t.Fatalf("%d of 3 joined", len(ds))
	}
	var num uint64
	for _, d := range ds {
		ep := d.Current()
		if ep == nil {
			t.Fatalf("%s not connected (phase %v, err %v)", d.Member().ID, d.Phase(), d.Err())
		}
		if len(ep.Members()) != 3 || num != 0 && ep.Number() != num {
			t.Fatalf("%s connected in epoch %d with %v", d.Member().ID, ep.Number(), proto.IDs(ep.Members()))
		}
		num = ep.Number()
	}
	t.Logf("all connected in epoch %d after %d steps", num, w.steps)
}

// TestLateFaultReportIsReported: a fault report that reaches the store
// after a later epoch connected is not counted by the coordinator; the
// member driver reads the epoch record in the same transaction and tells
// the caller so (ErrEpochEnded) instead of returning nil.
func TestLateFaultReportIsReported(t *testing.T) {
	w := bareWorld(3)
	cfg := w.cfg
	n := w.addNode("a", clock{rate: 1})
	var d *membership.Driver
	membership.Start(membership.Config{
		Group: group, ID: "a", Incarnation: 1, Lease: cfg.memberLease(),
		RenewInterval: cfg.renewInterval(), OpTimeout: cfg.OpTimeout, WatchCheck: time.Minute,
		Store: storeClient{w, n.id}, Clock: nodeClock{w, n.id}, Logger: quiet,
	}, func(drv *membership.Driver, err error) {
		if err != nil {
			t.Fatal(err)
		}
		d = drv
	})
	w.runFor(time.Second)
	if d == nil {
		t.Fatal("not joined")
	}
	a, b := d.Member(), proto.Member{ID: "b", Incarnation: 7, TTL: cfg.TTL}
	put := func(rec proto.EpochRecord) {
		w.store.apply([]Op{{Kind: OpPut, Key: keys.Epoch(group), Val: proto.EncodeEpoch(rec)}})
	}
	put(proto.EpochRecord{Group: group, Number: 1, State: proto.Connected, Mode: proto.ModeLease, Members: proto.SortMembers([]proto.Member{a, b})})
	w.runFor(time.Second)
	if ep := d.Current(); ep == nil || ep.Number() != 1 {
		t.Fatalf("a not connected in epoch 1: %v", d.Phase())
	}
	report := func() error {
		var got error
		done := false
		d.ReportFault("b", func(err error) { got, done = err, true })
		w.runFor(time.Second)
		if !done {
			t.Fatal("ReportFault never answered")
		}
		return got
	}
	if err := report(); err != nil {
		t.Fatalf("a report in the connected epoch: %v", err)
	}
	// The group moves on to epoch 3 (a member still, but a's watch hangs,
	// so a goes on believing it is in epoch 1): a's report of epoch 1
	// lands too late to count.
	w.store.hang(n.id)
	put(proto.EpochRecord{Group: group, Number: 2, State: proto.Quiescing, Mode: proto.ModeLease, Members: []proto.Member{a}, Prev: proto.SortMembers([]proto.Member{a, b}), PrevNumber: 1})
	if err := report(); err != nil {
		t.Fatalf("a report of epoch 1 while epoch 2 is quiescing still counts: %v", err)
	}
	put(proto.EpochRecord{Group: group, Number: 2, State: proto.Connected, Mode: proto.ModeLease, Members: []proto.Member{a}})
	err := report()
	if !errors.Is(err, proto.ErrEpochEnded) || !strings.Contains(err.Error(), "not counted") {
		t.Fatalf("a report landing after epoch 2 connected: %v, want ErrEpochEnded saying it was not counted", err)
	}
	t.Log(err)
}
