package membership

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/idc-dev/idc/core/member"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// Retry backoff of the driver's writes: from minBackoff, doubling, at most
// maxBackoff.
const (
	minBackoff = 20 * time.Millisecond
	maxBackoff = time.Second
)

// put writes key, retrying with backoff until it lands, the lease is gone
// (then the machine learns it) or the driver stops; then calls done with
// nil, or the error that stopped it. Called with d.mu held.
func (d *Driver) put(what, key string, v any, lease store.LeaseID, backoff time.Duration, done func(error)) {
	val, _ := json.Marshal(v)
	d.st.Txn(store.Txn{Then: []store.Op{store.Put(key, val, lease)}}, d.cfg.OpTimeout, func(_ store.TxnResponse, err error) {
		d.do(func() {
			switch {
			case err == nil:
				done(nil)
			case d.stopped:
				done(err)
			case lease != 0 && errors.Is(err, store.ErrLeaseNotFound):
				d.m.LeaseLost()
				d.handle()
				done(err)
			default:
				d.log.Warn("store write failed; retrying", "what", what, "err", err, "retry_in", backoff)
				d.clk.AfterFunc(backoff, d.locked(func() {
					if d.stopped {
						done(err)
						return
					}
					d.put(what, key, v, lease, min(2*backoff, maxBackoff), done)
				}))
			}
		})
	})
}

func (d *Driver) writeAck(e uint64) {
	ack := proto.Ack{Epoch: e, ID: d.cfg.ID, Incarnation: d.cfg.Incarnation}
	d.put("quiesce ack", d.keys.Ack(d.cfg.Group, e, d.cfg.ID), ack, d.lease, minBackoff, func(err error) {
		if err == nil {
			d.log.Debug("acknowledged quiesce", "epoch", e)
		}
	})
}

// leaveIO writes the leave marker, then gives the lease back and stops.
func (d *Driver) leaveIO() {
	left := proto.Left{ID: d.cfg.ID, Incarnation: d.cfg.Incarnation}
	d.put("leave marker", d.keys.Left(d.cfg.Group, d.cfg.ID), left, 0, minBackoff, func(err error) {
		if err != nil {
			d.leftErr = fmt.Errorf("leave: %w", err)
			d.halt()
			return
		}
		d.st.Revoke(d.lease, d.cfg.OpTimeout, func(err error) {
			d.do(func() {
				if err != nil && !errors.Is(err, store.ErrLeaseNotFound) {
					d.leftErr = fmt.Errorf("leave: give the lease back: %w", err)
				}
				d.log.Info("left", "err", err)
				d.halt()
			})
		})
	})
}

// ReportFault tells the coordinator that this domain lost peer in the
// connected epoch; done is called with the outcome. The report is written
// under the membership's lease together with a read of the epoch record,
// so the caller learns whether it landed in time: a report of epoch e
// counts while e is connected or while the epoch after it is quiescing;
// one that lands after a later epoch connected fails with an error
// wrapping proto.ErrEpochEnded (it was not counted).
func (d *Driver) ReportFault(peer string, done func(error)) {
	d.do(func() {
		if d.m == nil {
			d.later(func() { done(fmt.Errorf("%w: not joined", proto.ErrNotConnected)) })
			return
		}
		if err := d.m.Err(); err != nil {
			d.later(func() { done(err) })
			return
		}
		e, members := d.m.Current()
		if d.m.Phase() != member.Connected {
			d.later(func() { done(fmt.Errorf("%w: cannot report %q", proto.ErrNotConnected, peer)) })
			return
		}
		sus, ok := proto.Find(members, peer)
		if !ok || peer == d.cfg.ID {
			d.later(func() {
				done(fmt.Errorf("%w: %q is not a peer in epoch %d of group %s", proto.ErrNotMember, peer, e, d.cfg.Group))
			})
			return
		}
		rep := proto.FaultReport{Epoch: e, Reporter: d.cfg.ID, ReporterIncarnation: d.cfg.Incarnation, Suspect: peer, SuspectIncarnation: sus.Incarnation}
		val, _ := json.Marshal(rep)
		txn := store.Txn{Then: []store.Op{
			store.Put(d.keys.Fault(d.cfg.Group, e, d.cfg.ID, peer), val, d.lease),
			store.Get(d.keys.Epoch(d.cfg.Group)),
		}}
		d.st.Txn(txn, d.cfg.OpTimeout, func(resp store.TxnResponse, err error) {
			if err != nil {
				done(fmt.Errorf("report fault: %w", err))
				return
			}
			var rec *proto.EpochRecord
			if len(resp.Gets) > 0 && len(resp.Gets[0]) > 0 {
				if r, err := proto.DecodeEpoch(resp.Gets[0][0].Value); err == nil {
					rec = &r
				}
			}
			if rec != nil && !counts(rec, e) {
				done(fmt.Errorf("%w: the report that %s lost %s in epoch %d landed when the group was at epoch %d (%s): it was not counted",
					proto.ErrEpochEnded, d.cfg.ID, peer, e, rec.Number, rec.State))
				return
			}
			d.log.Info("reported fault", "epoch", e, "suspect", peer)
			done(nil)
		})
	})
}

// counts reports whether a fault report of epoch e counts while the
// group's record is rec (the coordinator's rule: reports of the last
// connected epoch).
func counts(rec *proto.EpochRecord, e uint64) bool {
	if rec.State == proto.Quiescing {
		return rec.PrevNumber == e
	}
	return rec.Number == e
}
