package channel

import (
	"errors"
	"fmt"
	"io"
	"time"

	protocol "github.com/idc-dev/idc/core/channel"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/wire"
)

// lstate is where a link stands.
type lstate uint8

const (
	lsNone     lstate = iota + 1 // the peer accepts no channels
	lsDialing                    // dialing the peer
	lsHello                      // Hello sent, waiting for the answer
	lsRetry                      // refused (peer behind): dialing again soon
	lsAwait                      // waiting for the peer to dial
	lsAccepted                   // accepted, waiting for its Hello
	lsHeld                       // accepted, its Hello names an epoch not connected here yet
	lsOpen                       // open
	lsEnded                      // the peer left the epoch: calls fail with ErrEpochEnded
	lsLost                       // failed: calls fail with ErrPeerLost
	lsClosed                     // closed here (epoch end, stop) or dropped
)

var lstateNames = [...]string{lsNone: "no-channel", lsDialing: "dialing", lsHello: "handshake", lsRetry: "retrying",
	lsAwait: "awaiting-dial", lsAccepted: "accepted", lsHeld: "held", lsOpen: "open", lsEnded: "ended", lsLost: "lost", lsClosed: "closed"}

func (s lstate) String() string { return lstateNames[s] }

// fault causes, for logs and metrics.
const (
	faultSilent      = "silent"
	faultReset       = "reset"
	faultProtocol    = "protocol"
	faultUnreachable = "unreachable"
	faultRefused     = "refused"
	faultSetup       = "setup"
)

// link is the channel to one peer in one epoch, or an accepted connection
// whose handshake is not done. Every field is guarded by the mesh's lock.
type link struct {
	m      *Mesh
	serial uint64
	peer   proto.Member // zero until bound (accepted connections)
	epoch  uint64
	state  lstate
	conn   network.Conn
	now    nowSender        // conn, if it can say a frame was written at once
	rel    network.Releaser // conn, if it takes received frames back
	wfn    func(error)      // conn's send callback

	setupBy  time.Duration  // open by then, or the peer is reported
	deadline time.Duration  // accepted and held connections: handshake by then
	hello    wire.Handshake // held: the peer's Hello
	backoff  time.Duration  // previous redial delay

	// ch is the channel's protocol state: sequence numbers, credits, the
	// peer's liveness.
	ch       protocol.Channel
	waiting  queue[*Op]
	calls    map[uint64]*Op
	inflight int           // frames handed to conn, not written yet
	written  queue[[]byte] // their buffers, in order
	queued   queue[[]byte] // frames waiting for room in conn's window
}

func (m *Mesh) newLink(p proto.Member, e uint64) *link {
	m.serial++
	l := &link{m: m, serial: m.serial, peer: p, epoch: e, calls: map[uint64]*Op{}}
	l.ch.Init(e, m.cfg.Window, m.cfg.MaxMessage)
	return l
}

// attach makes c the link's connection and returns the callback to
// receive its frames with. Callbacks of an earlier connection of the link
// are ignored. Called with m.mu held.
func (l *link) attach(c network.Conn) func([]byte, error) {
	l.conn = c
	l.now, _ = c.(nowSender)
	l.rel, _ = c.(network.Releaser)
	l.inflight = 0
	for l.written.len() > 0 {
		l.written.pop()
	}
	for l.queued.len() > 0 {
		l.queued.pop()
	}
	l.wfn = func(err error) { l.onWritten(c, err) }
	return func(b []byte, err error) { l.onFrame(c, b, err) }
}

// dial connects to the peer and sends Hello. Called with m.mu held.
func (m *Mesh) dial(l *link) {
	l.state = lsDialing
	serial := l.serial
	m.cfg.Network.Dial(l.peer.Addr, m.cfg.DialTimeout, func(c network.Conn, err error) {
		m.mu.Lock()
		defer m.unlock()
		if l.state != lsDialing || l.serial != serial {
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			l.fail(faultUnreachable, err, 0)
			return
		}
		rfn := l.attach(c)
		l.state = lsHello
		l.write(wire.Hello, 0, m.handshake(l.peer, l.epoch).Append(nil))
		m.later(func() { c.Receive(rfn) })
	})
}

