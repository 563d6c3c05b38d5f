// Package fencer is the fence driver: it keeps a resource's guard
// (package guard) fenced at the epochs of the groups it serves, and tells
// the coordinators so (DESIGN §6).
//
// For each group the driver registers the resource in the store (a
// record without a lease: a resource that is down must hold fence-mode
// changes back, not vanish from them; only an operator removes it), then
// watches the group's epoch record. For every record above the guard's
// floor — quiescing e+1 as soon as it is written — it raises the guard's
// fence to that epoch with its members, and once the fence holds (older
// requests aborted, older applies ended) writes its acknowledgement. In
// fence and both modes the coordinator connects e+1 only when every
// registered resource acknowledged.
//
// A guard starts knowing no fence and refuses everything until the driver
// has read the group's record: a resource that restarts never forgets a
// fence, it reads it again before it admits anything.
//
// Like the member driver, it is event-driven over store.Store and
// clock.Clock and never blocks, so the simulator runs it unchanged.
package fencer

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/internal/watchdog"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// Config configures a Driver. Fields without a default are required.
type Config struct {
	// Resource is the resource's name, as registered in its groups.
	Resource string
	// Groups are the groups the resource serves.
	Groups []string
	// Writer, if not empty, is the ID of the one domain whose writes the
	// guard admits (a reservation, DESIGN §6): every fence the driver
	// raises carries it (guard.Fence.Writer), in every group. Reads are
	// admitted from every member; a writer that is not a member of an
	// epoch writes nothing in it.
	Writer string
	Store  store.Store
	Clock  clock.Clock
	Keys   proto.Keys
	Logger *slog.Logger
	// OpTimeout bounds each store call (default 2 s); RetryDelay is the
	// wait before a failed write or watch is tried again (default 100
	// ms); WatchCheck the interval of the watch watchdog (default 1 s).
	OpTimeout, RetryDelay, WatchCheck time.Duration
}

func (c *Config) validate() error {
	if c.OpTimeout == 0 {
		c.OpTimeout = 2 * time.Second
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = 100 * time.Millisecond
	}
	if c.WatchCheck == 0 {
		c.WatchCheck = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case proto.CheckName("resource", c.Resource) != nil:
		return fmt.Errorf("%w: fencer: %w", proto.ErrConfig, proto.CheckName("resource", c.Resource))
	case len(c.Groups) == 0:
		return fmt.Errorf("%w: fencer: no group", proto.ErrConfig)
	case c.Store == nil || c.Clock == nil:
		return fmt.Errorf("%w: fencer: Store and Clock are required", proto.ErrConfig)
	case c.OpTimeout < 0 || c.RetryDelay < 0 || c.WatchCheck < 0:
		return fmt.Errorf("%w: fencer: negative durations", proto.ErrConfig)
	}
	if c.Writer != "" {
		if err := proto.CheckName("writer", c.Writer); err != nil {
			return fmt.Errorf("%w: fencer: %w", proto.ErrConfig, err)
		}
	}
	for _, g := range c.Groups {
		if err := proto.CheckName("group", g); err != nil {
			return fmt.Errorf("%w: fencer: %w", proto.ErrConfig, err)
		}
	}
	return nil
}

// Status is where the driver stands in one group.
type Status struct {
	Group string
	// Registered: the resource's record is in the store.
	Registered bool
	// Epoch is the latest epoch record seen; Fenced the highest epoch whose
	// fence holds in the guard; Acked the highest acknowledged in the
	// store.
	Epoch, Fenced, Acked uint64
	// Since is when the driver saw Epoch (by its clock): a fence pending
	// since then is Epoch > Acked.
	Since time.Duration
}

// Driver is a running fence driver.
type Driver struct {
	cfg Config
	g   *guard.Guard
	log *slog.Logger

	mu      sync.Mutex
	after   []func()
	stopped bool
	groups  []*group
}

type group struct {
	name       string
	registered bool
	watch      store.Watch
	watchGen   uint64
	watchRead  bool
	early      []store.Event
	heard      bool // the watch delivered something since the last check
	hung       bool
	check      clock.Timer
	epoch      uint64        // latest record seen
	since      time.Duration // when it was seen
	raised     uint64        // highest fence raised in the guard
	fenced     uint64        // highest fence that holds
	acked      uint64        // highest acknowledged in the store
	acking     bool          // an acknowledgement is being written
}

