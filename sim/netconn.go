package sim

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	netw "github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/wire"
)

// nodeNet is the simulated network as a netw.Network for one node:
// listeners are registered by address in the world; a dial is a message to
// the listener's node, answered or timed out by the dialer's clock; frames
// travel with the network's delays, in order per direction (a connection
// is a stream), and are held while either end is cut off (and delivered
// when it heals, as TCP retransmits). A connection whose node crashed ends
// at its peer with io.EOF, as the kernel's reset would.
type nodeNet struct {
	w *World
	n NodeID
}

var _ netw.Network = nodeNet{}

type simListener struct {
	w      *World
	n      NodeID
	addr   string
	accept func(netw.Conn)
	closed bool
	// plain: a resource's listener (resourceNet); its connections are
	// plain TCP streams, which the frame middlebox leaves alone.
	plain bool
}

func (l *simListener) Addr() string { return l.addr }

func (l *simListener) Close() error {
	l.closed = true
	delete(l.w.listeners, l.addr)
	return nil
}

// Listen implements netw.Network. Addresses are names in the simulated
// world: any string not already listened on.
func (nn nodeNet) Listen(addr string, accept func(netw.Conn)) (netw.Listener, error) {
	w := nn.w
	if w.listeners == nil {
		w.listeners = map[string]*simListener{}
	}
	if _, taken := w.listeners[addr]; taken || addr == "" {
		return nil, fmt.Errorf("%w: %q is taken", netw.ErrAddress, addr)
	}
	l := &simListener{w: w, n: nn.n, addr: addr, accept: accept}
	w.listeners[addr] = l
	return l, nil
}

// Dial implements netw.Network.
func (nn nodeNet) Dial(addr string, timeout time.Duration, done func(netw.Conn, error)) {
	w := nn.w
	gen := w.nodes[nn.n].gen // answers to a process that crashed since are for nobody
	answered := false
	timer := w.afterLocal(nn.n, timeout, "dial timed out", 0, 0, func() {
		if !answered {
			answered = true
			done(nil, fmt.Errorf("%w: %s: no answer within %v", netw.ErrUnreachable, addr, timeout))
		}
	})
	l := w.listeners[addr]
	if l == nil || l.closed {
		// Connection refused: the answer comes back at once.
		w.after(nn.n, w.net.delay(nn.n, nn.n), "dial refused", 0, 0, func() {
			if !answered && w.nodes[nn.n].gen == gen {
				answered, timer.off = true, true
				done(nil, fmt.Errorf("%w: %s: connection refused", netw.ErrUnreachable, addr))
			}
		})
		return
	}
	client := &simConn{w: w, node: nn.n, remote: addr, plain: l.plain}
	server := &simConn{w: w, node: l.n, remote: w.nodes[nn.n].name, plain: l.plain}
	client.peer, server.peer = server, client
	if w.conns == nil {
		w.conns = map[NodeID][]*simConn{}
	}
	w.conns[nn.n] = append(w.conns[nn.n], client)
	w.conns[l.n] = append(w.conns[l.n], server)
	at := client.arrival()
	if l.plain {
		// The connection opens; what the dialer sends on it is held
		// while the nemesis holds its storage traffic.
		client.holdUntil = w.net.holdStorage[nn.n]
	}
	w.after(l.n, at-w.now, "accept", 0, 0, func() {
		if l.closed || client.closed {
			server.closed = true
			return
		}
		l.accept(server)
		back := server.arrival()
		w.after(nn.n, back-w.now, "dial answered", 0, 0, func() {
			if answered || w.nodes[nn.n].gen != gen {
				client.Close() // too late: the dialer gave up
				return
			}
			answered, timer.off = true, true
			done(client, nil)
		})
	})
}

// simConn is one end of a simulated connection.
type simConn struct {
	w       *World
	node    NodeID
	peer    *simConn
	remote  string
	closed  bool
	lastAt  time.Duration // FIFO: no frame arrives before the last one
	waiting int           // frames sent and not yet written
	recv    func([]byte, error)
	inbox   []inFrame // arrived before Receive was called
	ended   bool      // the end-of-stream callback ran
	held    []byte    // a frame the middlebox delivers after the next one
	// plain: a resource connection (resourceNet), a TCP stream the frame
	// middlebox leaves alone.
	plain bool
	// holdUntil: frames sent from this end arrive no earlier than this
	// (the nemesis holds a driver's storage connection, as a proxy
	// holding its bytes would, and releases them late).
	holdUntil time.Duration
}

type inFrame struct {
	b   []byte
	err error
}

// arrival is when a frame sent now from c reaches its peer: a delay of
// its own, never before the previous frame, held while either end is cut
// off.
func (c *simConn) arrival() time.Duration {
	w := c.w
	at := w.now + w.net.delay(c.node, c.peer.node)
	for _, n := range []NodeID{c.node, c.peer.node} {
		if end := w.net.partitioned[n]; end > w.now {
			at = max(at, end+w.net.delay(c.node, c.peer.node))
		}
	}
	if c.holdUntil > w.now {
		at = max(at, c.holdUntil+w.net.delay(c.node, c.peer.node))
	}
	at = max(at, c.lastAt)
	c.lastAt = at
	return at
}

func (c *simConn) Send(frame []byte, done func(error)) {
	w := c.w
	fail := func(err error) {
		if done != nil {
			w.after(c.node, 0, "send failed", 0, 0, func() { done(err) })
		}
	}
	switch {
	case len(frame) > netw.MaxFrame:
		fail(fmt.Errorf("%w: %d bytes", netw.ErrFrameTooLarge, len(frame)))
		return
	case c.closed:
		fail(netw.ErrClosed)
		return
	case c.waiting >= netw.SendWindow:
		fail(netw.ErrBusy)
		return
	}
	b := append([]byte(nil), frame...)
	c.waiting++
	// Written once the frame left: a moment later by the sender's clock.
	w.after(c.node, minDelay, "frame written", int64(len(b)), 0, func() {
		c.waiting--
		if done != nil {
			if c.closed {
				done(netw.ErrClosed)
			} else {
				done(nil)
			}
		}
	})
	peer := c.peer
	w.after(peer.node, c.arrival()-w.now, "frame", int64(len(b)), 0, func() { peer.arrive(b) })
}

