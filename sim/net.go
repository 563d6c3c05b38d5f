package sim

import "time"

// network decides the fate of every message: its delay, whether it is
// lost, and what partitions and slow links do to it. While faults run,
// delays are mostly small and sometimes up to MaxDelay, and a fraction of
// messages is lost; afterwards messages are prompt and never lost (messages
// already in flight keep their delays).
type network struct {
	w     *World
	lossP float64 // per message, while faulty
	slowP float64 // per message, while faulty
	// partitioned[n] is when node n's partition from the store ends;
	// slowUntil[n] when its slow link ends.
	partitioned map[NodeID]time.Duration
	slowUntil   map[NodeID]time.Duration
	slowOut     map[NodeID]bool // the slow link is slow both ways
	frames      frameFaults
	// holdStorage[n] is until when what node n sends on its connections
	// to the storage is held (a proxy holding its bytes): the storage
	// scenario's nemesis (storage.go).
	holdStorage map[NodeID]time.Duration
}

// frameFaults are what a misbehaving middlebox does to channel frames
// (netconn.go): per frame, while faults run, drop it or swap it with the
// next (the stream breaks), deliver it twice, or replay a stale frame
// received earlier on another connection. Half the runs have them.
type frameFaults struct {
	on                          bool
	dropP, dupP, replayP, swapP float64
	seen                        map[[2]NodeID]map[uint64][][]byte // frames received, by receiver and sender node, by sequence number
}

const (
	minDelay  = 100 * time.Microsecond
	fastDelay = 3 * time.Millisecond
)

func newNetwork(w *World) *network {
	n := &network{w: w, partitioned: map[NodeID]time.Duration{}, slowUntil: map[NodeID]time.Duration{}, slowOut: map[NodeID]bool{},
		holdStorage: map[NodeID]time.Duration{}}
	if !w.cfg.NoFaults {
		if w.chance(0.7) {
			n.lossP = 0.05 * w.rng.Float64()
		}
		n.slowP = 0.08 * w.rng.Float64()
		if w.chance(0.5) {
			n.frames = frameFaults{on: true, dropP: 0.002 * w.rng.Float64(), dupP: 0.02 * w.rng.Float64(), replayP: 0.05 * w.rng.Float64(), swapP: 0.002 * w.rng.Float64(),
				seen: map[[2]NodeID]map[uint64][][]byte{}}
		}
	}
	return n
}

// cut reports whether node a is partitioned from the store now.
func (n *network) cut(a NodeID) bool { return n.partitioned[a] > n.w.now }

// delay draws the delay of a message from a to b (one of them the store).
// A slow message takes up to MaxDelay, or half the time a delay just under
// the renewal timeout: renewals answered that late are where lease bugs
// live.
func (n *network) delay(a, b NodeID) time.Duration {
	w := n.w
	if !w.faulty() {
		return w.uniform(minDelay, fastDelay)
	}
	if n.slowUntil[b] > w.now || n.slowUntil[a] > w.now && n.slowOut[a] || w.chance(n.slowP) {
		if w.chance(0.5) {
			ri := w.cfg.renewInterval()
			return w.uniform(ri/2, ri)
		}
		return w.uniform(minDelay, w.cfg.MaxDelay)
	}
	return w.uniform(minDelay, fastDelay)
}

// lost reports whether a message between a and b is lost.
func (n *network) lost(a, b NodeID) bool {
	if n.cut(a) || n.cut(b) {
		return true
	}
	return n.w.faulty() && n.w.chance(n.lossP)
}

// send delivers fn at node to after a drawn delay, unless the message is
// lost. fn runs only if to is still the generation it was.
func (n *network) send(from, to NodeID, what string, a int64, fn func()) {
	if n.lost(from, to) {
		return
	}
	n.w.after(to, n.delay(from, to), what, a, 0, fn)
}

// call is one request from node from to the store, answered or timed out
// (an answer that arrives after the asking process crashed and restarted
// is for nobody):
// req runs at the store and returns the answer; onAnswer runs at from if
// the answer arrives within timeout (by from's clock), else onTimeout runs.
// A lost request or answer looks like a timeout, as it does to a real
// driver. Either callback may be nil.
func (w *World) call(from NodeID, timeout time.Duration, what string, req func() any, onAnswer func(any), onTimeout func()) {
	done := false
	var timer *event
	gen := w.nodes[from].gen // the process that asks
	w.net.send(from, storeNode, what, 0, func() {
		resp := req()
		w.net.send(storeNode, from, what+" answered", 0, func() {
			if w.nodes[from].gen != gen {
				return // the process that asked crashed since: nobody reads the answer
			}
			if !done {
				done = true
				timer.off = true
				if onAnswer != nil {
					onAnswer(resp)
				}
			}
		})
	})
	timer = w.afterLocal(from, timeout, what+" timed out", 0, 0, func() {
		if !done {
			done = true
			if onTimeout != nil {
				onTimeout()
			}
		}
	})
}
