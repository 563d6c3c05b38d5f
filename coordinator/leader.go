package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/idc-dev/idc/internal/mutation"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/internal/watchdog"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// LeaderConfig configures a Leader: the coordination of every group under
// a key prefix, event-driven over a store and a clock, so that the same
// code runs on etcd (Run wraps it in an election) and under the
// deterministic simulator (package sim).
type LeaderConfig struct {
	Store store.Store
	Clock clock.Clock
	Keys  proto.Keys
	// Machine is the configuration of every group's machine (its Group is
	// set per group).
	Machine core.Config
	// OpTimeout bounds each store request.
	OpTimeout time.Duration
	// WatchCheck is the watchdog interval of the watch over every group
	// (see idc.Config.WatchCheck): a hung watch is replaced within
	// 2·WatchCheck.
	WatchCheck time.Duration
	// MaxTxnOps is the most operations (compares or deletes) one cleanup
	// transaction carries (etcd's --max-txn-ops; default 128). A store
	// that refuses a transaction as too large halves it.
	MaxTxnOps int
	// Guard holds extra compares on every epoch write (still elected).
	Guard []store.Cmp
	// WallClock stamps each epoch record with when it was written, for
	// people (proto.EpochRecord.WrittenMillis); default time.Now.
	WallClock func() time.Time
	Logger    *slog.Logger
	// Metrics, if set, receives the leader's measurements.
	Metrics *Metrics
}

// Leader coordinates every group while it runs. Its methods are safe for
// concurrent use; every store and clock callback runs under its lock.
//
// Its work scales with the groups that change, not with the groups that
// exist: a watch event hands the view to the machines of the groups it
// touched, and only their next deadlines are evaluated again and moved in
// a heap of every group's deadline (deadlines); one timer is armed for the
// earliest, and when it fires only the groups whose deadline passed are
// ticked. Each group's actions run one at a time, groups independently:
// one group's store call in flight holds no other group back.
type Leader struct {
	cfg   LeaderConfig
	st    store.Store
	clk   clock.Clock
	log   *slog.Logger
	met   *Metrics
	start time.Duration

	mu      sync.Mutex
	stopped bool
	groups  map[string]*group
	watch   store.Watch
	gen     uint64 // of the current listing and watch
	heard   bool   // the watch delivered something since the last check
	// dirty holds the groups watch events touched, updated together by
	// the flush that flushing says is scheduled.
	dirty    map[string]bool
	flushing bool
	hung     bool // the last watch was found hung: watch on a fresh stream
	check    clock.Timer
	maxOps   int

	// dl holds every group that has a deadline, earliest first; timer is
	// armed for the earliest (timerAt), and timerGen tells a timer that
	// was replaced after it fired but before it got the lock.
	dl       deadlines
	timer    clock.Timer
	timerAt  time.Duration
	timerGen uint64
	// stats counts the leader's work per group, for tests.
	stats leaderStats
}

// leaderStats counts the per-group work of a Leader: what must grow with
// the groups that change, not with the groups that exist.
type leaderStats struct {
	deadlines int // NextDeadline evaluations
	updates   int // views handed to machines
	ticks     int // machines ticked by the timer
	finished  int // actions' outcomes reported to machines
}

type group struct {
	name string
	view core.View
	m    *core.Machine
	// queue holds the machine's actions not yet carried out; busy is set
	// while one is. A group's actions run one at a time; groups do not
	// wait for each other.
	queue []core.Action
	busy  bool
	// quiescing is the last epoch this leader wrote quiescing, and
	// quiescedAt when (for the epoch change metric).
	quiescing  uint64
	quiescedAt time.Duration
	// deadline is the machine's next deadline while the group is in the
	// Leader's heap of deadlines, at slot-1 (0: not in it).
	deadline time.Duration
	slot     int
}

// StartLeader starts coordinating: it lists every group's keys, then
// watches them.
func StartLeader(cfg LeaderConfig) *Leader {
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = 128
	}
	if cfg.Metrics == nil {
		cfg.Metrics = newMetrics(nil)
	}
	if cfg.WallClock == nil {
		cfg.WallClock = time.Now
	}
	l := &Leader{cfg: cfg, st: cfg.Store, clk: cfg.Clock, log: cfg.Logger, met: cfg.Metrics,
		groups: map[string]*group{}, maxOps: cfg.MaxTxnOps}
	l.start = l.clk.Now()
	l.met.leader.Set(1)
	l.do(func() {
		l.list()
		l.check = l.clk.AfterFunc(cfg.WatchCheck, l.locked(l.checkWatch))
	})
	return l
}

