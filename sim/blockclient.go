package sim

import (
	"fmt"
	"slices"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/internal/disk"
)

// blockClient is the disk's client, as qemu is over NBD: a node of its
// own (never paused or crashed) whose requests reach the disk's process a
// moment later and whose outcomes come back a moment after the disk gives
// them. While faults run it writes, reads and flushes blocks — at most one
// write in flight per block, each write's bytes naming the write and its
// block (payload) — and now and then its connection drops: the disk
// abandons what it had in flight (Disk.Abandon, as the NBD server does for
// a closed connection) and the client sends it all again on a new
// connection, as qemu with reconnect-delay does. When the disk's process
// crashes the client reconnects to the restarted one and sends again
// everything without an outcome.
//
// Acknowledged writes (HAcked) and reads with what they returned (HRead)
// go to the history, for the no-stale-write check; at the end of the run
// every request must have its outcome (L1) and every block hold its last
// acknowledged write (the blocks check).
type blockClient struct {
	w  *World
	n  *node
	dr *diskRole
	// conn numbers the client's connections to the disk: an outcome that
	// comes back on an earlier one is never read.
	conn uint64
	// lastAt: no request (or the close) of the current connection reaches
	// the disk before the one sent before it (a connection is a stream).
	lastAt time.Duration
	up     bool // connected to the disk
	// diskDown: the disk's process died; the client reconnects once it is
	// back.
	diskDown bool
	// by block: the last write acknowledged, the newest submitted, and
	// the write in flight.
	acked, top []uint64
	inflight   []*clientReq
	reqs       []*clientReq // without an outcome, in submission order
	next       uint64       // write numbers
	stats      clientStats
}

type clientStats struct {
	Writes, Reads, Flushes, Reconnects, Resubmitted int
}

// clientReq is one request of the client, which may be submitted to the
// disk more than once (after reconnects).
type clientReq struct {
	op    block.Op
	blk   int
	seq   uint64 // a write's number
	least uint64 // a read's: the write acknowledged when it was sent
	// id is the disk's ID of its latest submission and idConn the
	// connection it was submitted on (set at the disk's process).
	id, idConn uint64
	at         time.Duration
	done       bool
}

// Bounds of the client's behaviour.
const (
	clientGapMin, clientGap = 2 * time.Millisecond, 40 * time.Millisecond
	clientQueue             = 12  // requests in flight at most (the NBD queue depth)
	clientWriteP            = 0.6 // of the requests on a block with no write in flight
	clientFlushP            = 0.05
	nbdDelayMax             = time.Millisecond
	reconnectEvery          = 3 * time.Second // mean interval of the client's own reconnects
	reconnectMax            = 200 * time.Millisecond
)

func newBlockClient(w *World, n *node, dr *diskRole) *blockClient {
	b := w.cfg.Blocks
	return &blockClient{w: w, n: n, dr: dr, conn: 1, up: true,
		acked: make([]uint64, b), top: make([]uint64, b), inflight: make([]*clientReq, b)}
}

func (c *blockClient) start() {
	w := c.w
	w.after(c.n.id, w.uniform(0, 100*time.Millisecond), "client", 0, 0, c.tick)
	if !w.cfg.NoFaults {
		w.after(c.n.id, w.uniform(reconnectEvery/4, reconnectEvery*7/4), "client reconnects", 0, 0, c.dropConnection)
	}
}

// tick sends a request, while faults run, and schedules the next.
func (c *blockClient) tick() {
	w := c.w
	if w.now >= w.cfg.Duration {
		return // the quiet period: what is in flight must finish
	}
	defer w.after(c.n.id, w.uniform(clientGapMin, clientGap), "client", 0, 0, c.tick)
	if len(c.reqs) >= clientQueue {
		return
	}
	r := &clientReq{blk: w.rng.IntN(len(c.acked)), at: w.now}
	switch p := w.rng.Float64(); {
	case p < clientFlushP:
		r.op = block.OpFlush
	case c.inflight[r.blk] == nil && p < clientFlushP+clientWriteP:
		c.next++
		r.op, r.seq = block.OpWrite, c.next
		c.inflight[r.blk] = r
		c.top[r.blk] = r.seq
	default:
		r.op, r.least = block.OpRead, c.acked[r.blk]
	}
	c.reqs = append(c.reqs, r)
	if c.up {
		c.submit(r)
	}
}

// toDisk sends fn to the disk's process over the current connection: it
// runs there a moment later, after what was sent before it (nothing runs
// if that process died meanwhile).
func (c *blockClient) toDisk(what string, a, b int64, fn func()) {
	w := c.w
	at := max(w.now+w.uniform(minDelay, nbdDelayMax), c.lastAt)
	c.lastAt = at
	w.after(c.dr.d.n.id, at-w.now, what, a, b, fn)
}