// handshake is this mesh's side of a handshake with peer in epoch e.
func (m *Mesh) handshake(peer proto.Member, e uint64) wire.Handshake {
	return wire.Handshake{
		Group: m.cfg.Group, Epoch: e,
		FromID: m.cfg.ID, FromIncarnation: m.cfg.Incarnation,
		ToID: peer.ID, ToIncarnation: peer.Incarnation,
		Window: uint32(m.cfg.Window), HeartbeatMillis: uint32(max(1, m.cfg.Heartbeat.Milliseconds())),
	}
}

// accept takes a new connection: it must say Hello within the handshake
// timeout.
func (m *Mesh) accept(c network.Conn) {
	m.mu.Lock()
	if m.stopped || len(m.held) >= maxHeld {
		m.mu.Unlock()
		c.Close()
		return
	}
	l := m.newLink(proto.Member{}, 0)
	rfn := l.attach(c)
	l.state = lsAccepted
	l.deadline = m.now() + m.cfg.HandshakeTimeout
	m.held[l] = struct{}{}
	m.arm()
	m.unlock()
	c.Receive(rfn)
}

// onFrame is the receive callback of the link's connection c.
func (l *link) onFrame(c network.Conn, frame []byte, err error) {
	m := l.m
	m.mu.Lock()
	if l.conn != c {
		m.mu.Unlock() // an earlier connection of the link
		return
	}
	if err != nil {
		l.ended(err)
		m.unlock()
		return
	}
	var (
		op     *Op
		req    *Request
		notify bool
		kept   bool
	)
	switch l.state {
	case lsAccepted, lsHeld, lsHello, lsOpen:
		op, req, notify, kept = l.receive(frame)
	}
	if !kept && l.rel != nil {
		l.rel.Release(frame) // nothing refers to it
	}
	m.unlock()
	switch {
	case op != nil:
		m.complete(op)
	case req != nil:
		m.serve(req)
	case notify && m.cfg.OnMessage != nil:
		m.cfg.OnMessage(l.epoch)
	}
}

// receive takes one frame. It returns a call to complete, a request to
// serve, or whether a message is now waiting, and whether anything refers
// to the frame now (a message waiting, a request, a response). Called with
// m.mu held.
func (l *link) receive(frame []byte) (op *Op, req *Request, notify, kept bool) {
	m := l.m
	h, payload, err := wire.Parse(frame, max(m.cfg.MaxMessage, 4096))
	if err != nil {
		l.protocol(fmt.Errorf("bad frame: %w", err))
		return
	}
	switch l.state {
	case lsAccepted, lsHeld:
		if h.Type == wire.Close && l.state == lsHeld {
			l.drop(nil) // the dialer gave up (its epoch ended)
			return
		}
		if h.Type != wire.Hello {
			l.protocol(fmt.Errorf("%s before the handshake", h.Type))
			return
		}
		hs, err := wire.ParseHandshake(payload)
		switch {
		case errors.Is(err, wire.ErrSignature):
			m.refuse(l, wire.RefuseVersion, "signed handshakes are not supported")
		case err != nil:
			l.protocol(fmt.Errorf("bad handshake: %w", err))
		default:
			m.hello(l, hs, h.Epoch)
		}
		return
	case lsHello:
		switch h.Type {
		case wire.Welcome:
			hs, err := wire.ParseHandshake(payload)
			if err == nil {
				err = protocol.Welcome(m.handshake(l.peer, l.epoch), hs)
			}
			if err != nil {
				l.protocol(fmt.Errorf("bad welcome: %w", err))
				return
			}
			l.open(hs, m.now())
		case wire.Refuse:
			l.refused(wire.RefuseCode(h.Arg), h.Epoch, wire.RefuseReason(payload))
		default:
			l.protocol(fmt.Errorf("%s before the handshake's answer", h.Type))
		}
		return
	}
	// Open.
	action, err := l.ch.Receive(h)
	switch action {
	case protocol.DropEpoch:
		m.stats.DroppedEpoch++
		m.met.dropped(dropEpoch, 1)
	case protocol.DropDuplicate:
		m.stats.DroppedDuplicate++
		m.met.dropped(dropDuplicate, 1)
	case protocol.Break:
		l.protocol(err)
	case protocol.Deliver:
		if h.Type == wire.Message {
			m.inbox.push(inMsg{l: l, data: payload, frame: frame})
			return nil, nil, true, true
		}
		return nil, m.request(l, payload, frame, h.Arg), false, true
	case protocol.Answer:
		c := l.calls[h.Arg]
		if c == nil {
			return // cancelled by its caller
		}
		if err := protocol.Answers(h.Type, c.kind == opPing); err != nil {
			l.protocol(fmt.Errorf("%w (%d)", err, h.Arg))
			return
		}
		delete(l.calls, h.Arg)
		c.where = opDone
		switch h.Type {
		case wire.Response:
			c.Resp, c.Err, c.resp = payload, nil, Frame{frame, l.rel}
		case wire.Pong:
			c.Err = nil
		default:
			c.Err = &RemoteError{Peer: l.peer.ID, Text: wire.RefuseReason(payload)}
		}
		return c, nil, false, h.Type == wire.Response
	case protocol.Grant:
		l.flush()
	case protocol.Pong:
		// Answered by the driver itself, at once: no handler, no
		// operation of the epoch, no credit.
		l.write(wire.Pong, h.Arg, nil)
	case protocol.Closed:
		code := wire.CloseCode(h.Arg)
		m.log.Debug("channel closed by the peer", "peer", l.peer.ID, "epoch", l.epoch, "code", code, "reason", wire.RefuseReason(payload))
		switch code {
		case wire.CloseEpochEnded, wire.CloseStopping:
			l.close(0, fmt.Errorf("%w: %s left epoch %d of group %s (%s)", proto.ErrEpochEnded, l.peer.ID, l.epoch, m.cfg.Group, code))
			l.state = lsEnded
		default: // it suspects us or we broke its protocol: it reported us
			l.close(0, fmt.Errorf("%w: %s closed the channel of epoch %d (%s)", proto.ErrPeerLost, l.peer.ID, l.epoch, code))
			l.state = lsLost
		}
	}
	return
}