// Stop stops the leader; callbacks still on their way do nothing.
func (l *Leader) Stop() {
	l.do(func() {
		if l.stopped {
			return
		}
		l.stopped = true
		l.met.leader.Set(0)
		if l.watch != nil {
			l.watch.Cancel()
		}
		for _, t := range []clock.Timer{l.timer, l.check} {
			if t != nil {
				t.Stop()
			}
		}
	})
}

func (l *Leader) now() time.Duration { return l.clk.Now() - l.start }

func (l *Leader) do(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
}

func (l *Leader) locked(f func()) func() { return func() { l.do(f) } }

// list reads every group's keys and then watches them from the next
// revision. The machines are kept across a re-list: what they observed
// (the highest epoch seen, when an epoch began quiescing, when a lease was
// seen gone, flapping) stays; only the views are built afresh.
func (l *Leader) list() {
	if l.stopped {
		return
	}
	if l.watch != nil {
		l.watch.Cancel()
		l.watch = nil
	}
	l.gen++
	gen := l.gen
	keys := l.cfg.Keys
	l.st.Txn(store.Txn{Then: []store.Op{store.GetPrefix(keys.Groups())}}, l.cfg.OpTimeout, func(resp store.TxnResponse, err error) {
		l.do(func() {
			if l.stopped || gen != l.gen {
				return
			}
			if err != nil {
				l.log.Warn("list groups failed; retrying", "err", err)
				l.clk.AfterFunc(200*time.Millisecond, l.locked(l.list))
				return
			}
			for _, g := range l.groups {
				g.view = core.NewView(g.name)
			}
			if len(resp.Gets) > 0 {
				for _, kv := range resp.Gets[0] {
					l.apply(kv, false)
				}
			}
			l.heard = true
			fresh := l.hung
			l.hung = false
			l.watch = l.st.Watch(store.WatchRequest{Key: keys.Groups(), End: store.PrefixEnd(keys.Groups()), Rev: resp.Revision + 1, Fresh: fresh},
				func(wr store.WatchResponse) { l.do(func() { l.onWatch(gen, wr) }) })
			// Every group is updated, once: one that vanished from the
			// store has an empty view now, which its machine waits on (G1).
			l.dirty = nil
			for _, name := range slices.Sorted(maps.Keys(l.groups)) {
				l.update(name)
			}
			l.arm()
		})
	})
}

func (l *Leader) onWatch(gen uint64, wr store.WatchResponse) {
	if l.stopped || gen != l.gen {
		return
	}
	l.heard = true
	if wr.Err != nil {
		l.log.Warn("watch failed; relisting", "err", wr.Err)
		l.met.relists.Inc()
		l.gen++
		l.clk.AfterFunc(100*time.Millisecond, l.locked(l.list))
		return
	}
	for _, ev := range wr.Events {
		if g := l.apply(ev.KV, ev.Delete); g != "" {
			if l.dirty == nil {
				l.dirty = map[string]bool{}
			}
			l.dirty[g] = true
		}
	}
	if len(l.dirty) > 0 && !l.flushing {
		// The groups are updated once the responses already on their way
		// are in: at a thousand members an update costs a few hundred
		// microseconds, and the acknowledgements of an epoch change come
		// in a burst of responses that would otherwise each cost one.
		l.flushing = true
		l.clk.AfterFunc(0, l.locked(l.flush))
	}
}

// flush updates every group that watch events touched since the last
// flush, once each.
func (l *Leader) flush() {
	l.flushing = false
	if l.stopped {
		return
	}
	dirty := l.dirty
	l.dirty = nil
	for _, name := range slices.Sorted(maps.Keys(dirty)) {
		l.update(name)
	}
	l.arm()
}

// checkWatch is the watchdog (see LeaderConfig.WatchCheck and package
// watchdog).
func (l *Leader) checkWatch() {
	if l.stopped {
		return
	}
	if l.watch != nil { // else being listed again
		switch watchdog.Check(&l.heard) {
		case watchdog.Hung:
			l.log.Warn("watch silent; relisting")
			l.met.relists.Inc()
			l.hung = true
			l.list()
		case watchdog.AskProgress:
			l.watch.RequestProgress()
		}
	}
	l.check = l.clk.AfterFunc(l.cfg.WatchCheck, l.locked(l.checkWatch))
}