// submit sends r on the current connection.
func (c *blockClient) submit(r *clientReq) {
	w := c.w
	conn, dr := c.conn, c.dr
	req := block.Request{Op: r.op}
	switch r.op {
	case block.OpWrite:
		req.Offset, req.Length, req.Data = uint64(r.blk)*blockSize, blockSize, payload(r.blk, r.seq)
		if w.chance(0.2) {
			req.Flags = block.FlagFUA
		}
	case block.OpRead:
		req.Offset, req.Length = uint64(r.blk)*blockSize, blockSize
	}
	c.toDisk("nbd request", int64(r.blk), int64(r.seq), func() {
		if dr.dk == nil {
			return
		}
		r.idConn = conn
		r.id = dr.dk.Submit(req, func(res disk.Result) {
			w.after(c.n.id, w.uniform(minDelay, nbdDelayMax), "nbd reply", int64(r.blk), int64(r.seq), func() { c.outcome(r, conn, res) })
		})
	})
}

// outcome takes the outcome of r given on connection conn.
func (c *blockClient) outcome(r *clientReq, conn uint64, res disk.Result) {
	w := c.w
	if conn != c.conn || r.done {
		return // the connection it came on is closed
	}
	r.done = true
	c.reqs = slices.DeleteFunc(c.reqs, func(x *clientReq) bool { return x == r })
	if res.Status != block.StatusOK {
		w.fail("L1", fmt.Sprintf("the disk ended the client's %s of block %d (write %d) with %s: every request must complete", r.op, r.blk, r.seq, res.Status))
		return
	}
	switch r.op {
	case block.OpWrite:
		c.stats.Writes++
		c.acked[r.blk] = r.seq
		c.inflight[r.blk] = nil
		w.hist.add(Rec{Kind: HAcked, At: w.now, Block: r.blk, Msg: r.seq, Op: r.id})
	case block.OpRead:
		c.stats.Reads++
		seq, err := decodePayload(r.blk, res.Data)
		rec := Rec{Kind: HRead, At: w.now, Block: r.blk, Msg: seq, Least: r.least, Op: r.id}
		if err != nil {
			rec.Note = err.Error()
		} else if seq > c.top[r.blk] {
			rec.Note = fmt.Sprintf("write %d was never sent to block %d (the newest is %d)", seq, r.blk, c.top[r.blk])
		}
		w.hist.add(rec)
	default:
		c.stats.Flushes++
	}
}

// dropConnection is the client's connection dropping (while faults run):
// the disk abandons what the connection had in flight, and the client
// reconnects and sends it all again.
func (c *blockClient) dropConnection() {
	w := c.w
	if !w.faulty() {
		return
	}
	defer w.after(c.n.id, w.uniform(reconnectEvery/4, reconnectEvery*7/4), "client reconnects", 0, 0, c.dropConnection)
	if !c.up {
		return
	}
	old, dr := c.conn, c.dr
	c.conn++
	c.stats.Reconnects++
	w.faults.Reconnects++
	w.note(c.n.id, "client: connection %d drops with %d requests in flight", old, len(c.reqs))
	pending := slices.Clone(c.reqs)
	// The disk's NBD server sees the connection closed, after the
	// requests sent on it: it abandons them.
	c.toDisk("nbd connection closed", 0, 0, func() {
		if dr.dk == nil {
			return
		}
		for _, r := range pending {
			if r.idConn == old && !r.done {
				dr.dk.Abandon(r.id)
			}
		}
	})
	c.up = false
	w.after(c.n.id, w.uniform(5*time.Millisecond, reconnectMax), "client reconnected", 0, 0, c.reconnected)
}

// reconnected sends again every request without an outcome, once the
// disk's process is up.
func (c *blockClient) reconnected() {
	if c.up || c.diskDown {
		return
	}
	c.up = true
	for _, r := range c.reqs {
		c.stats.Resubmitted++
		c.submit(r)
	}
}

// diskCrashed: the disk's process died, and with it the connection.
func (c *blockClient) diskCrashed() {
	w := c.w
	w.after(c.n.id, w.uniform(minDelay, nbdDelayMax), "nbd connection reset", 0, 0, func() {
		c.conn++
		c.up, c.diskDown = false, true
	})
}

// diskRestarted: the disk's process is back; the client reconnects to
// it (unless it died again meanwhile: then to the next one).
func (c *blockClient) diskRestarted() {
	w := c.w
	proc := c.dr.proc
	w.after(c.n.id, w.uniform(10*time.Millisecond, reconnectMax), "client reconnected", 0, 0, func() {
		if c.dr.proc != proc || c.dr.dk == nil {
			return
		}
		c.diskDown = false
		c.reconnected()
	})
}

// unfinished says which of the client's requests have no outcome.
func (c *blockClient) unfinished() []string {
	var out []string
	for _, r := range c.reqs {
		out = append(out, fmt.Sprintf("%s of block %d (write %d, sent at %v, disk ID %#x)", r.op, r.blk, r.seq, r.at, r.id))
	}
	return out
}
