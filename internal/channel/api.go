package channel

import (
	"context"
	"errors"
	"fmt"

	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/wire"
)

// opWhere is where an operation stands.
type opWhere uint8

const (
	opIdle    opWhere = iota
	opWaiting         // waiting for the channel to open or for credit
	opCalled          // request sent, answer awaited
	opDone            // completed (or about to be)
)

// opKind is what an operation does.
type opKind uint8

const (
	opSend opKind = iota // a message
	opCall               // a request, answered by the peer's handler
	opPing               // a ping, answered by the peer's driver itself
)

// Op is a send, a call or a ping in progress. The caller owns it and may
// reuse it once Done has run; set Done before passing it.
type Op struct {
	// Done is called once the operation completed, without locks; it may
	// run before Send, Call or Ping returns.
	Done func(*Op)
	// Resp is a call's response (it aliases the received frame); nil for
	// a send or a ping. It is the caller's; once done with it, the caller
	// may hand it back with Release.
	Resp []byte
	// Err is why the operation failed, or nil: it wraps
	// proto.ErrEpochEnded (the epoch ended, here or at the peer),
	// proto.ErrPeerLost, proto.ErrNoChannel, proto.ErrNotMember,
	// proto.ErrMessageTooLarge or proto.ErrFenced, or is a *RemoteError
	// (wrapping proto.ErrRemote), or the error Cancel gave.
	Err error

	epoch uint64
	peer  string
	data  []byte
	kind  opKind
	l     *link
	id    uint64
	where opWhere
	resp  Frame // Resp's frame
}

// Release hands a call's response back to its connection, for a later
// frame to be read into (a stream of large responses then allocates
// nothing), and clears Resp. It is optional: a response never released
// is garbage collected. Call it after Done ran, at most once per
// response; neither Resp nor a slice of it may be used afterwards. On an
// operation without a response it does nothing.
func (op *Op) Release() {
	op.resp.Release()
	op.Resp = nil
}

// Frame is a received frame that its receiver may hand back to its
// connection once nothing uses it (network.Releaser). The zero Frame
// holds nothing.
type Frame struct {
	b   []byte
	rel network.Releaser
}

// Release hands the frame back to its connection, if the connection
// takes frames back, and clears f. Release a frame at most once, and only
// once no slice of it is used.
func (f *Frame) Release() {
	if f.rel != nil && f.b != nil {
		f.rel.Release(f.b)
	}
	*f = Frame{}
}

// RemoteError is a call's error when the peer's handler failed.
type RemoteError struct {
	Peer, Text string
}

func (e *RemoteError) Error() string { return fmt.Sprintf("idc: %s's handler: %s", e.Peer, e.Text) }

// Unwrap makes errors.Is(err, proto.ErrRemote) hold.
func (e *RemoteError) Unwrap() error { return proto.ErrRemote }

// Send sends data to peer in epoch e; op.Done runs once the message was
// handed to the connection (data may then be reused). It waits, as an
// operation of e, for the channel to open and for credit: a slow receiver
// slows its sender.
func (m *Mesh) Send(e uint64, peer string, data []byte, op *Op) { m.start(e, peer, data, opSend, op) }

// Call sends the request data to peer in epoch e; op.Done runs with the
// response, or the error, or when Cancel cancels it. The call is an
// operation of e from now until then.
func (m *Mesh) Call(e uint64, peer string, data []byte, op *Op) { m.start(e, peer, data, opCall, op) }

// Ping pings peer in epoch e: its channel driver answers by itself, at
// once, without a handler and without an operation of the epoch there.
// op.Done runs with op.Err nil once the answer arrived, or with the error
// a call would have (the epoch ended, the peer was lost, ...), or when
// Cancel cancels it. Like a call, the ping is an operation of e here from
// now until then, and waits for the channel to open; it takes no credit.
func (m *Mesh) Ping(e uint64, peer string, op *Op) { m.start(e, peer, nil, opPing, op) }