// arrive takes a frame arriving at c. While faults run, on a channel's
// connection (not a resource's plain stream), a middlebox may
// drop it, deliver it twice, deliver it after the next one, or slip in before it a stale frame with the
// same sequence number that c's node received from the same peer node on
// an earlier connection (an earlier epoch, or an earlier incarnation of
// either): the channel must notice the broken stream, and drop the
// duplicate and the stale frame. (Frames of another peer passed off as
// this one's are forgeries, which only byzantine mode's signatures stop.)
func (c *simConn) arrive(b []byte) {
	w := c.w
	ff := &w.net.frames
	if !w.faulty() || !ff.on || c.plain || len(b) < wire.HeaderSize {
		c.deliver(inFrame{b: b})
		return
	}
	seq := binary.BigEndian.Uint64(b[16:24])
	pair := [2]NodeID{c.node, c.peer.node}
	seen := ff.seen[pair]
	if seen == nil {
		seen = map[uint64][][]byte{}
		ff.seen[pair] = seen
	}
	if olds := seen[seq]; seq > 0 && len(olds) > 0 && w.chance(ff.replayP) {
		w.faults.FrameReplays++
		c.deliver(inFrame{b: olds[w.rng.IntN(len(olds))]})
	}
	if seq > 0 && seq <= 256 && len(seen[seq]) < 4 {
		seen[seq] = append(seen[seq], b)
	}
	switch r := w.rng.Float64(); {
	case c.held != nil:
		held := c.held
		c.held = nil
		c.deliver(inFrame{b: b})
		c.deliver(inFrame{b: held})
	case r < ff.dropP:
		w.faults.FrameDrops++
	case r < ff.dropP+ff.dupP:
		w.faults.FrameDups++
		c.deliver(inFrame{b: b})
		c.deliver(inFrame{b: b})
	case r < ff.dropP+ff.dupP+ff.swapP && seq > 0:
		w.faults.FrameSwaps++
		c.held = b // delivered after the next one
	default:
		c.deliver(inFrame{b: b})
	}
}

// SendNow is Send, except that, as network.OS's connections do, it may
// write the frame at once: then it returns true and done is not called.
// Here it does so, when nothing waits to be written, half the time (the
// seed decides), so that the channel driver's two paths both run.
func (c *simConn) SendNow(frame []byte, done func(error)) bool {
	w := c.w
	if c.closed || c.waiting > 0 || len(frame) > netw.MaxFrame || !w.chance(0.5) {
		c.Send(frame, done)
		return false
	}
	b := append([]byte(nil), frame...)
	peer := c.peer
	w.after(peer.node, c.arrival()-w.now, "frame", int64(len(b)), 0, func() { peer.arrive(b) })
	return true
}

// deliver hands an arriving frame (or the end of the stream) to the
// receiver, or keeps it until Receive is called.
func (c *simConn) deliver(f inFrame) {
	if c.ended || c.closed && f.err == nil {
		return
	}
	if c.recv == nil {
		c.inbox = append(c.inbox, f)
		return
	}
	if f.err != nil {
		c.ended = true
	}
	c.recv(f.b, f.err)
}

func (c *simConn) Receive(fn func([]byte, error)) {
	if c.recv != nil {
		return
	}
	c.recv = fn
	inbox := c.inbox
	c.inbox = nil
	for _, f := range inbox {
		c.deliver(f)
	}
}

// resourceNet is nodeNet for a resource's server (the storage): its
// listeners accept plain connections — TCP streams that carry the
// resource's own framing, with no sequence numbers to drop a duplicate
// by — which the frame middlebox leaves alone, as it is there to test the
// channels' epoch and sequence checks. Delays, partitions, holds and
// resets apply to them as to any connection.
type resourceNet struct{ nodeNet }

// Listen implements netw.Network.
func (rn resourceNet) Listen(addr string, accept func(netw.Conn)) (netw.Listener, error) {
	l, err := rn.nodeNet.Listen(addr, accept)
	if err != nil {
		return nil, err
	}
	l.(*simListener).plain = true
	return l, nil
}

// Close closes this end; the peer sees io.EOF after the frames in flight.
func (c *simConn) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	peer := c.peer
	c.w.after(peer.node, c.arrival()-c.w.now, "connection closed", 0, 0, func() { peer.deliver(inFrame{err: io.EOF}) })
	if c.recv != nil && !c.ended {
		c.ended = true
		c.w.after(c.node, 0, "connection closed here", 0, 0, func() { c.recv(nil, netw.ErrClosed) })
	}
	return nil
}

func (c *simConn) Remote() string { return c.remote }

// resetConns ends every connection of node n, which crashed: its peers see
// io.EOF after the frames in flight, as the kernel's reset would show
// them; its listeners go.
func (w *World) resetConns(n NodeID) {
	for _, c := range w.conns[n] {
		if !c.closed {
			c.closed = true
			peer := c.peer
			w.after(peer.node, c.arrival()-w.now, "connection reset", 0, 0, func() { peer.deliver(inFrame{err: io.EOF}) })
		}
	}
	delete(w.conns, n)
	for addr, l := range w.listeners {
		if l.n == n {
			l.closed = true
			delete(w.listeners, addr)
		}
	}
}
