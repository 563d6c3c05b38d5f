package membership

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/idc-dev/idc/internal/mutation"
	"log/slog"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/core/member"
	"github.com/idc-dev/idc/internal/channel"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// Driver is one membership: the machine, its lease, its epoch watch and
// the I/O the machine asks for. Every method is safe for concurrent use;
// every callback from the store and the clock runs under d.mu.
type Driver struct {
	cfg   Config
	st    store.Store
	clk   clock.Clock
	keys  proto.Keys
	log   *slog.Logger
	met   *memberMetrics
	start time.Duration // clock reading at Start: the machine's origin

	mu      sync.Mutex
	m       *member.Machine // nil until registered
	lease   store.LeaseID
	joining func(*Driver, error) // set until the join completes or fails
	stopped bool                 // background work ended for good
	notify  bool                 // OnChange is due
	after   []func()             // run once the lock is released
	done    chan struct{}        // closed once stopped
	changed chan struct{}        // closed and replaced on every change
	cur     *Epoch               // the connected epoch, or the last one
	mesh    *channel.Mesh        // the channels (nil without)
	leftErr error                // why the leave could not complete
	closing func()               // Close's callback, due once the lease is revoked

	leaseTimer, renewTimer, checkTimer clock.Timer

	watch     store.Watch
	watchGen  uint64
	watchRead bool          // the record was read after the watch was created
	early     []store.Event // events delivered before that read
	heard     bool          // the watch delivered something since the last check
	hung      bool          // the last watch was found hung
}

// Start registers the membership: it grants the lease (refusing a TTL the
// store would change), creates the member record only if absent, watches
// and reads the epoch record, and starts renewing. done is called once,
// with the driver or with an error wrapping proto.ErrConfig,
// proto.ErrAlreadyLive or store.ErrUnavailable; the driver is returned at
// once so that a caller may Abort a join in progress.
func Start(cfg Config, done func(*Driver, error)) *Driver {
	d := &Driver{
		cfg: cfg, st: cfg.Store, clk: cfg.Clock, keys: cfg.Keys,
		log:     cfg.Logger.With("group", cfg.Group, "domain", cfg.ID),
		met:     newMemberMetrics(cfg.Metrics, cfg.Group, cfg.ID),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		joining: done,
	}
	d.start = d.clk.Now()
	if err := cfg.Validate(); err != nil {
		d.do(func() { d.failJoin(err) })
		return d
	}
	if cfg.Channels != nil {
		cc := *cfg.Channels
		cc.Group, cc.ID, cc.Incarnation, cc.Clock, cc.Logger = cfg.Group, cfg.ID, cfg.Incarnation, cfg.Clock, cfg.Logger
		mesh, err := channel.Start(cc, host{d})
		if err != nil {
			d.do(func() { d.failJoin(err) })
			return d
		}
		d.mesh = mesh
	}
	d.do(d.grant)
	return d
}

// Mesh returns the membership's channels, or nil if it has none.
func (d *Driver) Mesh() *channel.Mesh { return d.mesh }

// addr is where the membership accepts channels ("" for nowhere).
func (d *Driver) addr() string {
	if d.mesh == nil {
		return ""
	}
	return d.mesh.Addr()
}

// now is the machine's time: the local clock since Start.
func (d *Driver) now() time.Duration { return d.clk.Now() - d.start }

// do runs f under the lock, then what f left for later and OnChange if f
// changed the state: calls to the user never run under d.mu.
func (d *Driver) do(f func()) {
	d.mu.Lock()
	f()
	d.unlock()
}

// unlock releases d.mu, then runs what was left for later and OnChange if
// the state changed.
func (d *Driver) unlock() {
	n, after := d.notify, d.after
	d.notify, d.after = false, nil
	d.mu.Unlock()
	for _, g := range after {
		g()
	}
	if n && d.cfg.OnChange != nil {
		d.cfg.OnChange()
	}
}

// later runs f once the lock is released. Called with d.mu held.
func (d *Driver) later(f func()) { d.after = append(d.after, f) }

// changedNow marks a change of state: waiters wake, OnChange is due.
// Called with d.mu held.
func (d *Driver) changedNow() {
	close(d.changed)
	d.changed = make(chan struct{})
	d.notify = true
}

func (d *Driver) grant() {
	sent := d.now()
	d.st.Grant(d.cfg.Lease.TTL, d.cfg.OpTimeout, func(l store.Lease, err error) {
		d.do(func() {
			if err == nil && d.stopped {
				d.revoke(l.ID)
				return
			}
			if d.stopped {
				return
			}
			if err != nil {
				d.failJoin(fmt.Errorf("grant lease: %w", err))
				return
			}
			d.lease = l.ID
			if l.TTL != d.cfg.Lease.TTL {
				d.revoke(l.ID)
				d.failJoin(fmt.Errorf("%w: the store granted a %v lease for the %v asked; raise LeaseTTL to at least %v", proto.ErrConfig, l.TTL, d.cfg.Lease.TTL, l.TTL))
				return
			}
			d.register(sent)
		})
	})
}

