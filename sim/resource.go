package sim

import (
	"time"

	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/internal/fencer"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

// Resource is a simulated guarded resource (DESIGN §6): the real guard
// (package guard) and its fence driver (internal/fencer) on the node's
// simulated store client and clock. The domains' I/O reaches it as write
// requests over the simulated network, each carrying its token; the
// resource admits a request when it arrives and applies it a little
// later — now and then much later, from a slow queue — checking it again
// at the start of the apply (Begin … End), and records every apply and
// every fence once it holds (the guard's OnFence). While
// faults run, a request is now and then held in the network and released
// late, after the epoch changed (the design's own example of a stale
// write). A crash loses the guard's memory: the restarted process reads
// its fences again before it admits anything.
type Resource struct {
	w    *World
	n    *node
	name string
	g    *guard.Guard
	drv  *fencer.Driver
}

// Bounds of the simulated resources' behaviour.
const (
	applyWaitMax  = 10 * time.Millisecond // admission to apply, usually
	slowQueueP    = 0.05                  // a request waits in a slow queue (while faults run)
	slowQueueMax  = 2 * time.Second
	applyMax      = 5 * time.Millisecond // apply duration
	heldP         = 0.02                 // a request is held in the network (while faults run)
	writeP        = 0.5                  // an I/O is a write to a resource (with resources)
	heldMin       = 500 * time.Millisecond
	resourceFault = 0.1 // of the nemesis' faults, pause or crash a resource instead
)

func newResource(w *World, n *node, name string) *Resource { return &Resource{w: w, n: n, name: name} }

// start starts the resource's process: a guard that knows no fence and
// its fence driver.
func (r *Resource) start() {
	cfg := r.w.cfg
	w := r.w
	name := r.name
	r.g = guard.New(guard.Config{Name: r.name, OnFence: func(_ string, f guard.Fence) {
		w.hist.add(Rec{Kind: HFenced, At: w.now, Epoch: f.Epoch, Note: name})
	}})
	drv, err := fencer.Start(fencer.Config{
		Resource: r.name, Groups: []string{group}, Store: storeClient{r.w, r.n.id}, Clock: nodeClock{r.w, r.n.id},
		Keys: keys, Logger: quiet, OpTimeout: cfg.OpTimeout, WatchCheck: cfg.WatchCheck,
	}, r.g)
	if err != nil {
		r.w.fail("sim", "fencer: "+err.Error())
		return
	}
	r.drv = drv
}

// crash ends the resource's process; it restarts after restart (global)
// with a guard that remembers nothing.
func (r *Resource) crash(restart time.Duration) {
	w := r.w
	r.n.down = true
	r.n.gen++ // its pending events (requests, applies, store answers) are dropped
	r.n.backlog, r.n.pausedUntil = nil, 0
	w.store.unwatch(r.n.id)
	r.g, r.drv = nil, nil
	w.after(worldNode, restart, "restart "+r.n.name, 0, 0, func() {
		r.n.down = false
		w.note(r.n.id, "resource restarts")
		r.start()
	})
}

// write sends a write request of ref's, with token tok, from node from
// to a resource the seed picks.
func (w *World) write(from NodeID, ref proto.Ref, tok token.Token) {
	r := w.resources[w.rng.IntN(len(w.resources))]
	if w.net.lost(from, r.n.id) {
		return
	}
	id := w.id()
	delay := w.net.delay(from, r.n.id)
	if w.faulty() && w.chance(heldP) {
		// Held in the network (a driver domain that holds forwarded
		// writes, a congested path) and released late.
		delay = w.uniform(heldMin, 3*w.cfg.TTL)
		w.faults.HeldWrites++
	}
	w.writes++
	w.after(r.n.id, delay, "write arrives", int64(id), 0, func() { r.arrive(ref, tok, id) })
}

// arrive admits a request and schedules its apply.
func (r *Resource) arrive(ref proto.Ref, tok token.Token, id uint64) {
	w := r.w
	t := &guard.Ticket{Token: tok, Write: true}
	if err := r.g.Admit(t); err != nil {
		w.rejected++
		return
	}
	wait := w.uniform(0, applyWaitMax)
	if w.faulty() && w.chance(slowQueueP) {
		wait = w.uniform(0, slowQueueMax)
	}
	g := r.g
	w.afterLocal(r.n.id, wait, "apply", int64(id), 0, func() { r.apply(g, t, ref, id) })
}

// apply applies an admitted request if the guard, checking again, lets it.
func (r *Resource) apply(g *guard.Guard, t *guard.Ticket, ref proto.Ref, id uint64) {
	w := r.w
	if err := g.Begin(t); err != nil {
		w.rejected++
		return
	}
	w.applied++
	w.hist.add(Rec{Kind: HApply, At: w.now, Ref: ref, Epoch: t.Token.Epoch, Msg: id, Note: r.name})
	w.afterLocal(r.n.id, w.uniform(0, applyMax), "applied", int64(id), 0, func() {
		w.hist.add(Rec{Kind: HApplied, At: w.now, Ref: ref, Epoch: t.Token.Epoch, Msg: id, Note: r.name})
		g.End(t)
	})
}

// injectResource pauses or crashes a resource (the nemesis' share of
// faults for resources).
func (w *World) injectResource() {
	r := w.resources[w.rng.IntN(len(w.resources))]
	if r.n.down {
		return
	}
	if w.chance(0.5) {
		until := w.until(w.uniform(10*time.Millisecond, time.Duration(maxPauseTTL*float64(w.cfg.TTL))))
		w.faults.Pauses++
		w.note(r.n.id, "nemesis: pause for %v", until-w.now)
		w.pause(r.n, until)
		return
	}
	w.faults.ResourceCrashes++
	restart := w.until(w.uniform(50*time.Millisecond, 3*time.Second)) - w.now
	w.note(r.n.id, "nemesis: resource crash, restart in %v", restart)
	r.crash(restart)
}
