package sim

import (
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

// queue orders events by time, ties broken by insertion order: a binary
// heap written out rather than container/heap's, whose interface calls
// were a tenth of the simulator's time.
type queue []*event

func before(a, b *event) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}

func (q *queue) push(e *event) {
	h := append(*q, e)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !before(h[i], h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	*q = h
}

func (q *queue) pop() *event {
	h := *q
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h[n] = nil
	h = h[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && before(h[r], h[l]) {
			m = r
		}
		if !before(h[m], h[i]) {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	*q = h
	return top
}

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
