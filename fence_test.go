package idc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

// resource is a guarded resource: a guard and its fence driver
// (idc.Fence) on the test's store.
type resource struct {
	g *guard.Guard
	d *idc.Fencing
}

func (e *env) resource(name string) *resource {
	e.t.Helper()
	g := guard.New(guard.Config{Name: name})
	d, err := idc.Fence(context.Background(), idc.FencingConfig{Resource: name, Groups: []string{group}, Client: e.cli, Logger: testenv.Logger(e.t)}, g)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(d.Stop)
	return &resource{g: g, d: d}
}

// floor waits until r's guard is fenced at epoch n or above.
func (r *resource) floor(t *testing.T, n uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if f, ok := r.g.Floor(group); ok && f.Epoch >= n {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	f, _ := r.g.Floor(group)
	t.Fatalf("guard not fenced at %d within %v (at %d)", n, timeout, f.Epoch)
}

// acked reports whether resource name acknowledged the fence of epoch n.
func (e *env) acked(name string, n uint64) bool {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.cli.Get(ctx, proto.Keys{Prefix: proto.DefaultPrefix}.FenceAck(group, n, name))
	if err != nil {
		e.t.Fatal(err)
	}
	return len(resp.Kvs) == 1
}

// TestFence_GuardFollowsEpochs (G5, fence mode): a guard started before
// the group formed refuses everything; it follows every epoch and
// acknowledges its fence; a departure's quiescing record raises its
// fence at once, while the next epoch connects only once the guard's
// apply of the older epoch under way has ended and the guard acknowledged;
// from then on the old epoch's tokens are refused.
func TestFence_GuardFollowsEpochs(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{Mode: proto.ModeFence})
	r := e.resource("disk")
	if err := r.g.Begin(&guard.Ticket{Token: token.Token{Group: group, Epoch: 1, Domain: "a", Incarnation: 1}}); !errors.Is(err, guard.ErrNoFence) {
		t.Fatalf("before the group formed: %v, want ErrNoFence", err)
	}
	a := e.join("a")
	b := e.join("b")
	first := e.connected(testenv.Mark{}, 10*time.Second, "a", "b")
	ep := current(t, a, 5*time.Second, "a", "b")
	r.floor(t, ep.Number(), 5*time.Second)

	// An apply of a's under way in the current epoch.
	write := &guard.Ticket{Token: ep.Token(), Write: true}
	if err := r.g.Begin(write); err != nil {
		t.Fatal(err)
	}
	pending := &guard.Ticket{Token: ep.Token(), Write: true}
	if err := r.g.Admit(pending); err != nil {
		t.Fatal(err)
	}
	mark := e.mark()
	b.Close()
	quiescing := e.h.WaitFor(t, group, mark, 10*time.Second, "quiescing without b", func(rec proto.EpochRecord) bool {
		return rec.State == proto.Quiescing && rec.Number > first.Number
	})
	n := quiescing.Number
	r.floor(t, n, 5*time.Second)
	if err := r.g.Begin(pending); !errors.Is(err, guard.ErrStale) {
		t.Fatalf("a request admitted in %d, applied after the fence of %d: %v, want ErrStale", ep.Number(), n, err)
	}
	// The apply under way holds the acknowledgement, and so the connect,
	// back.
	time.Sleep(300 * time.Millisecond)
	if e.acked("disk", n) {
		t.Fatalf("fence %d acknowledged while an apply of epoch %d was under way", n, ep.Number())
	}
	if rec := e.h.Records(group); rec[len(rec)-1].State != proto.Quiescing {
		t.Fatalf("epoch %d connected without the guard's acknowledgement", n)
	}
	if err := r.g.End(write); err != nil {
		t.Fatal(err)
	}
	e.connected(mark, 10*time.Second, "a")
	if !e.acked("disk", n) {
		t.Fatalf("epoch %d connected without the fence acknowledged", n)
	}
	if err := r.g.Begin(&guard.Ticket{Token: ep.Token()}); !errors.Is(err, guard.ErrStale) {
		t.Fatalf("a token of ended epoch %d: %v, want ErrStale", ep.Number(), err)
	}
	now := current(t, a, 5*time.Second, "a")
	if err := r.g.Apply(&guard.Ticket{Token: now.Token(), Write: true}, func() error { return nil }); err != nil {
		t.Fatalf("a token of the current epoch: %v", err)
	}
}

// TestFence_DownGuardHoldsChanges: a resource whose fence driver is down
// holds fence-mode changes back (its registration stays; the coordinator
// waits for its acknowledgement, not for leases); restarted, its new
// guard refuses everything until it has read the group's fence, then
// acknowledges and the change connects.
func TestFence_DownGuardHoldsChanges(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{Mode: proto.ModeFence})
	r := e.resource("disk")
	a := e.join("a")
	b := e.join("b")
	first := e.connected(testenv.Mark{}, 10*time.Second, "a", "b")
	r.floor(t, first.Number, 5*time.Second)
	r.d.Stop()
	mark := e.mark()
	b.Close()
	quiescing := e.h.WaitFor(t, group, mark, 10*time.Second, "quiescing without b", func(rec proto.EpochRecord) bool {
		return rec.State == proto.Quiescing
	})
	// Longer than a departed member's lease wait (2 s lease, ρ, margin):
	// in fence mode with a registered resource, leases are not what
	// counts.
	time.Sleep(3 * time.Second)
	if rec := e.h.Records(group); rec[len(rec)-1].Number != quiescing.Number || rec[len(rec)-1].State != proto.Quiescing {
		t.Fatalf("the change connected with the resource's fence driver down: %s", testenv.Format(rec))
	}
	// Restart: a new guard (the resource restarted) and driver.
	r2 := e.resource("disk")
	r2.floor(t, quiescing.Number, 5*time.Second)
	e.connected(mark, 10*time.Second, "a")
	current(t, a, 5*time.Second, "a")
}
