package sim

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/idc-dev/idc/internal/membership"
	"github.com/idc-dev/idc/proto"
)

// Domain is a simulated domain: an application (work.go) around the real
// member driver, internal/membership — the code idc.Membership runs on etcd —
// on the node's simulated store client and clock. When a membership ends
// (fenced, left) the application joins again with a new incarnation, as a
// real one calling idc.Join again would. In the storage scenario a role
// (blockpath.go: a driver domain, the disk) runs around the membership
// instead of the generic application, and a crashed domain restarts as a
// fresh process.
type Domain struct {
	w    *World
	n    *node
	id   string
	ms   *Membership // the latest membership (registered or joining)
	inc  uint64
	dead bool // crashed: for good
	// joining is set from the moment a join is scheduled until it
	// registered or failed: there is never more than one join at a time.
	joining bool
	// ops are the running operations of every incarnation, oldest first.
	ops []*op
	// role is the storage scenario's (nil: the generic application).
	role role
}

// Membership is one incarnation's membership: the real driver and what
// the simulator records of it.
type Membership struct {
	d         *Domain
	inc       uint64
	drv       *membership.Driver
	lease     int64
	delivered uint64 // the highest epoch the driver connected
	connected uint64 // the epoch the application works in (0: none)
	stopped   bool   // the driver stopped (recorded as HFence)
	// ctxGate: the application gates its I/O on the epoch context's Err
	// (as the README's Do pattern invites) rather than on Epoch.Err.
	ctxGate bool
	// recvPending: the application will receive messages soon (chat.go).
	recvPending bool
}

type op struct {
	id       uint64
	ms       *Membership
	ep       *membership.Epoch
	epoch    uint64
	careless bool
	endAt    time.Duration // global
	ended    bool
	winding  bool
	// external: a call, which the channel driver ends (chat.go); finish,
	// if set, ends the operation instead of Epoch.End (a handler's reply).
	external bool
	finish   func()
}

var quiet = slog.New(slog.DiscardHandler)

func newDomain(w *World, n *node, id string) *Domain { return &Domain{w: w, n: n, id: id} }

func (d *Domain) start() {
	if d.role != nil {
		d.role.restarted()
		d.scheduleJoin(d.w.uniform(0, 300*time.Millisecond))
		return
	}
	d.scheduleJoin(d.w.uniform(0, 300*time.Millisecond))
	d.w.afterLocal(d.n.id, d.w.uniform(0, time.Second), "app", 0, 0, d.app)
}

func (ms *Membership) ref() proto.Ref { return proto.Ref{ID: ms.d.id, Incarnation: ms.inc} }

// join starts a new incarnation's membership (idc.Join).
func (d *Domain) join() {
	w := d.w
	if d.dead {
		return
	}
	d.inc++
	ms := &Membership{d: d, inc: d.inc, ctxGate: w.chance(0.5)}
	d.ms = ms
	cfg := w.cfg
	ch := ms.channels()
	if d.role != nil {
		d.role.channels(ms, ch)
	}
	ms.drv = membership.Start(membership.Config{
		Group: group, ID: d.id, Incarnation: ms.inc,
		Lease: cfg.memberLease(), RenewInterval: cfg.renewInterval(), OpTimeout: cfg.OpTimeout,
		WatchCheck: cfg.WatchCheck, Keys: keys,
		Store: w.sharedStore(d.n.id), Clock: nodeClock{w, d.n.id}, Logger: quiet,
		OnChange: ms.changed, Channels: ch,
	}, func(_ *membership.Driver, err error) {
		d.joining = false
		if err != nil {
			w.note(d.n.id, "%v join failed: %v", ms.ref(), err)
			ms.stopped = true
			d.rejoinLater()
			return
		}
		ms.lease = ms.drv.Lease()
		w.note(d.n.id, "registered %v lease %d", ms.ref(), ms.lease)
		ms.changed()
	})
}

// changed is the driver's OnChange: it records what the driver did and
// lets the application react — work in a newly connected epoch, wind up
// the operations of an ended one, join again once the membership ended.
func (ms *Membership) changed() {
	w := ms.d.w
	if ms.d.dead || ms.stopped {
		return
	}
	select {
	case <-ms.drv.Done():
		ms.stopped = true
		w.hist.add(Rec{Kind: HFence, At: w.now, Ref: ms.ref(), Lease: ms.lease, Note: errString(ms.drv.Err())})
		w.note(ms.d.n.id, "%v stopped: %v", ms.ref(), ms.drv.Err())
		if ms.connected != 0 && ms.d.role != nil {
			ms.d.role.disconnected(ms, ms.connected)
		}
		ms.windUp(func(*op) bool { return true })
		if !ms.d.joining {
			ms.d.rejoinLater()
		}
		return
	default:
	}
	ep := ms.drv.Current()
	if ms.connected != 0 && (ep == nil || ep.Number() != ms.connected) {
		w.hist.add(Rec{Kind: HDisconnect, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: ms.connected})
		if ms.d.role != nil {
			ms.d.role.disconnected(ms, ms.connected)
		}
		ms.connected = 0
	}
	if ep != nil && ep.Number() > ms.delivered {
		ms.delivered = ep.Number()
		w.hist.add(Rec{Kind: HConnect, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: ep.Number()})
		w.note(ms.d.n.id, "%v connected in epoch %d", ms.ref(), ep.Number())
		ms.connected = ep.Number()
		e := ep.Number()
		if ms.d.role != nil {
			ms.d.role.connected(ms, ep)
		} else {
			w.afterLocal(ms.d.n.id, w.uniform(0, 20*time.Millisecond), "app begins", int64(e), 0, func() { ms.work(e) })
			w.afterLocal(ms.d.n.id, w.uniform(0, chatGap), "app chats", int64(e), 0, func() { ms.chat(e) })
		}
	}
	// Operations whose epoch's context ended wind up.
	ms.windUp(func(o *op) bool {
		select {
		case <-o.ep.Context().Done():
			return true
		default:
			return false
		}
	})
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

// crash stops the domain for good: its operations vanish with it, and so
// do its driver's pending events (the node is down). In the storage
// scenario the process restarts a while later (a supervisor restarts
// it): a fresh process, which joins as a new incarnation.
func (d *Domain) crash() {
	w := d.w
	d.dead = true
	d.n.down = true
	d.n.backlog, d.n.pausedUntil = nil, 0
	w.store.unwatch(d.n.id)
	w.resetConns(d.n.id)
	for _, o := range d.ops {
		o.ended = true
		w.hist.add(Rec{Kind: HKill, At: w.now, Ref: o.ms.ref(), Lease: o.ms.lease, Epoch: o.epoch, Op: o.id})
	}
	d.ops = nil
	if d.role == nil {
		return
	}
	d.n.gen++ // its pending events are the dead process's
	d.role.crashed()
	restart := w.restartDelay()
	w.note(d.n.id, "restarts in %v", restart)
	w.after(worldNode, restart, "restart "+d.n.name, 0, 0, func() {
		d.dead, d.n.down, d.joining = false, false, false
		w.note(d.n.id, "%s restarts", d.id)
		d.start()
	})
}
