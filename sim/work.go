package sim

import (
	"slices"
	"time"

	"github.com/idc-dev/idc/core/member"
	"github.com/idc-dev/idc/proto"
)

// The application: in each connected epoch it begins operations (Epoch.Begin)
// with random durations; each does I/O now and then, checking the machine
// first as Epoch.Err does. A well-behaved operation winds up soon after its
// epoch's context ends; a careless one (only while faults run) ignores the
// context and ends late. Now and then the application reports a peer lost
// or leaves gracefully.

const (
	opMin, opMax    = 5 * time.Millisecond, 300 * time.Millisecond
	opGapMin, opGap = 10 * time.Millisecond, 150 * time.Millisecond
	ioGapMin, ioGap = 10 * time.Millisecond, 60 * time.Millisecond
	windUp          = 20 * time.Millisecond
	carelessP       = 0.01
	appEvery        = 2 * time.Second // mean interval of fault reports / leaves per domain
	reportP, leaveP = 0.5, 0.3
)

// work begins an operation in epoch e and schedules the next one; it stops
// once Begin refuses (the application waits for the next epoch).
func (ms *Membership) work(e uint64) {
	w := ms.d.w
	ms.tick()
	if err := ms.m.Begin(e); err != nil {
		return
	}
	o := &op{id: w.id(), ms: ms, epoch: e}
	dur := w.uniform(opMin, opMax)
	if w.faulty() && w.chance(carelessP) {
		o.careless = true
		dur = w.uniform(dur, w.cfg.QuiesceTimeout*3/2)
	}
	o.endAt = w.now + ms.d.n.clock.globalDelay(dur)
	if o.careless && o.endAt > w.cfg.Duration {
		o.endAt = max(w.cfg.Duration, w.now)
	}
	ms.d.ops = append(ms.d.ops, o)
	w.hist.add(Rec{Kind: HBegin, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: e, Op: o.id})
	w.after(ms.d.n.id, o.endAt-w.now, "op ends", int64(o.id), 0, func() { ms.end(o) })
	w.afterLocal(ms.d.n.id, w.uniform(0, ioGap), "io", int64(o.id), 0, func() { ms.io(o) })
	w.afterLocal(ms.d.n.id, w.uniform(opGapMin, opGap), "app begins", int64(e), 0, func() { ms.work(e) })
}

// io is one I/O of operation o: done only if, after a Tick, the membership
// is not fenced and o's epoch is still the connected one (Epoch.Err).
func (ms *Membership) io(o *op) {
	if o.ended {
		return
	}
	w := ms.d.w
	ms.tick()
	cur, _ := ms.m.Current()
	if ms.m.Err() == nil && ms.m.Phase() == member.Connected && cur == o.epoch && !ms.cancelled[o.epoch] {
		w.ios++
		w.hist.add(Rec{Kind: HIO, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: o.epoch, Op: o.id})
	} else {
		w.refused++
		if !o.careless {
			return // winds up (cancel scheduled its end)
		}
	}
	next := ms.d.n.clock.globalDelay(w.uniform(ioGapMin, ioGap))
	if w.now+next < o.endAt {
		w.after(ms.d.n.id, next, "io", int64(o.id), 0, func() { ms.io(o) })
	}
}

// end ends operation o (Op.End).
func (ms *Membership) end(o *op) {
	if o.ended {
		return
	}
	w := ms.d.w
	o.ended = true
	ms.d.ops = slices.DeleteFunc(ms.d.ops, func(x *op) bool { return x == o })
	ms.m.End(o.epoch)
	w.hist.add(Rec{Kind: HEnd, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: o.epoch, Op: o.id})
	ms.handle()
}

// cancel ends epoch e's context: its well-behaved operations wind up.
func (ms *Membership) cancel(e uint64) {
	ms.cancelled[e] = true
	ms.windUp(func(o *op) bool { return o.epoch == e })
}

// cancelAll ends every context of the membership (fenced).
func (ms *Membership) cancelAll() {
	for _, o := range ms.d.ops {
		if o.ms == ms {
			ms.cancelled[o.epoch] = true
		}
	}
	ms.windUp(func(*op) bool { return true })
}

func (ms *Membership) windUp(match func(*op) bool) {
	w := ms.d.w
	for _, o := range ms.d.ops {
		if o.ms == ms && !o.careless && !o.ended && match(o) {
			w.afterLocal(ms.d.n.id, w.uniform(0, windUp), "op winds up", int64(o.id), 0, func() { ms.end(o) })
		}
	}
}

// app is the application's occasional behaviour while faults run: report
// a peer lost (ReportFault) or leave gracefully (then rejoin).
func (d *Domain) app() {
	w := d.w
	if !w.faulty() {
		return
	}
	defer w.afterLocal(d.n.id, w.uniform(appEvery/4, appEvery*7/4), "app", 0, 0, d.app)
	ms := d.ms
	if ms == nil || ms.stopped || ms.m.Phase() != member.Connected {
		return
	}
	switch r := w.rng.Float64(); {
	case r < reportP:
		_, members := ms.m.Current()
		var peers []string
		for _, m := range members {
			if m.ID != d.id {
				peers = append(peers, m.ID)
			}
		}
		if len(peers) > 0 {
			d.reportFault(peers[w.rng.IntN(len(peers))])
		}
	case r < reportP+leaveP*0.3:
		w.faults.Leaves++
		w.note(d.n.id, "%v leaves", ms.ref())
		ms.m.Leave()
		ms.handle()
	}
}

// reportFault is Domain.ReportFault: one attempt, under the lease.
func (d *Domain) reportFault(suspect string) {
	w := d.w
	ms := d.ms
	if ms == nil || ms.stopped || ms.m.Phase() != member.Connected || suspect == d.id {
		return
	}
	e, members := ms.m.Current()
	sus, ok := proto.Find(members, suspect)
	if !ok {
		return
	}
	w.faults.FaultReports++
	w.note(d.n.id, "%v reports losing %s in epoch %d", ms.ref(), suspect, e)
	rep := proto.FaultReport{Epoch: e, Reporter: d.id, ReporterIncarnation: ms.inc, Suspect: suspect, SuspectIncarnation: sus.Incarnation}
	key := keys.Fault(group, e, d.id, suspect)
	w.call(d.n.id, w.cfg.OpTimeout, "report fault", func() any { return w.store.Put(key, rep, ms.lease) }, nil, nil)
}