func (m *Mesh) start(e uint64, peer string, data []byte, kind opKind, op *Op) {
	op.epoch, op.peer, op.kind, op.Resp, op.Err, op.l, op.where, op.resp = e, peer, kind, nil, nil, nil, opIdle, Frame{}
	if len(data) > m.cfg.MaxMessage {
		op.Err = fmt.Errorf("%w: %d bytes (max %d)", proto.ErrMessageTooLarge, len(data), m.cfg.MaxMessage)
		op.where = opDone
		if op.Done != nil {
			op.Done(op)
		}
		return
	}
	if err := m.host.Begin(e); err != nil {
		op.Err, op.where = err, opDone
		if op.Done != nil {
			op.Done(op)
		}
		return
	}
	m.mu.Lock()
	l, err := m.linkFor(e, peer)
	if err != nil {
		m.finish(op, err)
		m.unlock()
		return
	}
	op.data, op.l = data, l
	// A ping needs no credit, so on an open link it goes at once, ahead of
	// what waits for credit.
	if l.state == lsOpen && (kind == opPing || l.ch.Credits() > 0 && l.waiting.len() == 0) {
		if l.transmit(op) {
			m.unlock()
			m.complete(op)
			return
		}
	} else {
		op.where = opWaiting
		l.waiting.push(op)
	}
	m.unlock()
}

// linkFor returns the link to peer in epoch e, or why there is none.
// Called with m.mu held.
func (m *Mesh) linkFor(e uint64, peer string) (*link, error) {
	if m.stopped || e != m.epoch || !m.connected {
		return nil, fmt.Errorf("%w: epoch %d of group %s", proto.ErrEpochEnded, e, m.cfg.Group)
	}
	l := m.links[peer]
	if l == nil {
		return nil, fmt.Errorf("%w: %q in epoch %d of group %s", proto.ErrNotMember, peer, e, m.cfg.Group)
	}
	switch l.state {
	case lsNone:
		return nil, fmt.Errorf("%w: %s accepts no channels", proto.ErrNoChannel, peer)
	case lsLost:
		return nil, fmt.Errorf("%w: %s in epoch %d of group %s", proto.ErrPeerLost, peer, e, m.cfg.Group)
	case lsEnded, lsClosed:
		return nil, fmt.Errorf("%w: %s left epoch %d of group %s", proto.ErrEpochEnded, peer, e, m.cfg.Group)
	}
	return l, nil
}

// Cancel ends op with err if it has not completed yet (a late response is
// then dropped).
func (m *Mesh) Cancel(op *Op, err error) {
	m.mu.Lock()
	l := op.l
	switch {
	case l == nil || op.where == opDone || op.where == opIdle:
	case op.where == opCalled:
		delete(l.calls, op.id)
		m.finish(op, err)
	case op.where == opWaiting:
		n := l.waiting.len()
		for range n {
			x := l.waiting.pop()
			if x != op {
				l.waiting.push(x)
			}
		}
		m.finish(op, err)
	}
	m.unlock()
}

// Recv takes the next message of epoch e, if one is waiting. Delivery is
// gated on the membership: a message is delivered only while e is the
// connected epoch; once it is not, Recv fails with the host's error and
// the epoch's messages are dropped.
func (m *Mesh) Recv(e uint64) (Message, bool, error) {
	msg, ok, _, err := m.RecvMore(e)
	return msg, ok, err
}

// RecvMore is Recv that also returns how many more messages of epoch e
// wait (as Waiting would, without taking the lock again).
func (m *Mesh) RecvMore(e uint64) (msg Message, ok bool, more int, err error) {
	if err := m.host.Begin(e); err != nil {
		return Message{}, false, 0, err
	}
	m.mu.Lock()
	if e == m.epoch && m.connected && m.inbox.len() > 0 {
		in := m.inbox.pop()
		msg, ok = Message{Epoch: e, From: in.l.peer.ID, Data: in.data, frame: in.frame, rel: in.l.rel}, true
		m.stats.Delivered++
		in.l.consumed()
		more = m.inbox.len()
	}
	m.unlock()
	m.host.End(e)
	return msg, ok, more, nil
}

