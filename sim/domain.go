package sim

import (
	"fmt"
	"time"

	"github.com/idc-dev/idc/core/member"
	"github.com/idc-dev/idc/proto"
)

// Domain is a simulated domain: the member driver of idc.Domain (lease
// grant and create-if-absent registration, the renewal loop, the epoch
// watch, acks with retries, the self-fence timer, graceful leave) around the
// real core/member.Machine, plus an application that runs operations in the
// connected epoch and rejoins with a new incarnation after it was fenced or
// left.
type Domain struct {
	w    *World
	n    *node
	id   string
	ms   *Membership // the latest registered membership
	inc  uint64
	dead bool // crashed: for good
	// joining is set from the moment a join is scheduled until it
	// registered: there is never more than one join at a time.
	joining bool
	// ops are the running operations of every incarnation, oldest first.
	ops []*op
}

// Membership is one incarnation's membership in the group: the state of
// idc.Domain.
type Membership struct {
	d       *Domain
	inc     uint64
	lease   int64
	start   time.Duration // local clock reading at Join: machines see time since
	m       *member.Machine
	stopped bool   // the driver's background work ended (fenced or left)
	timer   *event // the self-fence timer
	watchID uint64
	// watching is set once the first epoch read answered; watch responses
	// that arrive before wait in early (the real watch channel buffers them
	// until Join has returned and watchLoop reads it).
	watching bool
	early    [][]Event
	// delivered is the highest epoch the machine delivered (Connect).
	delivered uint64
	cancelled map[uint64]bool // epoch contexts that ended
}

type op struct {
	id       uint64
	ms       *Membership
	epoch    uint64
	careless bool
	endAt    time.Duration // global
	ended    bool
}

func newDomain(w *World, n *node, id string) *Domain {
	d := &Domain{w: w, n: n, id: id}
	n.onResume = d.resume
	return d
}

func (d *Domain) start() {
	d.scheduleJoin(d.w.uniform(0, 300*time.Millisecond))
	d.w.afterLocal(d.n.id, d.w.uniform(0, time.Second), "app", 0, 0, d.app)
}

func (d *Domain) local() time.Duration { return d.n.clock.local(d.w.now) }

func (ms *Membership) now() time.Duration { return ms.d.local() - ms.start }

func (ms *Membership) ref() proto.Ref { return proto.Ref{ID: ms.d.id, Incarnation: ms.inc} }

// join registers a new incarnation (Join → register → watchEpoch): grant,
// create the member record only if absent, watch and read the epoch
// record, then start renewing. Any failure gives the lease back and tries
// again later with a new incarnation, as an application calling Join again
// would.
func (d *Domain) join() {
	w := d.w
	if d.dead {
		return
	}
	d.inc++
	inc := d.inc
	start := d.local()
	cfg := w.cfg
	retry := func(lease int64) {
		if lease != 0 {
			d.revokeQuietly(lease)
		}
		d.joining = false
		d.rejoinLater()
	}
	w.call(d.n.id, cfg.OpTimeout, "grant", func() any { return w.store.Grant(cfg.TTL) },
		func(resp any) {
			lease := resp.(int64)
			key := keys.Member(group, d.id)
			rec := proto.Member{ID: d.id, Incarnation: inc, Lease: lease, TTL: cfg.TTL}
			w.call(d.n.id, cfg.OpTimeout, "register", func() any {
				return w.store.Txn([]Cmp{{Key: key, Create: true, Rev: 0}},
					[]Op{{Kind: OpPut, Key: key, Val: rec, Lease: lease}}, []Op{{Kind: OpGet, Key: key}})
			}, func(resp any) {
				if r := resp.(TxnResp); r.Err != nil || !r.Succeeded {
					retry(lease) // ErrAlreadyLive: the old incarnation's lease has not run out
					return
				}
				d.registered(inc, lease, start)
			}, func() { retry(lease) })
		}, func() { retry(0) })
}

// registered starts a membership once its record is in the store.
func (d *Domain) registered(inc uint64, lease int64, start time.Duration) {
	w := d.w
	ms := &Membership{d: d, inc: inc, lease: lease, start: start, cancelled: map[uint64]bool{}}
	ms.m = member.New(member.Config{Group: group, ID: d.id, Incarnation: inc, Lease: w.cfg.memberLease()})
	ms.m.Renewed(0) // the grant was sent at start
	d.ms, d.joining = ms, false
	w.note(d.n.id, "registered %v lease %d", ms.ref(), lease)
	ms.rearm()
	ms.watch(true)
}

