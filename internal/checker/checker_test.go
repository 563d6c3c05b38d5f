package checker

// Each check was shown to fail by breaking it once, watching the tests
// below fail for the right reason, and restoring it:
//
//   - stale after a fence: staleWrites compared a.Epoch+1 < f.epoch (a
//     write one epoch below the fence passed): the two "stale apply ...
//     fence" cases failed.
//   - stale after a connect: staleWrites compared a.At > at (a write
//     applied at the very instant the later epoch connected passed):
//     "stale apply at the connect of a later epoch" failed.
//   - lost: history.lost allowed any write ever made to the block
//     (dropped op.ret >= latestCall): "lost acknowledged write" failed (it
//     still failed linearizability, but Lost was empty); allowing zeros
//     after an acknowledged write made "lost acknowledged write: zeros"
//     fail.
//   - linearizability: the register's Step accepted every read: every
//     case with a non-linearizable block failed, and so did the timeout
//     in porcupine (it found a linearization at once).
//   - the final read placed at the start of the history instead of the
//     end: the lost cases failed their NonLinearizable.
//   - a failed write returning when its error came instead of never:
//     "good" failed (block 4 holds a write that failed before a later one
//     was acknowledged).
//   - timeout: linearizable took porcupine.Unknown for a pass: "timeout
//     in porcupine" failed.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/storage"
)

// t0 is the time the tests' histories begin.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// at returns t0 + ms milliseconds.
func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// ns returns t0 + ms milliseconds in Unix nanoseconds, as the apply log
// has it.
func ns(ms int) int64 { return at(ms).UnixNano() }

// write is an acknowledged write of value to block, called at call and
// answered at ret (ms after t0).
func write(block int, value uint64, call, ret int) Op {
	return Op{Kind: Write, Block: block, Value: value, Call: at(call), Return: at(ret), Outcome: OK}
}

// failed is a write that failed at ret.
func failed(block int, value uint64, call, ret int) Op {
	return Op{Kind: Write, Block: block, Value: value, Call: at(call), Return: at(ret), Outcome: Failed}
}

// pending is a write that had no answer.
func pending(block int, value uint64, call int) Op {
	return Op{Kind: Write, Block: block, Value: value, Call: at(call), Outcome: Pending}
}

// read is a read of block that returned value.
func read(block int, value uint64, call, ret int) Op {
	return Op{Kind: Read, Block: block, Value: value, Call: at(call), Return: at(ret), Outcome: OK}
}

// apply is an apply log line of op (write, trim, zero) of epoch in group.
func apply(op, group string, epoch uint64, ms int) storage.Applied {
	return storage.Applied{Op: op, Group: group, Epoch: epoch, Domain: "disk", Inc: 1, At: ns(ms)}
}

// fence is the line of a fence of epoch in group that held.
func fence(group string, epoch uint64, ms int) storage.Applied {
	return storage.Applied{Op: "fence", Group: group, Epoch: epoch, At: ns(ms)}
}

// refused is the line of a write of epoch in group the guard refused.
func refused(group string, epoch uint64, ms int) storage.Applied {
	return storage.Applied{Op: "refused", Group: group, Epoch: epoch, Domain: "disk", At: ns(ms), Request: "write", Reason: "stale"}
}

// good is a history with every allowed kind of ambiguity.
func good() History {
	return History{
		Ops: []Op{
			// Block 0: two overlapping writes; a read during both sees
			// the second, a later read the first (the second took effect
			// first), and so does the end.
			write(0, 1, 0, 10),
			write(0, 2, 5, 15),
			read(0, 2, 6, 8),
			read(0, 1, 20, 22),
			// Block 1: a pending write, not yet seen, then seen.
			write(1, 3, 0, 5),
			pending(1, 4, 10),
			read(1, 3, 20, 25),
			read(1, 4, 30, 35),
			// Block 2: a failed write that never took effect.
			write(2, 5, 0, 5),
			failed(2, 6, 6, 8),
			read(2, 5, 9, 10),
			// Block 3: never written; a failed read's garbage is ignored.
			read(3, 0, 1, 2),
			{Kind: Read, Block: 3, Value: 999, Call: at(3), Return: at(4), Outcome: Failed},
			{Kind: Read, Block: 3, Value: 998, Call: at(5), Outcome: Pending},
			// Block 4: a failed write that took effect after a later
			// acknowledged one (a late copy: the stale check's business).
			failed(4, 7, 0, 5),
			write(4, 8, 10, 20),
			// Block 5: writes that touch at an instant are concurrent.
			write(5, 9, 0, 10),
			write(5, 10, 10, 20),
		},
		// The apply log, in time order.
		Applied: []storage.Applied{
			apply("write", "g", 1, 1),
			apply("trim", "g", 1, 2),
			fence("g", 2, 3),
			refused("g", 1, 4), // a stale write refused: fine
			// Group h has no fences (lease mode): judged by Connected.
			apply("write", "h", 1, 9),
			apply("write", "h", 2, 10),
			// Epoch 3 connected at 11: ignored for group g, which has
			// fences.
			apply("write", "g", 2, 12),
			apply("zero", "g", 2, 13),
			fence("g", 3, 14),
			apply("write", "g", 3, 15),
		},
		Connected: map[uint64]time.Time{1: at(0), 2: at(10), 3: at(11)},
		Final:     map[int]uint64{0: 1, 1: 4, 2: 5, 3: 0, 4: 7, 5: 9},
	}
}

