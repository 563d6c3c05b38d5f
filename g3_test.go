package idc_test

import (
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
)

// TestG3_OperationHoldsConnect: an operation that outlasts the disconnect
// holds the next epoch's connect back until it ends. The history says in
// which order things were written: a's acknowledgement and the connect of
// the next epoch must both be written after op.End() was called, and the
// connect after a's acknowledgement, however long the operation lasted.
func TestG3_OperationHoldsConnect(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{QuiesceTimeout: time.Minute})
	a := e.join("a")
	e.join("b")
	old := e.connected(testenv.Mark{}, 10*time.Second, "a", "b")
	ep := current(t, a, 5*time.Second, "a", "b")
	op, err := ep.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mark := e.mark()
	e.join("c") // trigger
	next := e.h.WaitFor(t, group, mark, 10*time.Second, "quiescing with c", func(r proto.EpochRecord) bool {
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
	// b has nothing to quiesce: once its acknowledgement is in, only a's
	// operation holds the connect. Hold it a while longer, so that a
	// coordinator that did not wait for a would connect before op.End().
	// (Not a bound: a slower machine only leaves a broken coordinator less
	// time to show itself; the checks below are on the order of writes.)
	e.h.WaitForAck(t, group, mark, 10*time.Second, "of b", func(ack proto.Ack) bool {
		return ack.ID == "b" && ack.Epoch >= next.Number
	})
	time.Sleep(300 * time.Millisecond)
	end := e.mark() // every write not after it was committed before op.End() was called
	op.End()
	final := e.connected(mark, 10*time.Second, "a", "b", "c")
	current(t, a, 5*time.Second, "a", "b", "c")

	var ackA *testenv.AckEntry
	for _, ack := range e.h.Acks(group) {
		if ack.ID != "a" || ack.Epoch < next.Number {
			continue
		}
		if !end.Precedes(ack.Rev) {
			t.Errorf("G3 violated: a acknowledged quiesce of epoch %d (rev %d, seen %s) before its operation ended (op.End() called at %s, after rev %d)",
				ack.Epoch, ack.Rev, ack.Seen.Format("15:04:05.000"), end.At.Format("15:04:05.000"), end.Rev)
		}
		if ackA == nil {
			ackA = &ack
		}
	}
	for _, r := range e.h.Entries(group) {
		if r.Number < next.Number || r.State != proto.Connected {
			continue
		}
		if !end.Precedes(r.Rev) {
			t.Errorf("G3 violated: epoch %d connected (rev %d, seen %s) while a still had an operation of epoch %d in progress (op.End() called at %s, after rev %d)\n%s",
				r.Number, r.Rev, r.Seen.Format("15:04:05.000"), ep.Number(), end.At.Format("15:04:05.000"), end.Rev, testenv.FormatEntries(e.h.Entries(group)))
		}
		switch {
		case ackA == nil:
			t.Errorf("G3 violated: epoch %d connected (rev %d) though a never acknowledged quiesce of epoch %d or later", r.Number, r.Rev, next.Number)
		case r.Rev < ackA.Rev:
			t.Errorf("G3 violated: epoch %d connected (rev %d) before a acknowledged quiesce (rev %d)", r.Number, r.Rev, ackA.Rev)
		}
	}
	t.Logf("op.End() at %s after rev %d; a's ack rev %d; epoch %d connected rev %d, seen %v after op.End()",
		end.At.Format("15:04:05.000"), end.Rev, ackRev(ackA), final.Number, final.Rev, final.Seen.Sub(end.At).Round(time.Millisecond))
	e.h.CheckG1(t, group)
}

func ackRev(a *testenv.AckEntry) int64 {
	if a == nil {
		return 0
	}
	return a.Rev
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
	old := e.connected(testenv.Mark{}, 10*time.Second, "a", "b", "c")
	ep := current(t, b, 5*time.Second, "a", "b", "c")
	op, err := ep.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer op.End()
	mark := e.mark()
	e.join("d") // trigger
	e.connected(mark, 15*time.Second, "a", "c", "d")
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