// local is where this mesh stands, for the handshake's admission.
// Called with m.mu held.
func (m *Mesh) local() protocol.Local {
	return protocol.Local{Group: m.cfg.Group, ID: m.cfg.ID, Incarnation: m.cfg.Incarnation,
		Epoch: m.epoch, Connected: m.connected, Stopping: m.stopped}
}

// hello takes an accepted connection's Hello. Called with m.mu held.
func (m *Mesh) hello(l *link, hs wire.Handshake, hdrEpoch uint64) {
	switch a := m.local().Hello(hs, hdrEpoch); a.Verdict {
	case protocol.Reject:
		l.protocol(errors.New(a.Reason))
	case protocol.Refuse:
		m.refuse(l, a.Code, a.Reason)
	case protocol.Hold:
		// Not connected in that epoch yet: hold the handshake a while.
		l.state, l.hello = lsHeld, hs
		l.deadline = m.now() + m.cfg.HandshakeTimeout
	default:
		m.bind(l, hs)
	}
}

// bind makes an accepted connection the link of its peer in the connected
// epoch, if the admission allows. Called with m.mu held.
func (m *Mesh) bind(l *link, hs wire.Handshake) {
	p, ok := m.members[hs.FromID]
	old := m.links[p.ID]
	a := m.local().Bind(hs, protocol.Peer{Member: ok, Incarnation: p.Incarnation, Awaiting: old == nil || old.state == lsAwait})
	if a.Verdict != protocol.Bind {
		m.refuse(l, a.Code, a.Reason)
		return
	}
	delete(m.held, l)
	l.peer, l.epoch = p, hs.Epoch
	l.ch.Init(hs.Epoch, m.cfg.Window, m.cfg.MaxMessage)
	m.links[p.ID] = l
	if old != nil {
		l.setupBy = old.setupBy
		for old.waiting.len() > 0 {
			op := old.waiting.pop()
			op.l = l
			l.waiting.push(op)
		}
	}
	l.write(wire.Welcome, 0, m.handshake(p, l.epoch).Append(nil))
	l.open(hs, m.now())
}

// open opens the link. Called with m.mu held.
func (l *link) open(hs wire.Handshake, now time.Duration) {
	m := l.m
	l.state = lsOpen
	l.ch.Open(int(hs.Window), now)
	m.stats.Opened++
	m.met.opened.Inc()
	m.log.Debug("channel open", "peer", l.peer.ID, "epoch", l.epoch)
	l.flush()
}

