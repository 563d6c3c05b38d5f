package idc_test

import (
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/proto"
)

// TestG3_OperationHoldsConnect: an operation that outlasts the disconnect
// holds the next epoch's connect back until it ends.
func TestG3_OperationHoldsConnect(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{QuiesceTimeout: time.Minute})
	a := e.join("a")
	e.join("b")
	old := e.connected(10*time.Second, "a", "b")
	ep := current(t, a, 5*time.Second, "a", "b")
	op, err := ep.Begin()
	if err != nil {
		t.Fatal(err)
	}
	e.join("c") // trigger
	next := e.h.WaitFor(t, group, 10*time.Second, "quiescing with c", func(r proto.EpochRecord) bool {
		return r.State == proto.Quiescing && r.Number > old.Number && len(r.Members) == 3
	})
	select {
	case <-op.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a's epoch context did not end at disconnect")
	}
	if _, err := ep.Begin(); !errorsIs(err, idc.ErrNotConnected) && !errorsIs(err, idc.ErrEpochEnded) {
		t.Fatalf("Begin in a disconnected epoch: %v", err)
	}
	time.Sleep(700 * time.Millisecond) // long enough for acks, watch and connect
	for _, r := range e.h.Records(group) {
		if r.Number >= next.Number && r.State == proto.Connected {
			t.Fatalf("G3 violated: epoch %d connected while a still had an operation of epoch %d in progress\n%s", r.Number, ep.Number(), fmtHistory(e))
		}
	}
	for _, ack := range e.h.Acks(group) {
		if ack.ID == "a" && ack.Epoch >= next.Number {
			t.Fatalf("G3 violated: a acknowledged quiesce of epoch %d with an operation in progress", ack.Epoch)
		}
	}
	op.End()
	e.connected(10*time.Second, "a", "b", "c")
	current(t, a, 5*time.Second, "a", "b", "c")
	e.h.CheckG1(t, group)
}

// TestG3_StuckMemberDropped: a member that cannot quiesce by the deadline
// never acknowledges falsely; it is dropped in a further epoch, fenced, and
// the epoch connects without it.
func TestG3_StuckMemberDropped(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{QuiesceTimeout: 500 * time.Millisecond})
	e.join("a")
	b := e.join("b")
	e.join("c")
	old := e.connected(10*time.Second, "a", "b", "c")
	ep := current(t, b, 5*time.Second, "a", "b", "c")
	op, err := ep.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer op.End()
	e.join("d") // trigger
	e.connected(15*time.Second, "a", "c", "d")
	waitDone(t, b, 5*time.Second)
	if err := b.Err(); !errorsIs(err, idc.ErrFenced) || !errorsIs(err, idc.ErrEvicted) {
		t.Errorf("b: %v, want ErrFenced wrapping ErrEvicted", err)
	}
	for _, r := range e.h.Records(group) {
		if r.Number > old.Number && r.State == proto.Connected && proto.Contains(r.Members, proto.Ref{ID: "b", Incarnation: b.Incarnation()}) {
			t.Errorf("G3 violated: b connected in epoch %d without quiescing", r.Number)
		}
	}
	for _, ack := range e.h.Acks(group) {
		if ack.ID == "b" && ack.Epoch > old.Number {
			t.Errorf("G3 violated: b acknowledged quiesce of epoch %d with an operation in progress", ack.Epoch)
		}
	}
	e.h.CheckG1(t, group)
	t.Logf("history:\n%s", fmtHistory(e))
}
