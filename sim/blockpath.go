package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/idc-dev/idc/core/multipath"
	"github.com/idc-dev/idc/internal/channel"
	"github.com/idc-dev/idc/internal/disk"
	"github.com/idc-dev/idc/internal/forwarder"
	"github.com/idc-dev/idc/internal/membership"
	"github.com/idc-dev/idc/proto"
)

// The storage scenario's domains: what runs around the member driver of a
// driver domain (the real forwarder, as idc driver runs it) and of the FT
// domain (the real multipath disk, as idc disk runs it), in place of the
// generic application of work.go and chat.go.

// role is what a domain of the storage scenario runs around its
// membership. Its hooks are called by the domain (domain.go).
type role interface {
	// channels sets the membership's channel handlers and limits.
	channels(ms *Membership, c *channel.Config)
	// connected: ms delivered epoch ep.
	connected(ms *Membership, ep *membership.Epoch)
	// disconnected: epoch e ended at ms (its context ended, or ms stopped).
	disconnected(ms *Membership, e uint64)
	// crashed: the process died; restarted: a fresh one starts (and will
	// join as a new incarnation).
	crashed()
	restarted()
}

// Channel limits of the storage scenario's memberships: a block request
// of one block, with its header and the disk's token, fits in a message.
const (
	blockMessageMax = 4096
	blockWindow     = 8
)

// driverRole is a driver domain (idc driver): its membership's handler
// forwards each of the disk's calls, a block request, to the storage with
// the real forwarder (one connection per epoch over the simulated
// network) and answers with the storage's answer; when an epoch ends here
// its requests fail at once (EndEpoch). A crashed driver restarts as a
// fresh process with a new forwarder, and a fenced or dropped membership
// joins again as a new incarnation (domain.go), as idc driver does.
type driverRole struct {
	w  *World
	d  *Domain
	fw *forwarder.Forwarder
	// replies are the forwarded requests that have their outcome, answered
	// in the order they were forwarded by one event of the node (the
	// forwarder completes the requests of a lost or ended connection in
	// the order of a map; the replies' order must not depend on it).
	replies  []driverReply
	flushing bool
	seq      uint64
}

type driverReply struct {
	seq uint64
	ms  *Membership
	r   *channel.Request
	o   *op
	a   forwarder.Answer
	err error
}

func (dr *driverRole) channels(ms *Membership, c *channel.Config) {
	c.Handler = func(r *channel.Request) { dr.serve(ms, r) }
	c.OnMessage = nil
	c.MaxMessage, c.Window = blockMessageMax, blockWindow
}

// connected ends the earlier epochs' requests, as idc driver does at
// every connect.
func (dr *driverRole) connected(_ *Membership, ep *membership.Epoch) {
	if n := ep.Number(); n > 1 {
		dr.fw.EndEpoch(n - 1)
	}
}

func (dr *driverRole) disconnected(_ *Membership, e uint64) { dr.fw.EndEpoch(e) }

func (dr *driverRole) crashed() {
	dr.fw, dr.replies, dr.flushing = nil, nil, false
}

func (dr *driverRole) restarted() {
	w := dr.w
	fw, err := forwarder.New(forwarder.Config{
		Storage: storageAddr, Network: nodeNet{w, dr.d.n.id}, Clock: nodeClock{w, dr.d.n.id},
		Domain: dr.d.id, Logger: quiet,
	})
	if err != nil {
		w.fail("sim", "forwarder: "+err.Error())
		return
	}
	dr.fw = fw
}

// serve is the membership's handler: the request is an operation of its
// epoch here (the channel driver began it) until the reply; its handing
// to the forwarder is the driver's I/O of the epoch.
func (dr *driverRole) serve(ms *Membership, r *channel.Request) {
	w := dr.w
	o := &op{id: w.id(), ms: ms, epoch: r.Epoch, external: true}
	ms.d.ops = append(ms.d.ops, o)
	w.hist.add(Rec{Kind: HBegin, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: r.Epoch, Op: o.id})
	w.hist.add(Rec{Kind: HIO, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: r.Epoch, Op: o.id})
	dr.seq++
	seq := dr.seq
	dr.fw.Forward(r.Epoch, r.Data, func(a forwarder.Answer, err error) {
		dr.replies = append(dr.replies, driverReply{seq: seq, ms: ms, r: r, o: o, a: a, err: err})
		if !dr.flushing {
			dr.flushing = true
			w.after(dr.d.n.id, 0, "driver replies", 0, 0, dr.flush)
		}
	})
}

