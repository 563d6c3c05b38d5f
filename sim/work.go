package sim

import (
	"slices"
	"time"

	"github.com/idc-dev/idc/core/member"
)

// The application: in each connected epoch it begins operations
// (Epoch.Begin) with random durations; each does I/O now and then, gated
// right before each I/O either on Epoch.Err or on the epoch context's Err
// (half the memberships each), as the documentation tells users to. A
// well-behaved operation winds up soon after its epoch's context ends; a
// careless one (only while faults run) ignores the context and ends late.
// Now and then the application reports a peer lost or leaves gracefully.

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
	if ms.stopped || ms.d.dead {
		return
	}
	ep := ms.drv.Current()
	if ep == nil || ep.Number() != e || ep.Begin() != nil {
		return
	}
	o := &op{id: w.id(), ms: ms, ep: ep, epoch: e}
	ms.run(o, opMin, opMax, "op ends")
	w.afterLocal(ms.d.n.id, w.uniform(0, ioGap), "io", int64(o.id), 0, func() { ms.io(o) })
	w.afterLocal(ms.d.n.id, w.uniform(opGapMin, opGap), "app begins", int64(e), 0, func() { ms.work(e) })
}

// run records operation o as begun and schedules its end after a
// duration drawn in [lo, hi] — or, for a careless one (only while faults
// run), up to 1.5 quiesce deadlines, ignoring its epoch's end.
func (ms *Membership) run(o *op, lo, hi time.Duration, what string) {
	w := ms.d.w
	dur := w.uniform(lo, hi)
	if w.faulty() && w.chance(carelessP) {
		o.careless = true
		dur = w.uniform(dur, w.cfg.QuiesceTimeout*3/2)
	}
	o.endAt = w.now + ms.d.n.clock.globalDelay(dur)
	if o.careless && o.endAt > w.cfg.Duration {
		o.endAt = max(w.cfg.Duration, w.now)
	}
	ms.d.ops = append(ms.d.ops, o)
	w.hist.add(Rec{Kind: HBegin, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: o.epoch, Op: o.id})
	w.after(ms.d.n.id, o.endAt-w.now, what, int64(o.id), 0, func() { ms.end(o) })
}

// io is one I/O of operation o, done only if the gate allows it.
func (ms *Membership) io(o *op) {
	if o.ended {
		return
	}
	w := ms.d.w
	var err error
	if ms.ctxGate {
		err = o.ep.Context().Err()
	} else {
		err = o.ep.Err()
	}
	if o.ended { // the gate's check may have ended the membership
		return
	}
	if err == nil {
		w.ios++
		w.hist.add(Rec{Kind: HIO, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: o.epoch, Op: o.id})
		if len(w.resources) > 0 && w.chance(writeP) {
			w.write(ms.d.n.id, ms.ref(), o.ep.Token())
		}
	} else {
		w.refused++
		if !o.careless {
			return // winds up (the context's end scheduled it)
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
	w.hist.add(Rec{Kind: HEnd, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: o.epoch, Op: o.id})
	switch {
	case o.finish != nil:
		o.finish()
	case !o.external:
		o.ep.End()
	}
}

// windUp schedules the end of ms's well-behaved operations that match.
func (ms *Membership) windUp(match func(*op) bool) {
	w := ms.d.w
	for _, o := range ms.d.ops {
		if o.ms == ms && !o.careless && !o.external && !o.ended && !o.winding && match(o) {
			o.winding = true
			w.afterLocal(ms.d.n.id, w.uniform(0, windUp), "op winds up", int64(o.id), 0, func() { ms.end(o) })
		}
	}
}

// app is the application's occasional behaviour while faults run: report
// a peer lost (ReportFault) or leave gracefully (then rejoin); now and
// then a domain leaves before it was ever admitted.
func (d *Domain) app() {
	w := d.w
	if !w.faulty() {
		return
	}
	defer w.afterLocal(d.n.id, w.uniform(appEvery/4, appEvery*7/4), "app", 0, 0, d.app)
	ms := d.ms
	if ms == nil || ms.stopped || d.joining {
		return
	}
	switch r := w.rng.Float64(); {
	case ms.drv.Phase() == member.Joining:
		if r < 0.1 {
			w.faults.Leaves++
			w.note(d.n.id, "%v leaves before it was admitted", ms.ref())
			ms.drv.Leave()
		}
	case ms.drv.Phase() != member.Connected:
	case r < reportP:
		ep := ms.drv.Current()
		if ep == nil {
			return
		}
		var peers []string
		for _, m := range ep.Members() {
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
		ms.drv.Leave()
	}
}

// reportFault is Domain.ReportFault.
func (d *Domain) reportFault(suspect string) {
	w := d.w
	ms := d.ms
	if ms == nil || ms.stopped || d.joining || suspect == d.id {
		return
	}
	w.faults.FaultReports++
	w.note(d.n.id, "%v reports losing %s", ms.ref(), suspect)
	ms.drv.ReportFault(suspect, func(err error) {
		if err != nil {
			w.note(d.n.id, "%v: report of %s: %v", ms.ref(), suspect, err)
		}
	})
}