// register creates the member record only if absent. sent is when the
// grant was sent: the lease is valid from then.
func (d *Driver) register(sent time.Duration) {
	rec := proto.Member{ID: d.cfg.ID, Incarnation: d.cfg.Incarnation, Lease: int64(d.lease), TTL: d.cfg.Lease.TTL, Priority: d.cfg.Priority, Addr: d.addr()}
	val, _ := json.Marshal(rec)
	key := d.keys.Member(d.cfg.Group, d.cfg.ID)
	txn := store.Txn{
		If:   []store.Cmp{{Key: key, Create: true, Rev: 0}},
		Then: []store.Op{store.Put(key, val, d.lease)},
		Else: []store.Op{store.Get(key)},
	}
	d.st.Txn(txn, d.cfg.OpTimeout, func(resp store.TxnResponse, err error) {
		d.do(func() {
			if d.stopped {
				return
			}
			if err != nil {
				d.revoke(d.lease)
				d.failJoin(fmt.Errorf("register: %w", err))
				return
			}
			if !resp.Succeeded {
				d.revoke(d.lease)
				var other proto.Member
				if len(resp.Gets) > 0 && len(resp.Gets[0]) > 0 {
					_ = json.Unmarshal(resp.Gets[0][0].Value, &other)
				}
				d.failJoin(fmt.Errorf("%w: domain %q in group %q (incarnation %x holds it until its lease ends)", proto.ErrAlreadyLive, d.cfg.ID, d.cfg.Group, other.Incarnation))
				return
			}
			d.m = member.New(member.Config{Group: d.cfg.Group, ID: d.cfg.ID, Incarnation: d.cfg.Incarnation, Lease: d.cfg.Lease})
			d.m.Renewed(sent)
			d.rearm()
			d.startWatch()
		})
	})
}

// joined completes the join: renewals and the watch check start.
func (d *Driver) joined() {
	done := d.joining
	d.joining = nil
	d.renewTimer = d.clk.AfterFunc(d.cfg.RenewInterval, d.locked(d.renew))
	d.checkTimer = d.clk.AfterFunc(d.cfg.WatchCheck, d.locked(d.checkWatch))
	d.log.Info("joined", "incarnation", fmt.Sprintf("%x", d.cfg.Incarnation), "lease", int64(d.lease), "ttl", d.cfg.Lease.TTL)
	d.changedNow()
	if done != nil {
		d.later(func() { done(d, nil) })
	}
}

// failJoin ends a join that did not complete.
func (d *Driver) failJoin(err error) {
	done := d.joining
	d.joining = nil
	d.halt()
	if done != nil {
		d.later(func() { done(nil, err) })
	}
}

// locked returns f wrapped to run under the lock.
func (d *Driver) locked(f func()) func() { return func() { d.do(f) } }

// Abort stops a join in progress, or the membership if it completed,
// as Close does; done is not called.
func (d *Driver) Abort() { d.Close(nil) }

// halt ends the background work for good. Called with d.mu held.
func (d *Driver) halt() {
	if d.stopped {
		return
	}
	d.stopped = true
	for _, t := range []clock.Timer{d.leaseTimer, d.renewTimer, d.checkTimer} {
		if t != nil {
			t.Stop()
		}
	}
	if d.watch != nil {
		d.watch.Cancel()
		d.watch = nil
	}
	if d.mesh != nil {
		d.later(d.mesh.Stop)
	}
	close(d.done)
	d.changedNow()
}

// revoke gives a lease back, best effort.
func (d *Driver) revoke(id store.LeaseID) { d.revokeThen(id, nil) }

// revokeThen gives a lease back, best effort, then calls f (if not nil)
// without the lock.
func (d *Driver) revokeThen(id store.LeaseID, f func()) {
	var done func(error)
	if f != nil {
		done = func(error) { f() }
	}
	d.st.Revoke(id, d.cfg.OpTimeout, done)
}

// rearm sets the lease timer to the lease deadline. Called with d.mu held.
func (d *Driver) rearm() {
	if d.stopped || d.m == nil || d.m.Err() != nil {
		return // a stopped machine (left, fenced) has no deadline to keep
	}
	dl, ok := d.m.LeaseDeadline()
	if !ok {
		return
	}
	if d.leaseTimer != nil {
		d.leaseTimer.Stop()
	}
	d.leaseTimer = d.clk.AfterFunc(max(dl-d.now(), 0), d.locked(func() {
		d.tick()
		d.rearm()
	}))
}

// tick feeds the clock to the machine. Called with d.mu held.
func (d *Driver) tick() {
	if d.m == nil {
		return
	}
	d.m.Tick(d.now())
	d.handle()
}