// flush answers the requests that have their outcome, in the order they
// were forwarded.
func (dr *driverRole) flush() {
	rs := dr.replies
	dr.replies, dr.flushing = nil, false
	slices.SortFunc(rs, func(a, b driverReply) int { return int(a.seq - b.seq) })
	for _, x := range rs {
		x.ms.end(x.o)
		if x.err != nil {
			x.r.Reply(nil, x.err)
		} else {
			x.r.Reply(x.a.Frame, nil)
		}
	}
}

// diskRole is the FT domain (idc disk): the real multipath disk
// (internal/disk), whose transport is its membership's mesh — a call of
// the epoch to the active driver (Mesh.Call, as Epoch.Go is) and fault
// reports through the membership — fed the epochs the membership
// delivers. The disk outlives its memberships (a fenced one is replaced
// by a new incarnation, as idc disk does); a crash loses it, and the
// restarted process starts a new one, whose request IDs start above
// every earlier process's. Its client is blockclient.go's.
type diskRole struct {
	w      *World
	d      *Domain
	dk     *disk.Disk
	proc   uint64 // the process's number (1, 2, …)
	client *blockClient
	// stats of the processes that crashed.
	gone disk.Stats
	// depth counts the transport's calls under way in one another (a call
	// that fails at once is answered within it, and the disk may send
	// again from the answer).
	depth int
}

// maxCallDepth bounds the disk's calls made from within one another's
// failure: beyond it the disk sends a request back and forth between
// paths that fail at once, without end.
const maxCallDepth = 1000

func (dr *diskRole) channels(_ *Membership, c *channel.Config) {
	c.Handler, c.OnMessage = nil, nil
	c.MaxMessage, c.Window = blockMessageMax, blockWindow
}

func (dr *diskRole) connected(ms *Membership, ep *membership.Epoch) {
	var peers []string
	for _, m := range ep.Members() {
		if m.ID != ms.d.id {
			peers = append(peers, m.ID)
		}
	}
	dr.dk.Connected(ep.Number(), ep.Token(), peers)
	s := dr.dk.Stats()
	dr.w.note(dr.d.n.id, "disk: epoch %d connected, path %q, %d requests pending", ep.Number(), s.Path, s.Pending)
}

func (dr *diskRole) disconnected(_ *Membership, e uint64) { dr.dk.Disconnected(e) }

func (dr *diskRole) crashed() {
	s := dr.dk.Stats()
	dr.gone.Sent += s.Sent
	dr.gone.Resent += s.Resent
	dr.gone.Reports += s.Reports
	dr.gone.Failovers += s.Failovers
	dr.gone.Done += s.Done
	dr.dk = nil
	dr.client.diskCrashed()
}

func (dr *diskRole) restarted() {
	w := dr.w
	dr.proc++
	dk, err := disk.New(disk.Config{
		Size:      uint64(w.cfg.Blocks) * blockSize,
		Multipath: multipath.Config{Paths: []string{driverA, driverB}},
		Transport: diskTransport{dr}, Clock: nodeClock{w, dr.d.n.id},
		EpochEnded: callEpochEnded,
		// Every process's requests have IDs of their own, as the real
		// disk's (the wall clock in nanoseconds) do.
		FirstID: dr.proc<<40 | 1,
		Logger:  quiet,
	})
	if err != nil {
		w.fail("sim", "disk: "+err.Error())
		return
	}
	dr.dk = dk
	if dr.proc > 1 {
		dr.client.diskRestarted()
	}
}

// stats returns the disk's counters over every process.
func (dr *diskRole) stats() disk.Stats {
	s := dr.gone
	if dr.dk != nil {
		c := dr.dk.Stats()
		s.Sent += c.Sent
		s.Resent += c.Resent
		s.Reports += c.Reports
		s.Failovers += c.Failovers
		s.Done += c.Done
		s.Pending = c.Pending
	}
	return s
}