// refuse answers a Hello with Refuse and closes the connection. Called
// with m.mu held.
func (m *Mesh) refuse(l *link, code wire.RefuseCode, reason string) {
	var e uint64
	if m.connected {
		e = m.epoch
	}
	m.log.Debug("channel refused", "code", code, "reason", reason, "remote", l.conn.Remote())
	l.drop(wire.AppendFrame(nil, wire.Refuse, e, 0, uint64(code), []byte(reason)))
}

// drop forgets an accepted connection, closing it once last (if not nil)
// was written: a peer must read why before the end of the stream, or it
// would take the end for a crash. Called with m.mu held.
func (l *link) drop(last []byte) {
	delete(l.m.held, l)
	l.state = lsClosed
	c := l.conn
	l.conn = nil
	if last == nil {
		c.Close()
		return
	}
	c.Send(last, func(error) { c.Close() })
}

// refused takes the answer Refuse to our Hello. Called with m.mu held.
func (l *link) refused(code wire.RefuseCode, theirs uint64, reason string) {
	m := l.m
	switch protocol.Refused(code) {
	case protocol.Retry:
		// The peer has not connected the epoch yet: dial again soon.
		l.conn.Close()
		l.conn, l.state = nil, lsRetry
		l.backoff = protocol.Backoff(l.backoff)
		serial := l.serial
		m.cfg.Clock.AfterFunc(l.backoff, func() {
			m.mu.Lock()
			defer m.unlock()
			if l.state == lsRetry && l.serial == serial && m.links[l.peer.ID] == l {
				m.dial(l)
			}
		})
	case protocol.Ended:
		l.close(0, fmt.Errorf("%w: %s is past epoch %d of group %s (at %d: %s)", proto.ErrEpochEnded, l.peer.ID, l.epoch, m.cfg.Group, theirs, reason))
		l.state = lsEnded
	default:
		l.fail(faultRefused, fmt.Errorf("refused (%s): %s", code, reason), 0)
	}
}

// write sends a frame of the link's epoch. The handshake's frames (Hello,
// Welcome) carry sequence number 0, the others the next one. Called with
// m.mu held.
func (l *link) write(t wire.Type, arg uint64, payload []byte) {
	m := l.m
	b := wire.AppendFrame(m.bufs.Get(wire.HeaderSize + len(payload))[:0], t, l.epoch, l.ch.Seq(t), arg, payload)
	if l.inflight < network.SendWindow && l.queued.len() == 0 {
		if l.now != nil {
			if l.now.SendNow(b, l.wfn) {
				m.bufs.Put(b) // written: no callback follows
				return
			}
		} else {
			l.conn.Send(b, l.wfn)
		}
		// Its callback cannot run before the lock is released.
		l.inflight++
		l.written.push(b)
		return
	}
	l.queued.push(b)
	// What may wait here is bounded (see protocol.Channel.Overflow): a
	// peer that reads nothing for long is lost, not buffered for.
	if n := l.queued.len(); l.state == lsOpen && l.ch.Overflow(n, network.SendWindow) {
		l.protocol(fmt.Errorf("the peer reads nothing: %d frames wait to be written", n))
	}
}

// nowSender is a connection that can write a frame at once: SendNow is
// Send, except that it returns true, and calls no callback, when the frame
// was written before it returned (network.OS's connections have it).
type nowSender interface {
	SendNow(frame []byte, done func(error)) bool
}

// onWritten is the send callback of the link's connection c: the oldest
// frame handed to it was written.
func (l *link) onWritten(c network.Conn, err error) {
	m := l.m
	m.mu.Lock()
	if l.conn != c {
		m.mu.Unlock()
		return
	}
	l.inflight--
	if l.written.len() > 0 {
		m.bufs.Put(l.written.pop())
	}
	for err == nil && l.queued.len() > 0 && l.inflight < network.SendWindow && l.conn != nil {
		b := l.queued.pop()
		l.inflight++
		l.written.push(b)
		l.conn.Send(b, l.wfn)
	}
	m.mu.Unlock()
}

