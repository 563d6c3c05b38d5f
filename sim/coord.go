package sim

import (
	"time"

	"github.com/idc-dev/idc/coordinator"
)

// Coord is a simulated coordinator: the real coordinator.Leader — the code
// coordinator.Run runs on etcd once elected — on the node's simulated
// store client and clock. The simulator runs coordinators without the
// election, as coordinator.Config.NoElection does (the harder case for G1:
// with two, both act at once). A crash ends the process; it restarts as a
// fresh one that lists the store again.
type Coord struct {
	w *World
	n *node
	l *coordinator.Leader
}

func newCoord(w *World, n *node) *Coord { return &Coord{w: w, n: n} }

func (c *Coord) start() {
	cfg := c.w.cfg
	c.l = coordinator.StartLeader(coordinator.LeaderConfig{
		Store: storeClient{c.w, c.n.id}, Clock: nodeClock{c.w, c.n.id}, Keys: keys,
		Machine: cfg.coordConfig(), OpTimeout: cfg.OpTimeout, WatchCheck: cfg.WatchCheck,
		MaxTxnOps: cfg.MaxTxnOps, Logger: quiet,
	})
}

// crash ends the coordinator process; it restarts after restart (global).
func (c *Coord) crash(restart time.Duration) {
	w := c.w
	c.n.down = true
	c.n.gen++ // its pending events are dropped
	c.n.backlog, c.n.pausedUntil = nil, 0
	w.store.unwatch(c.n.id)
	w.resetConns(c.n.id)
	c.l.Stop()
	w.after(worldNode, restart, "restart "+c.n.name, 0, 0, func() {
		c.n.down = false
		w.note(c.n.id, "coordinator restarts")
		c.start()
	})
}