// callEpochEnded tells whether a call failed only because its epoch ended
// here (then the path is not to blame): idc disk's test, on the errors
// the channel driver gives.
func callEpochEnded(err error) bool {
	return errors.Is(err, proto.ErrEpochEnded) || errors.Is(err, proto.ErrNotConnected) ||
		errors.Is(err, proto.ErrFenced) || errors.Is(err, proto.ErrClosed) || errors.Is(err, context.Canceled)
}

// diskTransport is the disk's transport over its membership's mesh: a
// call of epoch e goes to the mesh while e is the epoch the membership
// works in, as idc disk's Epoch.Go does; a report is a fault report of
// that membership.
type diskTransport struct{ dr *diskRole }

// Call implements disk.Transport. A call the mesh took (not refused at
// once) is an operation of the epoch until its end, and its start the
// disk's I/O of the epoch (the mesh began it only with the lease valid).
func (t diskTransport) Call(e uint64, peer string, req []byte, done func([]byte, error)) {
	dr := t.dr
	w := dr.w
	dr.depth++
	defer func() { dr.depth-- }()
	ms := dr.d.ms
	var mesh *channel.Mesh
	if ms != nil && !ms.stopped && ms.connected == e {
		mesh = ms.drv.Mesh()
	}
	if dr.depth > maxCallDepth {
		w.fail("L1", fmt.Sprintf("the disk sends request after request from within the failure of the one before (%d deep, epoch %d, path %s): it loops without time passing, and its requests never complete", dr.depth, e, peer))
		return // the run ends with this step: the call is never answered
	}
	if mesh == nil {
		done(nil, fmt.Errorf("%w: epoch %d", proto.ErrEpochEnded, e))
		return
	}
	o := &op{id: w.id(), ms: ms, epoch: e, external: true}
	calling, atOnce := true, false
	mesh.Call(e, peer, req, &channel.Op{Done: func(c *channel.Op) {
		if calling {
			atOnce = true
		} else {
			ms.end(o)
		}
		done(c.Resp, c.Err)
	}})
	calling = false
	if atOnce {
		return
	}
	ms.d.ops = append(ms.d.ops, o)
	w.hist.add(Rec{Kind: HBegin, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: e, Op: o.id})
	w.hist.add(Rec{Kind: HIO, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: e, Op: o.id})
}

// Report implements disk.Transport: a fault report of the membership,
// tried again while it fails and the epoch goes on (the disk sends
// nothing more through a reported path until the next epoch, which only a
// counted report brings).
func (t diskTransport) Report(e uint64, peer string) {
	dr := t.dr
	ms := dr.d.ms
	if ms == nil || ms.stopped || ms.connected != e {
		return // the epoch ended: the report would not count
	}
	dr.w.note(dr.d.n.id, "disk: %v reports path %s in epoch %d", ms.ref(), peer, e)
	dr.report(ms, e, peer, reportRetryMin)
}

// Bounds of the wait before a fault report that failed is tried again.
const reportRetryMin, reportRetryMax = 100 * time.Millisecond, time.Second

func (dr *diskRole) report(ms *Membership, e uint64, peer string, backoff time.Duration) {
	w := dr.w
	ms.drv.ReportFault(peer, func(err error) {
		switch {
		case err == nil || errors.Is(err, proto.ErrEpochEnded):
			return // counted, or the group moved on meanwhile
		case dr.d.ms != ms || ms.stopped || ms.connected != e:
			return // the epoch ended here
		}
		w.note(dr.d.n.id, "disk: report of %s failed, again in %v: %v", peer, backoff, err)
		w.afterLocal(dr.d.n.id, backoff, "disk reports again", int64(e), 0, func() {
			if dr.d.ms == ms && !ms.stopped && ms.connected == e {
				dr.report(ms, e, peer, min(2*backoff, reportRetryMax))
			}
		})
	})
}

// restartDelay draws how long a crashed process of the storage scenario
// stays down before it is started again (a supervisor restarts it).
func (w *World) restartDelay() time.Duration {
	return w.until(w.uniform(50*time.Millisecond, 3*time.Second)) - w.now
}