// watch starts the epoch watch and reads the record (watchEpoch); on the
// first success it starts the renewal loop. If it fails, the first time the
// Join fails (abandon), later it is retried (watchLoop).
func (ms *Membership) watch(first bool) {
	w := ms.d.w
	key := keys.Epoch(group)
	id := w.id()
	ms.watchID = id
	wt := &watcher{id: id, node: ms.d.n.id, key: key, fn: func(evs []Event, _ int64) {
		if ms.stopped || ms.watchID != id {
			return
		}
		if !ms.watching {
			ms.early = append(ms.early, evs)
			return
		}
		ms.observeEvents(evs)
	}}
	w.call(ms.d.n.id, w.cfg.OpTimeout, "watch epoch", func() any {
		w.store.watch(wt)
		if e := w.store.kvs[key]; e != nil {
			return e.val
		}
		return nil
	}, func(resp any) {
		if ms.stopped || ms.watchID != id {
			return
		}
		ms.observe(resp)
		if first {
			ms.watching = true
			for _, evs := range ms.early {
				ms.observeEvents(evs)
			}
			ms.early = nil
			ms.renew()
		}
	}, func() {
		if ms.stopped {
			return
		}
		if first {
			ms.abandon()
			return
		}
		w.afterLocal(ms.d.n.id, 100*time.Millisecond, "rewatch", 0, 0, func() { ms.watch(false) })
	})
}

// abandon undoes a Join that failed after registering.
func (ms *Membership) abandon() {
	ms.stopped = true
	ms.stopTimer()
	ms.d.w.store.cancelWatch(ms.watchID)
	ms.d.revokeQuietly(ms.lease)
	ms.d.rejoinLater()
}

func (ms *Membership) observeEvents(evs []Event) {
	for _, ev := range evs {
		if !ev.Del && !ms.stopped {
			ms.observe(ev.Val)
		}
	}
}

func (ms *Membership) observe(v any) {
	rec, ok := v.(*proto.EpochRecord)
	if !ok || rec == nil {
		return
	}
	ms.m.Observe(rec)
	ms.handle()
}

// renew is one turn of the renewal loop: KeepAliveOnce with a timeout of
// RenewInterval; answered renewals report their local send time.
func (ms *Membership) renew() {
	if ms.stopped {
		return
	}
	w := ms.d.w
	ri := w.cfg.renewInterval()
	sent := ms.now()
	w.call(ms.d.n.id, ri, "renew", func() any { return w.store.KeepAlive(ms.lease) }, func(resp any) {
		if ms.stopped {
			return
		}
		if resp.(bool) {
			at := sent
			if w.cfg.ValidityFromReceipt {
				at = ms.now()
			}
			ms.m.Renewed(at)
			ms.rearm()
		} else {
			ms.m.LeaseLost()
		}
		ms.handle()
		w.afterLocal(ms.d.n.id, ri, "renew", 0, 0, ms.renew)
	}, func() {
		if ms.stopped {
			return
		}
		ms.handle()
		w.afterLocal(ms.d.n.id, ri/5, "renew", 0, 0, ms.renew)
	})
}

// rearm sets the self-fence timer to the lease deadline.
func (ms *Membership) rearm() {
	dl, ok := ms.m.LeaseDeadline()
	if ph := ms.m.Phase(); !ok || ms.stopped || ph == member.Fenced || ph == member.Left {
		return
	}
	ms.stopTimer()
	ms.timer = ms.d.w.afterLocal(ms.d.n.id, max(dl-ms.now(), 0), "lease timer", 0, 0, func() {
		ms.timer = nil
		ms.tick()
		ms.rearm()
	})
}

func (ms *Membership) tick() {
	ms.m.Tick(ms.now())
	ms.handle()
}

