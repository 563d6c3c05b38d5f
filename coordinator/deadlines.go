package coordinator

import (
	"container/heap"
	"time"
)

// deadlines is an indexed min-heap of the groups whose machine has a
// deadline (core.Machine.NextDeadline), earliest first; equal deadlines
// in group name order, so that the simulator's runs stay reproducible.
// Each group knows its place in the heap (group.slot), so a group whose
// deadline changed is moved, added or removed in O(log groups), and the
// Leader's timer finds the earliest deadline in O(1): an event costs the
// groups it touched, not the groups that exist.
type deadlines struct {
	gs []*group
	// compares counts comparisons, for the tests that bound the work.
	compares int
}

func (h *deadlines) Len() int { return len(h.gs) }

func (h *deadlines) Less(i, j int) bool {
	h.compares++
	a, b := h.gs[i], h.gs[j]
	if a.deadline != b.deadline {
		return a.deadline < b.deadline
	}
	return a.name < b.name
}

func (h *deadlines) Swap(i, j int) {
	h.gs[i], h.gs[j] = h.gs[j], h.gs[i]
	h.gs[i].slot, h.gs[j].slot = i+1, j+1
}

// Push and Pop are for container/heap only.
func (h *deadlines) Push(x any) {
	g := x.(*group)
	h.gs = append(h.gs, g)
	g.slot = len(h.gs)
}

func (h *deadlines) Pop() any {
	n := len(h.gs)
	g := h.gs[n-1]
	h.gs[n-1] = nil
	h.gs = h.gs[:n-1]
	g.slot = 0
	return g
}

// set puts g in the heap at deadline d, moves it there if it is in the
// heap already, or (ok false: no deadline) takes it out.
func (h *deadlines) set(g *group, d time.Duration, ok bool) {
	switch {
	case !ok && g.slot > 0:
		heap.Remove(h, g.slot-1)
	case !ok:
	case g.slot > 0:
		if g.deadline != d {
			g.deadline = d
			heap.Fix(h, g.slot-1)
		}
	default:
		g.deadline = d
		heap.Push(h, g)
	}
}

// next returns the earliest deadline, and false if no group has one.
func (h *deadlines) next() (time.Duration, bool) {
	if len(h.gs) == 0 {
		return 0, false
	}
	return h.gs[0].deadline, true
}

// due takes every group whose deadline is at or before now out of the
// heap and returns them, earliest first.
func (h *deadlines) due(now time.Duration) []*group {
	var out []*group
	for len(h.gs) > 0 && h.gs[0].deadline <= now {
		out = append(out, heap.Pop(h).(*group))
	}
	return out
}