// flush sends what waits, in order, as far as credits allow (a ping
// needs none). Called with m.mu held.
func (l *link) flush() {
	for l.state == lsOpen && l.waiting.len() > 0 && (l.ch.Credits() > 0 || l.waiting.peek().kind == opPing) {
		if op := l.waiting.pop(); l.transmit(op) {
			l.m.finish(op, nil)
		}
	}
}

// transmit sends op's frame. A message is then complete: transmit
// reports true, and the caller completes it once the lock is released.
// Called with m.mu held, the link open and, unless op is a ping, a credit
// available.
func (l *link) transmit(op *Op) bool {
	m := l.m
	switch op.kind {
	case opSend:
		l.ch.Spend()
		l.write(wire.Message, 0, op.data)
		op.data, op.where = nil, opDone
		return true
	case opPing:
		// Its answer comes from the peer's driver, which takes nothing
		// from its window: no credit.
		m.nextCall++
		op.id, op.where = m.nextCall, opCalled
		l.calls[op.id] = op
		l.write(wire.Ping, op.id, nil)
		return false
	}
	l.ch.Spend()
	m.nextCall++
	op.id, op.where = m.nextCall, opCalled
	l.calls[op.id] = op
	l.write(wire.Request, op.id, op.data)
	op.data = nil
	return false
}

// consumed returns the credit of a frame the application has taken.
// Called with m.mu held.
func (l *link) consumed() {
	if n := l.ch.Consumed(); n > 0 && l.state == lsOpen {
		l.write(wire.Credit, n, nil)
	}
}

// ended takes the end of the link's connection. Called with m.mu held.
func (l *link) ended(err error) {
	switch l.state {
	case lsAccepted, lsHeld:
		l.drop(nil)
	case lsHello, lsOpen:
		if errors.Is(err, io.EOF) {
			err = errors.New("connection closed without a close frame")
		}
		l.fail(faultReset, err, 0)
	}
}

// protocol closes the link for a frame that broke the protocol; the peer
// is reported unless the connection was not bound to one yet. Called with
// m.mu held.
func (l *link) protocol(err error) {
	m := l.m
	m.stats.Protocol++
	m.met.protocol.Inc()
	if l.state == lsAccepted || l.state == lsHeld {
		m.log.Warn("channel handshake failed", "remote", l.conn.Remote(), "err", err)
		l.drop(wire.AppendFrame(nil, wire.Close, 0, 1, uint64(wire.CloseProtocol), []byte(err.Error())))
		return
	}
	l.fail(faultProtocol, err, wire.CloseProtocol)
}

// fail marks the peer lost: the link closes (telling the peer why if code
// is not 0), its calls and sends fail with ErrPeerLost, and the
// membership reports the peer. Called with m.mu held.
func (l *link) fail(cause string, err error, code wire.CloseCode) {
	m := l.m
	m.log.Warn("peer lost", "peer", l.peer.ID, "epoch", l.epoch, "cause", cause, "err", err)
	l.close(code, fmt.Errorf("%w: %s in epoch %d of group %s (%s): %w", proto.ErrPeerLost, l.peer.ID, l.epoch, m.cfg.Group, cause, err))
	l.state = lsLost
	m.stats.Faults++
	m.met.fault(cause)
	e, peer := l.epoch, l.peer.ID
	m.later(func() { m.host.ReportFault(e, peer) })
}

// close closes the link's connection (sending a close frame first if code
// is not 0 and the link is open) and fails its sends and calls with err.
// Called with m.mu held.
func (l *link) close(code wire.CloseCode, err error) {
	m := l.m
	if c := l.conn; c != nil {
		l.conn = nil // its callbacks are ignored from now on
		if code != 0 && (l.state == lsOpen || l.state == lsHello) {
			// An orderly close: the peer must read the close frame before
			// the end of the stream, or it would take the end for a
			// crash. So the connection closes once the frame is written
			// (or could not be).
			c.Send(wire.AppendFrame(nil, wire.Close, l.epoch, l.ch.Seq(wire.Close), uint64(code), nil), func(error) { c.Close() })
		} else {
			c.Close()
		}
	}
	l.state = lsClosed
	for l.waiting.len() > 0 {
		m.finish(l.waiting.pop(), err)
	}
	for id, op := range l.calls {
		delete(l.calls, id)
		m.finish(op, err)
	}
	for l.queued.len() > 0 {
		l.queued.pop()
	}
}