// apply folds a key change into its group's view and returns the group.
func (l *Leader) apply(kv store.KV, del bool) string {
	p, ok := l.cfg.Keys.Parse(kv.Key)
	if !ok {
		return ""
	}
	g := l.groups[p.Group]
	if g == nil {
		if proto.CheckName("group", p.Group) != nil {
			return ""
		}
		mc := l.cfg.Machine
		mc.Group = p.Group
		g = &group{name: p.Group, view: core.NewView(p.Group), m: core.New(mc)}
		l.groups[p.Group] = g
	}
	g.view.Apply(p, kv.Value, kv.ModRev, del)
	return p.Group
}

func (l *Leader) update(name string) {
	g := l.groups[name]
	l.stats.updates++
	g.m.Update(g.view, l.now())
	l.settle(g)
}

// settle follows an event of group g's machine (an update, a tick, the
// end of an action): it carries out the actions the machine decided and
// moves the group to its new place among the deadlines. The caller then
// arms the timer (arm), once for all the groups its event touched.
func (l *Leader) settle(g *group) {
	l.pump(g)
	d, ok := g.m.NextDeadline()
	l.stats.deadlines++
	l.dl.set(g, d, ok)
}

// arm sets the timer to the earliest deadline of any group, unless it is
// set for it already: a deadline that moved earlier re-arms it, one that
// moved later or went away too (no firing for nothing).
func (l *Leader) arm() {
	if l.stopped {
		return
	}
	next, ok := l.dl.next()
	if l.timer != nil {
		if ok && next == l.timerAt {
			return
		}
		l.timer.Stop()
		l.timer = nil
	}
	if !ok {
		return
	}
	l.timerGen++
	gen := l.timerGen
	l.timerAt = next
	l.timer = l.clk.AfterFunc(max(next-l.now(), 0), l.locked(func() {
		if l.stopped || gen != l.timerGen {
			return // replaced meanwhile
		}
		l.timer = nil
		l.fire()
	}))
}

// fire ticks the machines of the groups whose deadline has passed (taken
// from the heap; the others are not looked at), then re-arms the timer.
func (l *Leader) fire() {
	now := l.now()
	for _, g := range l.dl.due(now) {
		l.stats.ticks++
		g.m.Tick(now)
		l.settle(g)
	}
	l.arm()
}

// pump carries out group g's actions, one at a time.
func (l *Leader) pump(g *group) {
	g.queue = append(g.queue, g.m.Ready()...)
	if g.busy || len(g.queue) == 0 || l.stopped {
		return
	}
	a := g.queue[0]
	g.queue = g.queue[1:]
	g.busy = true
	finish := func(report func(now time.Duration)) {
		l.do(func() {
			g.busy = false
			if l.stopped {
				return
			}
			l.stats.finished++
			report(l.now())
			l.settle(g)
			l.arm()
		})
	}
	switch a := a.(type) {
	case core.WriteEpoch:
		l.write(g, a, finish)
	case core.Revoke:
		l.revoke(g, a.Member, finish)
	case core.Cleanup:
		l.cleanup(g, a, finish)
	}
}

// Write outcomes, for logs and the metric idc_coordinator_epoch_writes_failed_total.
const (
	failConflict    = "conflict"    // the compare failed: another writer moved first
	failRejected    = "rejected"    // the store refused the request as such
	failUnavailable = "unavailable" // no answer, or no leader
)

func classify(err error) string {
	switch {
	case errors.Is(err, store.ErrTooManyOps), errors.Is(err, store.ErrTooLarge):
		return failRejected
	}
	return failUnavailable
}

func (l *Leader) write(g *group, a core.WriteEpoch, finish func(func(time.Duration))) {
	keys := l.cfg.Keys
	key := keys.Epoch(g.name)
	var cmps []store.Cmp
	if !mutation.On(mutation.NoCAS) {
		cmps = append([]store.Cmp{{Key: key, Rev: a.ExpectRevision}}, l.cfg.Guard...)
	}
	rec := a.Record
	rec.WrittenMillis = l.cfg.WallClock().UnixMilli()
	txn := store.Txn{If: cmps, Then: []store.Op{store.Put(key, proto.EncodeEpoch(rec), 0)}}
	if mutation.On(mutation.CleanupInCAS) && a.Record.State == proto.Connected {
		// As the connect once did: the cleanup in the same transaction.
		for _, pfx := range []string{keys.Acks(g.name), keys.Faults(g.name), keys.FenceAcks(g.name)} {
			txn.Then = append(txn.Then, store.DeleteRange(pfx, pfx+proto.EpochKey(a.Record.Number)))
		}
		for _, id := range slices.Sorted(maps.Keys(g.view.Left)) {
			txn.Then = append(txn.Then, store.Delete(keys.Left(g.name, id)))
		}
	}
	l.st.Txn(txn, l.cfg.OpTimeout, func(resp store.TxnResponse, err error) {
		finish(func(now time.Duration) {
			rec := a.Record
			switch {
			case err != nil:
				kind := classify(err)
				l.met.writeFailed.WithLabelValues(g.name, kind).Inc()
				l.log.Warn("epoch write failed", "group", g.name, "epoch", rec.Number, "state", rec.State, "kind", kind, "err", err)
				g.m.WriteFailed(now)
			case !resp.Succeeded:
				l.met.writeFailed.WithLabelValues(g.name, failConflict).Inc()
				l.log.Debug("epoch write not applied: another writer moved first", "group", g.name, "epoch", rec.Number)
				g.m.WriteFailed(now)
			default:
				l.log.Info("epoch", "group", g.name, "number", rec.Number, "state", rec.State,
					"members", proto.IDs(rec.Members), "reason", rec.Reason)
				var took time.Duration
				switch {
				case rec.State == proto.Quiescing:
					g.quiescing, g.quiescedAt = rec.Number, now
				case g.quiescing == rec.Number:
					took = now - g.quiescedAt
				}
				l.met.written(rec, took)
			}
		})
	})
}