// Start starts the driver for g, the resource's guard.
func Start(cfg Config, g *guard.Guard) (*Driver, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, g: g, log: cfg.Logger.With("resource", cfg.Resource)}
	names := slices.Clone(cfg.Groups)
	slices.Sort(names)
	names = slices.Compact(names)
	d.mu.Lock()
	for _, name := range names {
		gr := &group{name: name}
		d.groups = append(d.groups, gr)
		d.register(gr)
	}
	d.unlock()
	return d, nil
}

// Stop stops the driver; the guard keeps its fences.
func (d *Driver) Stop() {
	d.mu.Lock()
	d.stopped = true
	for _, gr := range d.groups {
		if gr.watch != nil {
			gr.watch.Cancel()
			gr.watch = nil
		}
		if gr.check != nil {
			gr.check.Stop()
		}
	}
	d.unlock()
}

// Status returns where the driver stands in each group, sorted by group.
func (d *Driver) Status() []Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Status, 0, len(d.groups))
	for _, gr := range d.groups {
		out = append(out, Status{Group: gr.name, Registered: gr.registered, Epoch: gr.epoch, Fenced: gr.fenced, Acked: gr.acked, Since: gr.since})
	}
	return out
}

func (d *Driver) do(f func()) {
	d.mu.Lock()
	f()
	d.unlock()
}

func (d *Driver) locked(f func()) func() { return func() { d.do(f) } }

// unlock releases the lock, then runs what was left for later.
func (d *Driver) unlock() {
	after := d.after
	d.after = nil
	d.mu.Unlock()
	for _, f := range after {
		f()
	}
}

// later runs f once the lock is released. Called with d.mu held.
func (d *Driver) later(f func()) { d.after = append(d.after, f) }

// retry runs f after RetryDelay, unless the driver stopped. Called with
// d.mu held.
func (d *Driver) retry(f func()) {
	d.cfg.Clock.AfterFunc(d.cfg.RetryDelay, d.locked(func() {
		if !d.stopped {
			f()
		}
	}))
}

// register writes the resource's record in the group unless it is there,
// then watches the group. Called with d.mu held.
func (d *Driver) register(gr *group) {
	key := d.cfg.Keys.Resource(gr.name, d.cfg.Resource)
	val, _ := json.Marshal(proto.Resource{Name: d.cfg.Resource})
	t := store.Txn{
		If:   []store.Cmp{{Key: key, Create: true, Rev: 0}},
		Then: []store.Op{store.Put(key, val, 0)},
	}
	d.cfg.Store.Txn(t, d.cfg.OpTimeout, func(_ store.TxnResponse, err error) {
		d.do(func() {
			if d.stopped {
				return
			}
			if err != nil {
				d.log.Warn("registering the resource failed; retrying", "group", gr.name, "err", err)
				d.retry(func() { d.register(gr) })
				return
			}
			gr.registered = true
			d.startWatch(gr)
			d.armCheck(gr)
		})
	})
}

// startWatch watches the group's epoch record; once the watch is created
// it reads the record, so no change falls between the two. Called with
// d.mu held.
func (d *Driver) startWatch(gr *group) {
	gr.watchGen++
	gen := gr.watchGen
	gr.watchRead, gr.early, gr.heard = false, nil, true
	fresh := gr.hung
	gr.hung = false
	gr.watch = d.cfg.Store.Watch(store.WatchRequest{Key: d.cfg.Keys.Epoch(gr.name), Fresh: fresh}, func(wr store.WatchResponse) {
		d.do(func() { d.onWatch(gr, gen, wr) })
	})
}

func (d *Driver) onWatch(gr *group, gen uint64, wr store.WatchResponse) {
	if d.stopped || gen != gr.watchGen {
		return
	}
	gr.heard = true
	switch {
	case wr.Err != nil:
		d.rewatch(gr, "epoch watch failed", wr.Err)
		return
	case wr.Created:
		d.read(gr, gen)
	}
	if !gr.watchRead {
		gr.early = append(gr.early, wr.Events...)
		return
	}
	d.events(gr, wr.Events)
}

// read reads the epoch record once the watch is in place.
func (d *Driver) read(gr *group, gen uint64) {
	key := d.cfg.Keys.Epoch(gr.name)
	d.cfg.Store.Txn(store.Txn{Then: []store.Op{store.Get(key)}}, d.cfg.OpTimeout, func(resp store.TxnResponse, err error) {
		d.do(func() {
			if d.stopped || gen != gr.watchGen {
				return
			}
			if err != nil {
				d.rewatch(gr, "epoch read failed", err)
				return
			}
			if len(resp.Gets) > 0 {
				for _, kv := range resp.Gets[0] {
					d.observe(gr, kv.Value)
				}
			}
			gr.watchRead = true
			early := gr.early
			gr.early = nil
			d.events(gr, early)
		})
	})
}

