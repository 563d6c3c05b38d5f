package sim

import (
	"time"

	"github.com/idc-dev/idc/coordinator"
)

// Coord is a simulated coordinator: what coordinator.Run runs on etcd — a
// Candidate campaigning in the election and leading while elected — or,
// as with coordinator.Config.NoElection, a Leader alone (the harder case
// for G1: with two, both act at once), on the node's simulated store
// client and clock. The seed decides which. A crash ends the process; it
// restarts as a fresh one.
type Coord struct {
	w *World
	n *node
	l *coordinator.Leader
	c *coordinator.Candidate
}

func newCoord(w *World, n *node) *Coord { return &Coord{w: w, n: n} }

func (c *Coord) start() {
	cfg := c.w.cfg
	lc := coordinator.LeaderConfig{
		Store: storeClient{c.w, c.n.id}, Clock: nodeClock{c.w, c.n.id}, Keys: keys,
		Machine: cfg.coordConfig(), OpTimeout: cfg.OpTimeout, WatchCheck: cfg.WatchCheck,
		MaxTxnOps: cfg.MaxTxnOps, Logger: quiet,
		// A wall clock of the simulation's own, so runs stay reproducible.
		WallClock: func() time.Time { return time.Unix(0, 0).Add(c.w.now) },
	}
	if cfg.Election > 0 {
		c.c = coordinator.StartCandidate(coordinator.CandidateConfig{Leader: lc, Name: c.n.name, TTL: cfg.ElectionTTL, Rho: cfg.Rho})
		return
	}
	c.l = coordinator.StartLeader(lc)
}

// describe says where the coordinator stands.
func (c *Coord) describe() string {
	switch {
	case c.c != nil:
		return c.c.Describe(group)
	case c.l != nil:
		return c.l.Describe(group)
	}
	return "not started"
}

// crash ends the coordinator process; it restarts after restart (global).
func (c *Coord) crash(restart time.Duration) {
	w := c.w
	c.n.down = true
	c.n.gen++ // its pending events are dropped
	c.n.backlog, c.n.pausedUntil = nil, 0
	w.store.unwatch(c.n.id)
	w.resetConns(c.n.id)
	// The process is gone: its driver does nothing more (its events are
	// dropped) and says nothing — its election lease simply runs out.
	c.l, c.c = nil, nil
	w.after(worldNode, restart, "restart "+c.n.name, 0, 0, func() {
		c.n.down = false
		w.note(c.n.id, "coordinator restarts")
		c.start()
	})
}