// with returns good() changed by f.
func with(f func(h *History)) History {
	h := good()
	f(&h)
	return h
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		h       History
		stale   int    // how many stale writes
		lost    []Lost // nil: none
		nonLin  []int  // nil: none
		invalid bool
		reason  string // in Reason
	}{
		{name: "good", h: good()},
		{name: "empty", h: History{}},
		{
			name: "stale apply after a fence",
			h: with(func(h *History) {
				h.Applied = append(h.Applied, apply("write", "g", 2, 20))
			}),
			stale:  1,
			reason: "1 write of ended epochs applied after a later epoch took over (first: a write of epoch 2 by \"disk\" of group \"g\" at 2026-01-02T03:04:05.02Z, after the fence of epoch 3 held at 2026-01-02T03:04:05.014Z)",
		},
		{
			name: "stale apply two epochs below a fence",
			h: with(func(h *History) {
				h.Applied = append(h.Applied, apply("zero", "g", 1, 20), apply("trim", "g", 2, 21))
			}),
			stale:  2,
			reason: "2 writes of ended epochs applied after a later epoch took over (first: a zero of epoch 1",
		},
		{
			name: "stale apply after a later epoch connected",
			h: with(func(h *History) {
				h.Applied = append(h.Applied, apply("write", "h", 1, 11))
			}),
			stale:  1,
			reason: "after epoch 2 connected at 2026-01-02T03:04:05.01Z",
		},
		{
			name: "stale apply at the connect of a later epoch",
			h: with(func(h *History) {
				h.Applied = append(h.Applied, apply("write", "h", 1, 10))
			}),
			stale: 1,
		},
		{
			name: "stale apply after the earliest of later epochs connected",
			h: History{
				Applied:   []storage.Applied{apply("write", "h", 1, 5)},
				Connected: map[uint64]time.Time{1: at(0), 2: at(10), 3: at(4)},
			},
			stale:  1,
			reason: "after epoch 3 connected at 2026-01-02T03:04:05.004Z",
		},
		{
			name: "lost acknowledged write",
			h: with(func(h *History) {
				h.Ops = append(h.Ops, write(6, 11, 0, 5), write(6, 12, 10, 15))
				h.Final[6] = 11
			}),
			lost:   []Lost{{Block: 6, Want: 12, Got: 11}},
			nonLin: []int{6},
			reason: "1 block does not hold the last acknowledged write or a later one (first: block 6 holds write 11, not the last acknowledged write 12)",
		},
		{
			name: "lost acknowledged write: zeros",
			h: with(func(h *History) {
				h.Ops = append(h.Ops, write(6, 11, 0, 5))
				h.Final[6] = 0
			}),
			lost:   []Lost{{Block: 6, Want: 11, Got: 0}},
			nonLin: []int{6},
			reason: "block 6 holds zeros, not the last acknowledged write 11",
		},
		{
			name: "final value no write had",
			h: with(func(h *History) {
				h.Final[3] = 42
			}),
			lost:   []Lost{{Block: 3, Want: 0, Got: 42}},
			nonLin: []int{3},
			reason: "block 3 holds write 42, not zeros (no write was acknowledged)",
		},
		{
			name: "final value of another block's write",
			h: with(func(h *History) {
				h.Final[0] = 3
			}),
			lost:   []Lost{{Block: 0, Want: 2, Got: 3}},
			nonLin: []int{0},
		},
		{
			name: "final value of a block with no operations",
			h: with(func(h *History) {
				h.Final[7] = 5
			}),
			lost:   []Lost{{Block: 7, Want: 0, Got: 5}},
			nonLin: []int{7},
		},
		{
			name: "non-linearizable read",
			h: with(func(h *History) {
				h.Ops = append(h.Ops, write(6, 11, 0, 5), write(6, 12, 10, 15), read(6, 11, 20, 25))
			}),
			nonLin: []int{6},
			reason: "1 block's reads and writes are not linearizable (blocks 6)",
		},
		{
			name: "read going back in time",
			h: with(func(h *History) {
				// Block 1 read 4 (pending) at 30..35, then 3 again.
				h.Ops = append(h.Ops, read(1, 3, 40, 45))
			}),
			nonLin: []int{1},
		},
		{
			name: "read of a value never written",
			h: with(func(h *History) {
				h.Ops = append(h.Ops, read(2, 77, 1, 2), read(5, 3, 1, 2))
			}),
			nonLin: []int{2, 5},
			reason: "2 blocks' reads and writes are not linearizable (blocks 2, 5)",
		},
		{
			name: "every fault at once",
			h: with(func(h *History) {
				h.Applied = append(h.Applied, apply("write", "g", 1, 30))
				h.Final[0] = 2 // allowed, but read 1 came after both writes
				h.Final[1] = 3 // allowed, but read 4 came before
				h.Final[5] = 0
			}),
			stale:  1,
			lost:   []Lost{{Block: 5, Want: 10, Got: 0}},
			nonLin: []int{0, 1, 5},
			reason: "1 write of ended epochs applied after a later epoch took over (first: a write of epoch 1",
		},
		{
			name:    "write of value 0",
			h:       with(func(h *History) { h.Ops = append(h.Ops, write(6, 0, 0, 1)) }),
			invalid: true,
			reason:  "invalid history: op 18: a write of value 0 to block 6",
		},
		{
			name:    "value written twice",
			h:       with(func(h *History) { h.Ops = append(h.Ops, pending(6, 1, 0)) }),
			invalid: true,
			reason:  "value 1 written twice (to blocks 0 and 6)",
		},
		{
			name:    "return before call",
			h:       with(func(h *History) { h.Ops = append(h.Ops, read(6, 0, 5, 4)) }),
			invalid: true,
			reason:  "returned before its call",
		},
		{
			name:    "unknown kind",
			h:       with(func(h *History) { h.Ops = append(h.Ops, Op{Kind: 9, Outcome: OK}) }),
			invalid: true,
		},
		{
			name:    "unknown outcome",
			h:       with(func(h *History) { h.Ops = append(h.Ops, Op{Kind: Read}) }),
			invalid: true,
		},
		{
			name: "unknown apply",
			h: with(func(h *History) {
				h.Applied = append(h.Applied, apply("erase", "g", 1, 30))
			}),
			invalid: true,
			reason:  `apply log entry 11: unknown op "erase"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Check(tt.h, time.Minute)
			wantOK := tt.stale == 0 && len(tt.lost) == 0 && len(tt.nonLin) == 0 && !tt.invalid
			if v.OK != wantOK || (v.Reason == "") != wantOK {
				t.Errorf("OK = %v, Reason %q; want OK = %v", v.OK, v.Reason, wantOK)
			}
			if len(v.Stale) != tt.stale {
				t.Errorf("Stale = %+v, want %d", v.Stale, tt.stale)
			}
			if !slices.Equal(v.Lost, tt.lost) {
				t.Errorf("Lost = %+v, want %+v", v.Lost, tt.lost)
			}
			if !slices.Equal(v.NonLinearizable, tt.nonLin) {
				t.Errorf("NonLinearizable = %v, want %v", v.NonLinearizable, tt.nonLin)
			}
			if (v.Invalid != nil) != tt.invalid {
				t.Errorf("Invalid = %v, want invalid %v", v.Invalid, tt.invalid)
			}
			if v.TimedOut || len(v.Unchecked) > 0 {
				t.Errorf("TimedOut = %v, Unchecked %v", v.TimedOut, v.Unchecked)
			}
			if !strings.Contains(v.Reason, tt.reason) {
				t.Errorf("Reason = %q, want it to contain %q", v.Reason, tt.reason)
			}
			if strings.Contains(v.Reason, "\n") {
				t.Errorf("Reason %q is more than a line", v.Reason)
			}
		})
	}
}

func TestCheckCounts(t *testing.T) {
	v := Check(good(), time.Minute)
	if v.Writes != 10 || v.Acknowledged != 7 || v.Reads != 6 {
		t.Errorf("Writes, Acknowledged, Reads = %d, %d, %d; want 10, 7, 6", v.Writes, v.Acknowledged, v.Reads)
	}
}

// hard is a history porcupine takes ages to reject: n writes to block 0
// that may all take effect in any order, and a read of a value none of
// them wrote, which it tries after every order of every subset of them.
func hard(n int) History {
	var h History
	for i := range n {
		h.Ops = append(h.Ops, pending(0, uint64(i+1), i))
	}
	h.Ops = append(h.Ops, read(0, 999, n+10, n+11))
	return h
}

func TestCheckTimeout(t *testing.T) {
	for _, tt := range []struct {
		name    string
		h       History
		timeout time.Duration
	}{
		// The time is up before porcupine starts.
		{"1ns", good(), time.Nanosecond},
		// porcupine gives up (Unknown).
		{"in porcupine", hard(26), 50 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := Check(tt.h, tt.timeout)
			if v.OK || !v.TimedOut || len(v.Unchecked) == 0 {
				t.Fatalf("OK = %v, TimedOut = %v, Unchecked = %v; want a timeout", v.OK, v.TimedOut, v.Unchecked)
			}
			if len(v.NonLinearizable) > 0 {
				t.Errorf("NonLinearizable = %v, want none decided", v.NonLinearizable)
			}
			want := fmt.Sprintf("the linearizability check did not finish within %v", tt.timeout)
			if !strings.Contains(v.Reason, want) {
				t.Errorf("Reason = %q, want it to contain %q", v.Reason, want)
			}
		})
	}
	// With time enough, the same history is rejected (small enough to
	// finish).
	if v := Check(hard(8), time.Minute); v.OK || !slices.Equal(v.NonLinearizable, []int{0}) {
		t.Errorf("hard(8): OK = %v, NonLinearizable = %v; want block 0", v.OK, v.NonLinearizable)
	}
}

func TestVisualize(t *testing.T) {
	h := with(func(h *History) {
		h.Ops = append(h.Ops, write(6, 11, 0, 5), write(6, 12, 10, 15), read(6, 11, 20, 25))
	})
	v := Check(h, time.Minute)
	var buf bytes.Buffer
	if err := Visualize(h, v.NonLinearizable, time.Minute, &buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<html", "write 12", "read 11", "block 6"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the visualization lacks %q", want)
		}
	}
	if err := Visualize(History{Ops: []Op{write(0, 0, 0, 1)}}, nil, 0, &buf); err == nil {
		t.Error("Visualize of an invalid history: no error")
	}
}

func TestReadApplyLog(t *testing.T) {
	// Lines as the storage writes them (encoding/json's Encoder, which
	// its apply log matches byte for byte).
	want := good().Applied
	var log bytes.Buffer
	enc := json.NewEncoder(&log)
	for i, a := range want {
		if a.Op == "fence" {
			// A fence's line has its group, epoch and time only.
			fmt.Fprintf(&log, `{"op":"fence","group":%q,"epoch":%d,"at":%d}`+"\n", a.Group, a.Epoch, a.At)
			continue
		}
		if i == 3 {
			log.WriteString("\n") // a blank line is skipped
		}
		if err := enc.Encode(a); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadApplyLog(&log)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("ReadApplyLog = %+v, want %+v", got, want)
	}

	line := `{"op":"write","group":"g","epoch":1,"domain":"disk","incarnation":1,"id":7,"offset":0,"length":4096,"at":5}`
	for _, tt := range []struct {
		name, log, want string
	}{
		{"torn line", line + "\n" + line + "\n" + line[:40] + "\n", "apply log line 3: "},
		{"torn last line", line + "\n" + line[:40], "apply log line 2: "},
		{"not JSON", "\n" + "write g 1\n" + line, "apply log line 2: "},
		{"wrong type", `{"op":"write","epoch":"one"}`, "apply log line 1: "},
		{"unknown op", line + "\n" + `{"op":"erase","epoch":1}`, `apply log line 2: unknown op "erase"`},
		{"line too long", line + "\n" + strings.Repeat(" ", maxLine+1) + "\n", "apply log line 2: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadApplyLog(strings.NewReader(tt.log))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("ReadApplyLog: %v, want an error starting %q", err, tt.want)
			}
			if tt.name == "unknown op" && !errors.Is(err, errApplyOp) {
				t.Errorf("ReadApplyLog: %v, not errApplyOp", err)
			}
		})
	}
}

// TestFirstApplies: each epoch's earliest write, trim or zero; fences,
// refusals and later writes do not count.
func TestFirstApplies(t *testing.T) {
	log := []storage.Applied{
		{Op: "fence", Epoch: 3, At: 1},
		{Op: "refused", Epoch: 2, At: 2},
		{Op: "write", Epoch: 3, At: 5},
		{Op: "zero", Epoch: 2, At: 4},
		{Op: "write", Epoch: 3, At: 3},
		{Op: "trim", Epoch: 4, At: 9},
	}
	got := FirstApplies(log)
	want := map[uint64]time.Time{2: time.Unix(0, 4), 3: time.Unix(0, 3), 4: time.Unix(0, 9)}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for e, w := range want {
		if !got[e].Equal(w) {
			t.Errorf("epoch %d: %v, want %v", e, got[e], w)
		}
	}
}