// handle carries out the machine's actions, as idc.Domain.handle does.
func (ms *Membership) handle() {
	w := ms.d.w
	for _, a := range ms.m.Ready() {
		switch a := a.(type) {
		case member.Connect:
			ms.delivered = a.Epoch
			w.hist.add(Rec{Kind: HConnect, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: a.Epoch})
			w.note(ms.d.n.id, "%v connected in epoch %d", ms.ref(), a.Epoch)
			e := a.Epoch
			w.afterLocal(ms.d.n.id, w.uniform(0, 20*time.Millisecond), "app begins", int64(e), 0, func() { ms.work(e) })
		case member.Disconnect:
			ms.cancel(a.Epoch)
		case member.WriteAck:
			ms.writeAck(a.Epoch, 20*time.Millisecond)
		case member.Fence:
			w.note(ms.d.n.id, "%v fenced: %v", ms.ref(), a.Err)
			ms.cancelAll()
			if !ms.stopped {
				ms.stop()
				ms.d.revokeQuietly(ms.lease)
				ms.d.rejoinLater()
			}
		case member.Leave:
			ms.leaveIO(20 * time.Millisecond)
		}
	}
}

func (ms *Membership) stopTimer() {
	if ms.timer != nil {
		ms.timer.off = true
		ms.timer = nil
	}
}

// stop ends the membership's background work.
func (ms *Membership) stop() {
	if ms.stopped {
		return
	}
	ms.stopped = true
	ms.stopTimer()
	w := ms.d.w
	w.store.cancelWatch(ms.watchID)
	w.hist.add(Rec{Kind: HFence, At: w.now, Ref: ms.ref(), Lease: ms.lease, Note: errString(ms.m.Err())})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// rejoinLater joins again with a new incarnation after a random delay, as
// an application whose membership ended would.
func (d *Domain) rejoinLater() {
	d.scheduleJoin(d.w.uniform(100*time.Millisecond, d.w.cfg.RejoinDelay))
}

func (d *Domain) scheduleJoin(after time.Duration) {
	if d.joining {
		d.w.fail("sim", fmt.Sprintf("driver bug: domain %s would join twice at once", d.id))
		return
	}
	d.joining = true
	d.w.afterLocal(d.n.id, after, "join", 0, 0, d.join)
}

func (d *Domain) revokeQuietly(lease int64) {
	d.w.call(d.n.id, time.Second, "revoke own lease", func() any { return d.w.store.Revoke(lease) }, nil, nil)
}

// put writes key with retries (backoff from 20 ms, doubling up to 1 s)
// until it lands or the membership stops.
func (ms *Membership) put(what, key string, val any, lease int64, backoff time.Duration, done func()) {
	w := ms.d.w
	if ms.stopped {
		return
	}
	again := func() {
		if ms.stopped {
			return
		}
		w.afterLocal(ms.d.n.id, backoff, what+" retry", 0, 0, func() {
			ms.put(what, key, val, lease, min(2*backoff, time.Second), done)
		})
	}
	w.call(ms.d.n.id, w.cfg.OpTimeout, what, func() any { return w.store.Put(key, val, lease) }, func(resp any) {
		if resp != nil {
			again()
			return
		}
		if done != nil && !ms.stopped {
			done()
		}
	}, again)
}

func (ms *Membership) writeAck(e uint64, backoff time.Duration) {
	ms.put("ack", keys.Ack(group, e, ms.d.id), proto.Ack{Epoch: e, ID: ms.d.id, Incarnation: ms.inc}, ms.lease, backoff, nil)
}

// leaveIO writes the leave marker, then gives the lease back and stops.
func (ms *Membership) leaveIO(backoff time.Duration) {
	w := ms.d.w
	ms.put("leave marker", keys.Left(group, ms.d.id), proto.Left{ID: ms.d.id, Incarnation: ms.inc}, 0, backoff, func() {
		lease := ms.lease
		finish := func() {
			if ms.stopped {
				return
			}
			ms.stop()
			w.note(ms.d.n.id, "%v left", ms.ref())
			ms.d.rejoinLater()
		}
		w.call(ms.d.n.id, w.cfg.OpTimeout, "revoke on leave", func() any { return w.store.Revoke(lease) },
			func(any) { finish() }, finish)
	})
}

// resume runs first when a paused domain resumes: it Ticks.
func (d *Domain) resume() {
	if ms := d.ms; ms != nil && !ms.stopped {
		ms.tick()
		ms.rearm()
	}
}

// crash stops the domain for good: its operations vanish with it.
func (d *Domain) crash() {
	w := d.w
	d.dead = true
	d.n.down = true
	d.n.backlog, d.n.pausedUntil = nil, 0
	w.store.unwatch(d.n.id)
	for _, o := range d.ops {
		o.ended = true
		w.hist.add(Rec{Kind: HKill, At: w.now, Ref: o.ms.ref(), Lease: o.ms.lease, Epoch: o.epoch, Op: o.id})
	}
	d.ops = nil
}