func (d *Driver) events(gr *group, evs []store.Event) {
	for _, ev := range evs {
		// A deleted record changes nothing: fences are never forgotten.
		if !ev.Delete {
			d.observe(gr, ev.KV.Value)
		}
	}
}

// rewatch replaces a failed or hung watch after RetryDelay. Called with
// d.mu held.
func (d *Driver) rewatch(gr *group, why string, err error) {
	if gr.watch != nil {
		gr.watch.Cancel()
		gr.watch = nil
	}
	gr.watchGen++
	d.log.Warn(why+"; watching again", "group", gr.name, "err", err)
	gen := gr.watchGen
	d.retry(func() {
		if gen == gr.watchGen {
			d.startWatch(gr)
		}
	})
}

// armCheck runs the watch watchdog every WatchCheck. Called with d.mu
// held.
func (d *Driver) armCheck(gr *group) {
	gr.check = d.cfg.Clock.AfterFunc(d.cfg.WatchCheck, d.locked(func() {
		if d.stopped {
			return
		}
		if gr.watch != nil {
			switch watchdog.Check(&gr.heard) {
			case watchdog.Hung:
				gr.hung = true
				d.rewatch(gr, "epoch watch silent", store.ErrUnavailable)
			case watchdog.AskProgress:
				gr.watch.RequestProgress()
			}
		}
		d.armCheck(gr)
	}))
}

// observe takes an epoch record: one above the guard's floor raises the
// fence to it, with its members. Called with d.mu held.
func (d *Driver) observe(gr *group, val []byte) {
	rec, err := proto.DecodeEpoch(val)
	if err != nil {
		d.log.Error("undecodable epoch record", "group", gr.name, "err", err)
		return
	}
	if rec.Number > gr.epoch {
		gr.epoch, gr.since = rec.Number, d.cfg.Clock.Now()
	}
	if rec.Number <= gr.raised {
		return
	}
	gr.raised = rec.Number
	f := guard.Fence{Epoch: rec.Number, Members: make([]proto.Ref, 0, len(rec.Members)), Writer: d.cfg.Writer}
	for _, m := range rec.Members {
		f.Members = append(f.Members, m.Ref())
	}
	d.log.Debug("fencing", "group", gr.name, "epoch", f.Epoch, "state", rec.State, "members", len(f.Members), "writer", f.Writer)
	// Raise may call done before it returns: outside the lock.
	d.later(func() {
		d.g.Raise(gr.name, f, func(err error) {
			d.do(func() { d.fenced(gr, f.Epoch, err) })
		})
	})
}

// fenced takes a fence that holds. Called with d.mu held.
func (d *Driver) fenced(gr *group, e uint64, err error) {
	if err != nil {
		d.log.Error("fence refused by the guard", "group", gr.name, "epoch", e, "err", err)
		return
	}
	if e > gr.fenced {
		gr.fenced = e
	}
	d.ack(gr)
}

// ack writes the acknowledgement of the highest fence that holds, unless
// it is written or being written. Called with d.mu held.
func (d *Driver) ack(gr *group) {
	if d.stopped || gr.acking || gr.acked >= gr.fenced {
		return
	}
	gr.acking = true
	e := gr.fenced
	val, _ := json.Marshal(proto.FenceAck{Epoch: e, Resource: d.cfg.Resource})
	t := store.Txn{Then: []store.Op{store.Put(d.cfg.Keys.FenceAck(gr.name, e, d.cfg.Resource), val, 0)}}
	d.cfg.Store.Txn(t, d.cfg.OpTimeout, func(_ store.TxnResponse, err error) {
		d.do(func() {
			gr.acking = false
			if d.stopped {
				return
			}
			if err != nil {
				if !errors.Is(err, store.ErrUnavailable) {
					d.log.Warn("fence acknowledgement failed; retrying", "group", gr.name, "epoch", e, "err", err)
				}
				d.retry(func() { d.ack(gr) })
				return
			}
			gr.acked = max(gr.acked, e)
			d.log.Debug("fence acknowledged", "group", gr.name, "epoch", e)
			d.ack(gr) // a later fence may hold meanwhile
		})
	})
}
