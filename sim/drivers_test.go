package sim

import (
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
