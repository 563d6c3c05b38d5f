package sim

import (
	"container/heap"
	"math"
	"time"
)

// NodeID names a node of the simulated world: the nemesis (0), the store
// (1), coordinators and domains. Later node kinds (resource guards) get ids
// the same way.
type NodeID int32

const (
	worldNode NodeID = 0 // the nemesis and bookkeeping: never paused or crashed
	storeNode NodeID = 1
)

// event is one step of the simulation: fn runs at global time at on node
// (if the node is still the same generation and not crashed; if it is
// paused, the event waits in the node's backlog).
type event struct {
	at   time.Duration
	seq  uint64
	node NodeID
	gen  uint64
	what string // trace label (a constant)
	a, b int64  // trace arguments
	fn   func()
	// off: cancelled (a timer stopped, a timeout whose call was answered):
	// skipped without a step.
	off bool
}

// queue orders events by time, ties broken by insertion order.
type queue []*event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *queue) Pop() any {
	old := *q
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*q = old[:n-1]
	return e
}

func (q *queue) push(e *event) { heap.Push(q, e) }
func (q *queue) pop() *event   { return heap.Pop(q).(*event) }

// clock is a node's local monotonic clock: local = offset + rate·global.
// Machines only ever see local readings.
type clock struct {
	rate   float64
	offset time.Duration
}

func (c clock) local(global time.Duration) time.Duration {
	return c.offset + time.Duration(c.rate*float64(global))
}

// globalDelay converts a local duration into the global time that passes
// while the local clock advances by d (rounded up, plus 1 ns, so a timer
// set for a local deadline never fires before it by the local clock).
func (c clock) globalDelay(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(float64(d)/c.rate)) + 1
}