// Waiting returns how many messages of epoch e wait to be received.
func (m *Mesh) Waiting(e uint64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e != m.epoch || !m.connected {
		return 0
	}
	return m.inbox.len()
}

// Request is a request handed to the handler. Reply to it exactly once;
// do not use it afterwards (the mesh reuses it for a later request).
type Request struct {
	Epoch uint64
	From  string
	Data  []byte

	l       *link
	id      uint64
	replied bool
	frame   Frame // Data's frame
}

// Frame returns the frame Data was received in. Data is the handler's,
// also after Reply; once nothing uses it any more, the handler may hand
// the frame back (Frame.Release) for a later frame to be read into. Take
// it before Reply: the request is reused afterwards.
func (r *Request) Frame() Frame { return r.frame }

// maxFreeRequests bounds the requests a mesh keeps for reuse.
const maxFreeRequests = 256

// request returns a request for the handler, reusing one that was
// answered. Called with m.mu held.
func (m *Mesh) request(l *link, data, frame []byte, id uint64) *Request {
	var r *Request
	if n := len(m.freeReqs); n > 0 {
		r = m.freeReqs[n-1]
		m.freeReqs[n-1] = nil
		m.freeReqs = m.freeReqs[:n-1]
	} else {
		r = new(Request)
	}
	*r = Request{Epoch: l.epoch, From: l.peer.ID, Data: data, l: l, id: id, frame: Frame{frame, l.rel}}
	return r
}

// release keeps an answered request for reuse. Called with m.mu held.
func (m *Mesh) release(r *Request) {
	if len(m.freeReqs) < maxFreeRequests {
		*r = Request{replied: true}
		m.freeReqs = append(m.freeReqs, r)
	}
}

// Context is the context of the request's epoch: it ends when the epoch
// is disconnected here.
func (r *Request) Context() context.Context { return r.l.m.host.Context(r.Epoch) }

// errNoHandler answers requests when no handler is set.
var errNoHandler = errors.New("no handler for requests")

// serve hands a request to the handler as an operation of its epoch, or
// drops it if the epoch is no longer connected here.
func (m *Mesh) serve(r *Request) {
	if err := m.host.Begin(r.Epoch); err != nil {
		m.mu.Lock()
		r.replied = true
		r.l.consumed()
		m.stats.DroppedEnded++
		m.met.dropped(dropEnded, 1)
		r.frame.Release() // nothing refers to it
		m.release(r)
		m.unlock()
		return
	}
	m.mu.Lock()
	m.stats.Delivered++
	m.unlock()
	if m.cfg.Handler == nil {
		f := r.frame
		r.Reply(nil, errNoHandler)
		f.Release()
		return
	}
	m.cfg.Handler(r)
}

// Reply answers the request with resp, or with err's text if err is not
// nil, and ends its operation. An answer to a channel that closed
// meanwhile is dropped.
func (r *Request) Reply(resp []byte, err error) {
	l := r.l
	m := l.m
	m.mu.Lock()
	if r.replied {
		m.mu.Unlock()
		return
	}
	r.replied = true
	if l.state == lsOpen {
		switch {
		case err != nil:
			l.write(wire.Error, r.id, []byte(err.Error()))
		case len(resp) > m.cfg.MaxMessage:
			l.write(wire.Error, r.id, fmt.Appendf(nil, "response of %d bytes, above the maximum %d", len(resp), m.cfg.MaxMessage))
		default:
			l.write(wire.Response, r.id, resp)
		}
	}
	l.consumed()
	e := r.Epoch
	m.release(r)
	m.unlock()
	m.host.End(e)
}
