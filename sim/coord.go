package sim

import (
	"maps"
	"slices"
	"time"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
)

// Coord is a simulated coordinator: the driver of coordinator.leader (list
// everything, watch from the next revision, one view and one real
// core/coordinator.Machine per group, a timer at the earliest NextDeadline,
// epoch writes as a CAS transaction with the cleanup, revocations). Like
// the real driver it carries out one store operation at a time and reads
// nothing else meanwhile. A crash ends it; it restarts as a fresh process
// that lists the store again.
type Coord struct {
	w      *World
	n      *node
	origin time.Duration // local clock reading at process start

	watchID uint64
	listed  bool // the listing arrived; until then watch responses wait
	early   [][]Event
	groups  map[string]*cgroup
	busy    bool          // a store operation is in flight
	queue   []core.Action // actions not yet carried out, of queueGroup
	qgroup  string
	backlog []func() // watch responses that arrived while busy
	timer   *event
}

type cgroup struct {
	view core.View
	m    *core.Machine
}

func newCoord(w *World, n *node) *Coord { return &Coord{w: w, n: n} }

func (c *Coord) now() time.Duration { return c.n.clock.local(c.w.now) - c.origin }

func (c *Coord) start() {
	c.origin = c.n.clock.local(c.w.now)
	c.groups = map[string]*cgroup{}
	c.busy, c.queue, c.backlog = false, nil, nil
	c.list()
}

// list is listAndWatch: read everything under groups/, build the views,
// update each touched group, watch from the next revision.
func (c *Coord) list() {
	w := c.w
	id := w.id()
	c.watchID, c.listed, c.early = id, false, nil
	wt := &watcher{id: id, node: c.n.id, key: keys.Groups(), prefix: true, fn: func(evs []Event, _ int64) {
		if c.watchID != id {
			return
		}
		if !c.listed {
			c.early = append(c.early, evs)
			return
		}
		if c.busy {
			c.backlog = append(c.backlog, func() { c.onEvents(evs) })
			return
		}
		c.onEvents(evs)
	}}
	type listResp struct {
		evs []Event
		rev int64
	}
	w.call(c.n.id, w.cfg.OpTimeout, "list", func() any {
		evs, rev := w.store.List(keys.Groups(), wt)
		return listResp{evs, rev}
	}, func(resp any) {
		if c.watchID != id {
			return
		}
		c.groups = map[string]*cgroup{}
		c.listed = true
		early := c.early
		c.early = nil
		c.onEvents(resp.(listResp).evs)
		for _, evs := range early {
			if c.busy {
				c.backlog = append(c.backlog, func() { c.onEvents(evs) })
			} else {
				c.onEvents(evs)
			}
		}
	}, func() {
		w.store.cancelWatch(id)
		c.watchID = 0
		w.afterLocal(c.n.id, 200*time.Millisecond, "relist", 0, 0, c.list)
	})
}

// onEvents folds a watch response (or the listing) into the views and
// updates every touched group's machine.
func (c *Coord) onEvents(evs []Event) {
	touched := map[string]bool{}
	for _, ev := range evs {
		if g := c.apply(ev); g != "" {
			touched[g] = true
		}
	}
	for _, g := range slices.Sorted(maps.Keys(touched)) {
		cg := c.groups[g]
		cg.m.Update(cg.view, c.now())
		c.exec(g)
		if c.busy {
			// The rest waits, as the real driver's loop does.
			rest := slices.Sorted(maps.Keys(touched))
			i := slices.Index(rest, g)
			for _, g2 := range rest[i+1:] {
				c.backlog = append(c.backlog, func() {
					cg2 := c.groups[g2]
					cg2.m.Update(cg2.view, c.now())
					c.exec(g2)
				})
			}
			return
		}
	}
	c.arm()
}

func (c *Coord) apply(ev Event) string {
	p, ok := keys.Parse(ev.Key)
	if !ok {
		return ""
	}
	g := c.groups[p.Group]
	if g == nil {
		if proto.CheckName("group", p.Group) != nil {
			return ""
		}
		g = &cgroup{view: core.NewView(p.Group), m: core.New(c.w.cfg.coordConfig())}
		c.groups[p.Group] = g
	}
	val := ev.Val
	if ev.Del {
		val = nil
	}
	g.view.Fold(p, val, ev.Mod)
	return p.Group
}

// exec carries out group g's actions one at a time until it has none left.
func (c *Coord) exec(g string) {
	c.qgroup = g
	c.pump()
}

