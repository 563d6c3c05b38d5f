package checker

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
)

// registerInput is an operation on a block as porcupine sees it.
type registerInput struct {
	kind  Kind
	block int
	value uint64 // a write's value (a read's is its output)
}

// register is the model of one block: a register of write numbers,
// initially 0 (zeros). Its state and a read's output are a uint64.
var register = porcupine.Model{
	Init: func() any { return uint64(0) },
	Step: func(state, input, output any) (bool, any) {
		in := input.(registerInput)
		if in.kind == Write {
			return true, in.value
		}
		return output.(uint64) == state.(uint64), state
	},
	Hash: func(state any) uint64 { return state.(uint64) },
	DescribeOperation: func(input, output any) string {
		in := input.(registerInput)
		if in.kind == Write {
			return fmt.Sprintf("write %d", in.value)
		}
		return fmt.Sprintf("read %d", output.(uint64))
	},
	DescribeState: func(state any) string {
		if state.(uint64) == 0 {
			return "0 (zeros)"
		}
		return fmt.Sprint(state.(uint64))
	},
	DescribeOperationMetadata: func(info any) string { return info.(string) },
}

// byBlock partitions ops by block, the blocks in the order they first
// appear.
func byBlock(ops []porcupine.Operation) [][]porcupine.Operation {
	var out [][]porcupine.Operation
	index := map[int]int{} // block → its partition
	for _, op := range ops {
		b := op.Input.(registerInput).block
		i, ok := index[b]
		if !ok {
			i = len(out)
			index[b] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], op)
	}
	return out
}

// operations returns block b's operations for porcupine: its writes (a
// failed or pending one returns at forever) and answered reads, then its
// final content, if known, as a read after every other operation's end.
// Each gets a client (a row of the visualization) on which it overlaps
// no other.
func (h *history) operations(b int) []porcupine.Operation {
	var out []porcupine.Operation
	for _, op := range h.blocks[b] {
		p := porcupine.Operation{
			Input: registerInput{kind: op.Kind, block: b, value: op.Value}, Call: op.call, Return: op.ret,
			Metadata: fmt.Sprintf("block %d", b),
		}
		if op.Kind == Read {
			p.Output = op.Value
		}
		if op.Outcome != OK {
			p.Metadata = fmt.Sprintf("block %d, %s", b, op.Outcome)
		}
		out = append(out, p)
	}
	if v, ok := h.final[b]; ok {
		out = append(out, porcupine.Operation{
			Input: registerInput{kind: Read, block: b}, Output: v, Call: h.end, Return: h.end,
			Metadata: fmt.Sprintf("block %d, final content", b),
		})
	}
	assignClients(out)
	return out
}

// assignClients gives each of ops the first client free at its call.
func assignClients(ops []porcupine.Operation) {
	order := make([]int, len(ops))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return cmp.Compare(ops[i].Call, ops[j].Call) })
	var busy []int64 // client → when its last operation returns
	for _, i := range order {
		c := slices.IndexFunc(busy, func(ret int64) bool { return ret < ops[i].Call })
		if c < 0 {
			c = len(busy)
			busy = append(busy, 0)
		}
		busy[c] = ops[i].Return
		ops[i].ClientId = c
	}
}

// linearizable checks each block's operations with porcupine, within
// timeout in all (0 or less: no bound). It returns the blocks that are
// not linearizable and those left undecided when the time ran out.
func (h *history) linearizable(timeout time.Duration) (illegal, undecided []int) {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for _, b := range h.sortedBlocks() {
		var left time.Duration // 0: no bound, for porcupine
		if timeout > 0 {
			if left = time.Until(deadline); left <= 0 {
				undecided = append(undecided, b)
				continue
			}
		}
		switch porcupine.CheckOperationsTimeout(register, h.operations(b), left) {
		case porcupine.Illegal:
			illegal = append(illegal, b)
		case porcupine.Unknown:
			undecided = append(undecided, b)
		}
	}
	return illegal, undecided
}

// Visualize writes porcupine's visualization of the given blocks of h (all
// of them if blocks is nil) to w: an HTML page that shows each block's
// operations and a linearization, or, for a block that has none, the
// longest partial ones and where they fail. Verdict.NonLinearizable names
// the blocks worth seeing. timeout bounds the search (0 or less: no
// bound); if it runs out, the page shows what was found by then. The
// history must be valid (Verdict.Invalid nil).
func Visualize(h History, blocks []int, timeout time.Duration, w io.Writer) error {
	if err := validate(h.Ops); err != nil {
		return fmt.Errorf("checker: invalid history: %w", err)
	}
	hist := newHistory(h)
	if blocks == nil {
		blocks = hist.sortedBlocks()
	}
	var ops []porcupine.Operation
	for _, b := range blocks {
		ops = append(ops, hist.operations(b)...)
	}
	model := register
	model.Partition = byBlock
	_, info := porcupine.CheckOperationsVerbose(model, ops, max(timeout, 0))
	return porcupine.Visualize(model, info, w)
}