func (l *Leader) revoke(g *group, m proto.Member, finish func(func(time.Duration))) {
	l.st.Revoke(store.LeaseID(m.Lease), l.cfg.OpTimeout, func(err error) {
		finish(func(now time.Duration) {
			if err != nil && !errors.Is(err, store.ErrLeaseNotFound) {
				l.log.Warn("revoke failed; will retry", "group", g.name, "member", m.ID, "lease", m.Lease, "err", err)
				g.m.RevokeFailed(m.Ref(), now)
				return
			}
			l.log.Info("revoked departed member's lease", "group", g.name, "member", m.ID, "incarnation", m.Incarnation)
			l.met.revokes.WithLabelValues(g.name).Inc()
			g.m.Revoked(m.Ref(), now)
		})
	})
}

// cleanup deletes what a Cleanup names in transactions of at most
// l.maxOps operations: first the acks, fault reports and fence acks of
// earlier epochs (three range deletes), then the leave markers, each
// conditioned on its mod revision. Best effort: a failure is logged and
// reported, and the machine asks again later.
func (l *Leader) cleanup(g *group, c core.Cleanup, finish func(func(time.Duration))) {
	keys := l.cfg.Keys
	var txns []store.Txn
	var ranges []store.Op
	for _, pfx := range []string{keys.Acks(g.name), keys.Faults(g.name), keys.FenceAcks(g.name)} {
		ranges = append(ranges, store.DeleteRange(pfx, pfx+proto.EpochKey(c.Before)))
	}
	txns = append(txns, store.Txn{Then: ranges})
	var chunk store.Txn
	for _, id := range slices.Sorted(maps.Keys(c.Left)) {
		key := keys.Left(g.name, id)
		chunk.If = append(chunk.If, store.Cmp{Key: key, Rev: c.Left[id]})
		chunk.Then = append(chunk.Then, store.Delete(key))
		if len(chunk.Then) >= l.maxOps {
			txns = append(txns, chunk)
			chunk = store.Txn{}
		}
	}
	if len(chunk.Then) > 0 {
		txns = append(txns, chunk)
	}
	var next func(i int)
	next = func(i int) {
		if i == len(txns) {
			finish(func(now time.Duration) { g.m.CleanedUp(now) })
			return
		}
		l.st.Txn(txns[i], l.cfg.OpTimeout, func(_ store.TxnResponse, err error) {
			if err == nil {
				// A failed compare is fine: that marker is newer.
				next(i + 1)
				return
			}
			finish(func(now time.Duration) {
				if errors.Is(err, store.ErrTooManyOps) || errors.Is(err, store.ErrTooLarge) {
					l.maxOps = max(1, min(l.maxOps, txns[i].Ops())/2)
				}
				l.met.cleanupFailed.WithLabelValues(g.name, classify(err)).Inc()
				l.log.Warn("cleanup failed; will retry", "group", g.name, "err", err, "max_ops", l.maxOps)
				g.m.CleanupFailed(now)
			})
		})
	}
	next(0)
}

// Describe says where the leader stands in group name, for the
// simulator's reports.
func (l *Leader) Describe(name string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.groups[name]
	if g == nil {
		return "no such group"
	}
	dl, ok := g.m.NextDeadline()
	rec, _ := json.Marshal(g.view.Epoch)
	return fmt.Sprintf("view rev %d %s; busy=%v queue=%d; next deadline %v (%v) now %v", g.view.EpochRevision, rec, g.busy, len(g.queue), dl, ok, l.now())
}