// renewTimeout is how long a renewal sent at now may wait for its
// answer: as long as the lease is valid by the member's reckoning. An
// answer after that can no longer keep the membership (it fences itself
// at its deadline), while an earlier give-up and retry would only add
// load to a store that is slow to answer (the renewal's own stream
// replaces a connection gone silent: store.Renewer).
func (d *Driver) renewTimeout(now time.Duration) time.Duration {
	if dl, ok := d.m.LeaseDeadline(); ok && dl > now {
		return dl - now
	}
	return d.cfg.RenewInterval
}

func (d *Driver) renew() {
	if d.stopped {
		return
	}
	sent := d.now()
	d.st.KeepAlive(d.lease, d.renewTimeout(sent), func(_ time.Duration, err error) {
		d.do(func() {
			if d.stopped {
				return
			}
			wait := d.cfg.RenewInterval
			switch {
			case err == nil:
				at := sent
				if mutation.On(mutation.ValidityFromReceipt) {
					at = d.now()
				}
				d.m.Renewed(at)
				d.met.renewed.Observe((d.now() - sent).Seconds())
				d.rearm()
				if dl, ok := d.m.LeaseDeadline(); ok {
					d.met.leaseValid.Set((dl - d.now()).Seconds())
				}
			case errors.Is(err, store.ErrLeaseNotFound):
				d.m.LeaseLost()
			default:
				wait = d.cfg.RenewInterval / 5
				d.met.renewFailed.Inc()
				dl, _ := d.m.LeaseDeadline()
				d.log.Warn("lease renewal failed", "err", err, "valid_for", (dl - d.now()).Round(time.Millisecond))
			}
			d.handle()
			if !d.stopped {
				d.renewTimer = d.clk.AfterFunc(wait, d.locked(d.renew))
			}
		})
	})
}

// handle carries out the machine's actions. Called with d.mu held.
func (d *Driver) handle() {
	acts := d.m.Ready()
	if len(acts) == 0 {
		return
	}
	// A fence in the same batch as a disconnect is why the epoch ended.
	var fenced error
	for _, a := range acts {
		if f, ok := a.(member.Fence); ok {
			fenced = f.Err
		}
	}
	for _, a := range acts {
		switch a := a.(type) {
		case member.Connect:
			d.cur = newEpoch(d, a.Epoch, a.Members)
			if d.mesh != nil {
				e, ms := a.Epoch, a.Members
				d.later(func() { d.mesh.Connect(e, ms) })
			}
			d.log.Info("connected", "epoch", a.Epoch, "members", memberList(a.Members))
			d.met.epoch.Set(float64(a.Epoch))
			d.met.connected.Set(1)
			d.met.connects.Inc()
		case member.Disconnect:
			if d.cur != nil && d.cur.num == a.Epoch {
				cause := fenced
				if cause == nil {
					cause = fmt.Errorf("%w: epoch %d of group %s disconnected", proto.ErrEpochEnded, a.Epoch, d.cfg.Group)
				}
				d.cur.cancel(cause)
				d.log.Info("disconnected", "epoch", a.Epoch)
			}
			if d.mesh != nil {
				e := a.Epoch
				d.later(func() { d.mesh.Disconnect(e) })
			}
			d.met.connected.Set(0)
			d.met.disconnectedAt = d.now()
		case member.WriteAck:
			if d.met.disconnectedAt != 0 {
				d.met.quiesce.Observe((d.now() - d.met.disconnectedAt).Seconds())
			}
			d.writeAck(a.Epoch)
		case member.Fence:
			if errors.Is(a.Err, proto.ErrClosed) {
				d.log.Info("closed")
			} else {
				d.log.Warn("fenced", "err", a.Err)
			}
			switch {
			case errors.Is(a.Err, proto.ErrLeaseExpired):
				d.met.fencedLease.Inc()
			case errors.Is(a.Err, proto.ErrEvicted):
				d.met.fencedEvict.Inc()
			}
			if d.cur != nil {
				d.cur.cancel(a.Err)
			}
			if !d.stopped {
				d.revokeThen(d.lease, d.closing)
				d.closing = nil
			}
			if d.joining != nil {
				// Fenced before the join completed (its lease lapsed
				// while the watch was being set up): the join fails.
				d.failJoin(fmt.Errorf("join: %w", a.Err))
			}
			d.halt()
		case member.Leave:
			d.leaveIO()
		}
	}
	d.changedNow()
}

// memberList is what a log line says of an epoch's members: their IDs,
// or their number in a large group, where every member logging every ID
// at every change would cost the group O(members²).
func memberList(ms []proto.Member) any {
	if len(ms) > 16 {
		return fmt.Sprintf("%d members", len(ms))
	}
	return proto.IDs(ms)
}