func (c *Coord) pump() {
	w := c.w
	for !c.busy {
		if len(c.queue) == 0 {
			cg := c.groups[c.qgroup]
			if cg != nil {
				c.queue = cg.m.Ready()
			}
			if len(c.queue) == 0 {
				break
			}
		}
		a := c.queue[0]
		c.queue = c.queue[1:]
		cg := c.groups[c.qgroup]
		switch a := a.(type) {
		case core.WriteEpoch:
			c.busy = true
			c.write(cg, a)
		case core.Cleanup:
			c.busy = true
			g := c.qgroup
			var ops []Op
			for _, pfx := range []string{keys.Acks(g), keys.Faults(g), keys.FenceAcks(g)} {
				ops = append(ops, Op{Kind: OpDeleteRange, Key: pfx, End: pfx + proto.EpochKey(a.Before)})
			}
			for id := range a.Left {
				ops = append(ops, Op{Kind: OpDelete, Key: keys.Left(g, id)})
			}
			w.call(c.n.id, w.cfg.OpTimeout, "cleanup", func() any { return w.store.Txn(nil, ops, nil) }, func(any) {
				c.busy = false
				cg.m.CleanedUp(c.now())
				c.pump()
			}, func() {
				c.busy = false
				cg.m.CleanupFailed(c.now())
				c.pump()
			})
		case core.Revoke:
			c.busy = true
			ref, lease := a.Member.Ref(), a.Member.Lease
			w.note(c.n.id, "revoke %v lease %d", ref, lease)
			w.call(c.n.id, w.cfg.OpTimeout, "revoke", func() any { return w.store.Revoke(lease) }, func(any) {
				c.busy = false
				cg.m.Revoked(ref, c.now())
				c.pump()
			}, func() {
				c.busy = false
				cg.m.RevokeFailed(ref, c.now())
				c.pump()
			})
		}
	}
	if !c.busy {
		c.drain()
	}
}

// drain works off the watch responses that arrived while busy.
func (c *Coord) drain() {
	for !c.busy && len(c.backlog) > 0 {
		f := c.backlog[0]
		c.backlog = c.backlog[1:]
		f()
	}
	if !c.busy {
		c.arm()
	}
}

// write is leader.write: a transaction that compares the epoch key's mod
// revision with ExpectRevision (unless NoCAS), puts the record and, for a
// connect, deletes the records the cleanup names.
func (c *Coord) write(cg *cgroup, a core.WriteEpoch) {
	w := c.w
	g := a.Record.Group
	var cmps []Cmp
	if !w.cfg.NoCAS {
		cmps = []Cmp{{Key: keys.Epoch(g), Rev: a.ExpectRevision}}
	}
	rec := a.Record
	ops := []Op{{Kind: OpPut, Key: keys.Epoch(g), Val: &rec}}
	w.call(c.n.id, w.cfg.OpTimeout, "write epoch", func() any { return w.store.Txn(cmps, ops, nil) }, func(resp any) {
		c.busy = false
		if r := resp.(TxnResp); r.Err != nil || !r.Succeeded {
			cg.m.WriteFailed(c.now())
		}
		c.pump()
	}, func() {
		c.busy = false
		cg.m.WriteFailed(c.now())
		c.pump()
	})
}

// arm sets the timer to the earliest deadline of any group.
func (c *Coord) arm() {
	if c.timer != nil {
		c.timer.off = true
		c.timer = nil
	}
	var next time.Duration
	found := false
	for _, g := range slices.Sorted(maps.Keys(c.groups)) {
		if d, ok := c.groups[g].m.NextDeadline(); ok && (!found || d < next) {
			next, found = d, true
		}
	}
	if !found {
		return
	}
	c.timer = c.w.afterLocal(c.n.id, max(next-c.now(), 0), "coordinator timer", 0, 0, func() {
		c.timer = nil
		if c.busy {
			return
		}
		now := c.now()
		for _, g := range slices.Sorted(maps.Keys(c.groups)) {
			if d, ok := c.groups[g].m.NextDeadline(); ok && d <= now {
				c.groups[g].m.Tick(now)
				c.exec(g)
				if c.busy {
					return
				}
			}
		}
		c.arm()
	})
}

// crash ends the coordinator process; it restarts after restart (global).
func (c *Coord) crash(restart time.Duration) {
	w := c.w
	c.n.down = true
	c.n.gen++
	c.n.backlog, c.n.pausedUntil = nil, 0
	w.store.unwatch(c.n.id)
	w.after(worldNode, restart, "restart "+c.n.name, 0, 0, func() {
		c.n.down = false
		w.note(c.n.id, "coordinator restarts")
		c.start()
	})
}
