// Package checker judges one run of the storage scenario (DESIGN §8): a
// client wrote unique payloads to the blocks of a disk and read blocks
// back, and the storage kept its apply log. Check finds three kinds of
// fault in such a run:
//
//   - stale writes: a write of an ended epoch applied after the fence of
//     a later epoch of its group held (G5), or, in lease mode, where the
//     storage logs no fences, after a later epoch connected;
//   - lost writes: a block whose final content is neither the last
//     acknowledged write to it nor a write that may have taken effect
//     after that one;
//   - non-linearizable blocks: a block whose reads and writes, seen as
//     operations on a register, have no linearization (checked with
//     porcupine).
//
// Each write carries a unique number, its value, and a block holds the
// number of the write whose payload it holds (0: never written, zeros). A
// write the client saw fail, or that had no answer by the end of the run,
// may or may not have taken effect, at any time after its call: the
// checks allow both.
package checker

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc/storage"
)

// Kind is the kind of a client operation.
type Kind uint8

// The kinds of operation.
const (
	// Write writes the payload of a unique write number to a block.
	Write Kind = iota + 1
	// Read reads a block back and decodes the write number it holds.
	Read
)

// String returns "write" or "read".
func (k Kind) String() string {
	switch k {
	case Write:
		return "write"
	case Read:
		return "read"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Outcome is how a client operation ended.
type Outcome uint8

// The outcomes of an operation.
const (
	// OK: acknowledged (a read: its Value is what it read).
	OK Outcome = iota + 1
	// Failed: the client got an error. A failed write may or may not have
	// been applied; a failed read is ignored.
	Failed
	// Pending: no answer by the end of the history. A pending write may or
	// may not have been applied; a pending read is ignored.
	Pending
)

// String returns "ok", "failed" or "pending".
func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Failed:
		return "failed"
	case Pending:
		return "pending"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Op is one client operation.
type Op struct {
	Kind  Kind
	Block int
	// Value is a write's unique number (> 0), or a read's result: the
	// number of the write whose payload the block held (0: zeros).
	Value uint64
	// Call is when the client issued the operation, Return when it had its
	// answer (zero if Pending).
	Call, Return time.Time
	Outcome      Outcome
}

// History is what one run produced.
type History struct {
	// Ops are the client's operations, in any order.
	Ops []Op
	// Applied is the storage's apply log, in its order.
	Applied []storage.Applied
	// Connected maps an epoch to when it connected at the store. It is
	// used only for groups whose apply log has no fences (lease mode); it
	// may be nil.
	Connected map[uint64]time.Time
	// Final maps a block to the write it holds at the end, read after
	// every operation ended; nil: not checked.
	Final map[int]uint64
}

// Verdict is the checker's judgement of a History.
type Verdict struct {
	// OK: none of the faults below was found, every check finished and
	// the history is valid.
	OK bool
	// Stale lists, in log order, the writes of an ended epoch applied
	// after the fence (or, without fences, the connect) of a later epoch
	// of their group.
	Stale []storage.Applied
	// Lost lists, by block, the blocks whose final content is neither the
	// last acknowledged write nor a write that may have taken effect
	// after it.
	Lost []Lost
	// NonLinearizable lists, in order, the blocks whose reads and writes
	// are not linearizable.
	NonLinearizable []int
	// TimedOut: the linearizability check did not finish within the
	// timeout. It is a failure, never a pass.
	TimedOut bool
	// Unchecked lists, in order, the blocks whose linearizability was not
	// decided when the time ran out.
	Unchecked []int
	// Invalid, if not nil, says why the history itself is malformed (a
	// write of value 0, a value written twice, an unknown kind, outcome
	// or apply); the client's operations were then not checked.
	Invalid error
	// Writes counts the writes issued, Acknowledged those acknowledged,
	// Reads the reads answered.
	Writes, Reads, Acknowledged int
	// Reason is one line saying why the verdict is not OK (empty if OK).
	Reason string
}

// Lost is a block that does not hold what it should at the end.
type Lost struct {
	Block int
	// Want is the last acknowledged write to the block (0 if none was).
	Want uint64
	// Got is the write the block holds.
	Got uint64
}

// forever is the return time of a write that may take effect at any time
// after its call: a failed or pending one.
const forever = math.MaxInt64

// Check judges h: its apply log for stale writes, its final contents for
// lost writes, and each block's operations for linearizability. timeout
// bounds the linearizability check of all blocks together (0 or less: no
// bound); if it runs out, the verdict is TimedOut and not OK.
func Check(h History, timeout time.Duration) Verdict {
	var v Verdict
	stale, err := staleWrites(h.Applied, h.Connected)
	for _, s := range stale {
		v.Stale = append(v.Stale, s.Applied)
	}
	if err == nil {
		err = validate(h.Ops)
	}
	if err != nil {
		v.Invalid = err
		v.Reason = reason(v, stale, timeout)
		return v
	}
	for _, op := range h.Ops {
		switch {
		case op.Kind == Write:
			v.Writes++
			if op.Outcome == OK {
				v.Acknowledged++
			}
		case op.Outcome == OK:
			v.Reads++
		}
	}
	hist := newHistory(h)
	v.Lost = hist.lost()
	v.NonLinearizable, v.Unchecked = hist.linearizable(timeout)
	v.TimedOut = len(v.Unchecked) > 0
	v.OK = len(v.Stale) == 0 && len(v.Lost) == 0 && len(v.NonLinearizable) == 0 && !v.TimedOut
	if !v.OK {
		v.Reason = reason(v, stale, timeout)
	}
	return v
}

// validate checks that ops make a history the checks can judge.
func validate(ops []Op) error {
	written := map[uint64]int{} // value → its write's block
	for i, op := range ops {
		switch op.Outcome {
		case OK, Failed, Pending:
		default:
			return fmt.Errorf("op %d (%s of block %d): unknown outcome %d", i, op.Kind, op.Block, op.Outcome)
		}
		if op.Outcome == OK && op.Return.Before(op.Call) {
			return fmt.Errorf("op %d (%s of block %d): returned before its call", i, op.Kind, op.Block)
		}
		switch op.Kind {
		case Read:
		case Write:
			if op.Value == 0 {
				return fmt.Errorf("op %d: a write of value 0 to block %d (0 means never written)", i, op.Block)
			}
			if b, ok := written[op.Value]; ok {
				return fmt.Errorf("op %d: value %d written twice (to blocks %d and %d)", i, op.Value, b, op.Block)
			}
			written[op.Value] = op.Block
		default:
			return fmt.Errorf("op %d: unknown kind %d", i, op.Kind)
		}
	}
	return nil
}

// timedOp is an operation with its times in nanoseconds since the
// history's first call; a write that may take effect at any time after
// its call returns at forever.
type timedOp struct {
	Op
	call, ret int64
}

// history is a valid History's operations by block.
type history struct {
	blocks map[int][]timedOp // block → its writes and answered reads
	final  map[int]uint64
	end    int64 // after every finite time of every operation
}

// newHistory sorts h's operations by block, dropping the reads that got
// no answer.
func newHistory(h History) *history {
	var base time.Time
	for i, op := range h.Ops {
		if i == 0 || op.Call.Before(base) {
			base = op.Call
		}
	}
	out := &history{blocks: map[int][]timedOp{}, final: h.Final}
	for _, op := range h.Ops {
		if op.Kind == Read && op.Outcome != OK {
			continue
		}
		t := timedOp{Op: op, call: int64(op.Call.Sub(base)), ret: forever}
		out.end = max(out.end, t.call)
		if op.Outcome == OK {
			t.ret = int64(op.Return.Sub(base))
			out.end = max(out.end, t.ret)
		}
		out.blocks[op.Block] = append(out.blocks[op.Block], t)
	}
	out.end++
	for b := range h.Final {
		if _, ok := out.blocks[b]; !ok {
			out.blocks[b] = nil
		}
	}
	return out
}

// sortedBlocks returns the history's blocks in order.
func (h *history) sortedBlocks() []int {
	return slices.Sorted(maps.Keys(h.blocks))
}

// lost returns the blocks of h.final that hold a write they may not hold:
// a block may hold write W if no acknowledged write to it began after W
// returned (a failed or pending W returns never), or zeros if no write to
// it was acknowledged.
func (h *history) lost() []Lost {
	var out []Lost
	for _, b := range slices.Sorted(maps.Keys(h.final)) {
		got := h.final[b]
		var last *timedOp // the acknowledged write that returned last
		var latestCall int64 = -1
		for i, op := range h.blocks[b] {
			if op.Kind != Write || op.Outcome != OK {
				continue
			}
			latestCall = max(latestCall, op.call)
			if last == nil || cmp.Or(cmp.Compare(op.ret, last.ret), cmp.Compare(op.call, last.call)) > 0 {
				last = &h.blocks[b][i]
			}
		}
		allowed := got == 0 && last == nil
		for _, op := range h.blocks[b] {
			if op.Kind == Write && op.Value == got && op.ret >= latestCall {
				allowed = true
			}
		}
		if !allowed {
			l := Lost{Block: b, Got: got}
			if last != nil {
				l.Want = last.Value
			}
			out = append(out, l)
		}
	}
	return out
}

// reason says in one line why v is not OK.
func reason(v Verdict, stale []staleWrite, timeout time.Duration) string {
	var parts []string
	if v.Invalid != nil {
		parts = append(parts, "invalid history: "+v.Invalid.Error())
	}
	if len(stale) > 0 {
		parts = append(parts, describeStale(stale))
	}
	if n := len(v.Lost); n > 0 {
		l := v.Lost[0]
		want := fmt.Sprintf("the last acknowledged write %d", l.Want)
		if l.Want == 0 {
			want = "zeros (no write was acknowledged)"
		}
		got := fmt.Sprintf("write %d", l.Got)
		if l.Got == 0 {
			got = "zeros"
		}
		parts = append(parts, fmt.Sprintf("%d %s not hold the last acknowledged write or a later one (first: block %d holds %s, not %s)",
			n, plural(n, "block does", "blocks do"), l.Block, got, want))
	}
	if n := len(v.NonLinearizable); n > 0 {
		parts = append(parts, fmt.Sprintf("%d %s not linearizable (blocks %s)",
			n, plural(n, "block's reads and writes are", "blocks' reads and writes are"), list(v.NonLinearizable)))
	}
	if v.TimedOut {
		parts = append(parts, fmt.Sprintf("the linearizability check did not finish within %v (%d %s undecided)",
			timeout, len(v.Unchecked), plural(len(v.Unchecked), "block", "blocks")))
	}
	return strings.Join(parts, "; ")
}

// plural returns one if n is 1, else many.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// list returns the first few of blocks, joined with commas.
func list(blocks []int) string {
	const most = 5
	var b strings.Builder
	for i, n := range blocks {
		if i == most {
			fmt.Fprintf(&b, " and %d more", len(blocks)-most)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, n)
	}
	return b.String()
}

// errApplyOp is wrapped by the error for an apply log line of an unknown op.
var errApplyOp = errors.New("unknown op")
