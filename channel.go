package idc

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/idc-dev/idc/internal/channel"
)

// Handler serves the calls peers make to this member (Epoch.Call), as
// net/http's Handler serves requests. ServeCall runs as an operation of
// the request's epoch: the member acknowledges quiesce only once it has
// returned, so the quiesce barrier covers calls in flight from other
// domains. ctx is the epoch's context; it ends at disconnect. A non-nil
// error reaches the caller as an error wrapping ErrRemote, with its text.
type Handler interface {
	ServeCall(ctx context.Context, req Request) ([]byte, error)
}

// AsyncHandler is a Handler that serves calls without a goroutine per
// call, for handlers that are themselves event-driven (a driver domain
// forwarding calls to a resource): the channel driver hands it each call
// as it arrives, on the goroutine that reads the caller's channel, and
// the handler answers whenever it is ready, from any goroutine
// (Call.Reply). If Config.Handler is an AsyncHandler, StartCall serves
// every call and ServeCall is not called.
type AsyncHandler interface {
	Handler
	// StartCall starts serving c and returns at once: it must not block,
	// since the channel reads nothing more from the caller meanwhile.
	// The call is an operation of its epoch, as ServeCall's is, until
	// c.Reply, which must be called exactly once. ctx is the epoch's
	// context; it ends at disconnect.
	StartCall(ctx context.Context, c Call)
}

// Call is a call an AsyncHandler serves: the request, and the means to
// answer it. It is passed by value (nothing to allocate per call).
type Call struct {
	Request
	r     *channel.Request
	frame channel.Frame
}

// Reply answers the call with resp, or with err's text if err is not
// nil (the caller gets an error wrapping ErrRemote), and ends the call's
// operation. resp is copied before Reply returns: it may be reused at
// once. Call it exactly once, and no method of c afterwards but
// Release. An answer to a channel that closed meanwhile is dropped.
func (c Call) Reply(resp []byte, err error) { c.r.Reply(resp, err) }

// Release hands the request's bytes back to the channel, for a later
// frame to be read into, so that a stream of large requests allocates
// nothing (as Message.Release). It is optional. Data is the handler's
// until then, also after Reply: call Release once neither Data nor a
// slice of it is used any more — before or after Reply — and at most
// once.
func (c Call) Release() { c.frame.Release() }

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ctx context.Context, req Request) ([]byte, error)

// ServeCall calls f.
func (f HandlerFunc) ServeCall(ctx context.Context, req Request) ([]byte, error) { return f(ctx, req) }

// Request is a call a peer made, passed by value (nothing to allocate per
// call). Data is the handler's: it may keep it.
type Request struct {
	// Epoch is the epoch the call was made in (the receiver's connected
	// epoch when it was delivered).
	Epoch uint64
	// From is the calling peer's domain ID.
	From string
	// Data is the request.
	Data []byte
}

// Message is a message received from a peer: its epoch, its sender, its
// bytes. Data is the receiver's to keep; once done with it, the receiver
// may call Release, so that a later message is read into its buffer (a
// stream of large messages then allocates nothing). After Release neither
// Data nor a slice of it may be used, and no copy of the message may be
// released again.
type Message = channel.Message

// RemoteError is a call's error when the peer's handler failed; it wraps
// ErrRemote.
type RemoteError = channel.RemoteError

// serveWith returns the channel driver's handler that runs h with the
// request's epoch context, each request in a goroutine of its own: an idle
// worker of an earlier request if there is one, else a new one. An
// AsyncHandler is handed each request on the channel's goroutine instead.
func serveWith(h Handler) func(*channel.Request) {
	if h == nil {
		return nil
	}
	if ah, ok := h.(AsyncHandler); ok {
		return func(r *channel.Request) {
			ah.StartCall(r.Context(), Call{Request: Request{Epoch: r.Epoch, From: r.From, Data: r.Data}, r: r, frame: r.Frame()})
		}
	}
	p := &servePool{h: h, work: make(chan *channel.Request)}
	return p.serve
}

// workerIdle is how long a handler goroutine waits for another request
// before it ends.
const workerIdle = time.Second

// servePool runs requests in goroutines that, once done, wait a while
// for another request, so that a steady flow of calls starts no goroutine
// per call.
type servePool struct {
	h    Handler
	work chan *channel.Request // unbuffered: a send succeeds only to an idle worker
}

func (p *servePool) serve(r *channel.Request) {
	select {
	case p.work <- r:
	default:
		go p.worker(r)
	}
}

func (p *servePool) worker(r *channel.Request) {
	var idle *time.Timer
	for {
		resp, err := p.h.ServeCall(r.Context(), Request{Epoch: r.Epoch, From: r.From, Data: r.Data})
		r.Reply(resp, err)
		if idle == nil {
			idle = time.NewTimer(workerIdle)
		} else {
			idle.Reset(workerIdle)
		}
		select {
		case r = <-p.work:
		case <-idle.C:
			return
		}
	}
}

// waiter is an operation of the channel driver and what the caller waits
// on; pooled, so that a call or a send allocates nothing of its own.
type waiter struct {
	op   channel.Op
	done chan struct{}
}

var waiters = sync.Pool{New: func() any {
	w := &waiter{done: make(chan struct{}, 1)}
	w.op.Done = func(*channel.Op) { w.done <- struct{}{} }
	return w
}}

func (e *Epoch) mesh() (*channel.Mesh, error) {
	if m := e.d.d.Mesh(); m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("%w: channels are off (Config.Listen is empty)", ErrNoChannel)
}

// Send sends msg to peer over the epoch's channel. It returns once the
// message was handed to the connection (msg may then be reused); while the
// channel is not open yet, or the peer has not taken enough of what it was
// sent, it waits, as an operation of the epoch. The peer receives it only
// while it is connected in this same epoch (Receive); otherwise the
// message is dropped. Errors wrap ErrEpochEnded, ErrPeerLost,
// ErrNoChannel, ErrNotMember, ErrMessageTooLarge or ErrFenced, or are
// ctx's.
func (e *Epoch) Send(ctx context.Context, peer string, msg []byte) error {
	_, err := e.run(ctx, peer, msg, false)
	return err
}

// Call sends req to peer and returns the response of its Handler. The call
// is an operation of the epoch on both sides: this member's quiesce waits
// for it, and the peer's for its handler. If the epoch ends first, Call
// returns an error wrapping ErrEpochEnded (and the handler's context
// ends); if the peer is lost, ErrPeerLost; if its handler failed, a
// *RemoteError wrapping ErrRemote. The response is the caller's.
func (e *Epoch) Call(ctx context.Context, peer string, req []byte) ([]byte, error) {
	return e.run(ctx, peer, req, true)
}

func (e *Epoch) run(ctx context.Context, peer string, data []byte, call bool) ([]byte, error) {
	m, err := e.mesh()
	if err != nil {
		return nil, err
	}
	w := waiters.Get().(*waiter)
	if call {
		m.Call(e.Number(), peer, data, &w.op)
	} else {
		m.Send(e.Number(), peer, data, &w.op)
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		m.Cancel(&w.op, ctx.Err())
		<-w.done
	}
	resp, err := w.op.Resp, w.op.Err
	w.op.Resp, w.op.Err = nil, nil
	waiters.Put(w)
	return resp, err
}

// Go starts a call of req to peer, like Call, and returns at once: done
// is called once with the response or the error, possibly before Go
// returns, on a goroutine of the channel driver — it must not block. The
// call ends with the epoch (ErrEpochEnded) if it has not ended before; it
// cannot be cancelled otherwise. It spares a goroutine per call for
// callers that are themselves event-driven (the multipath disk). req must
// not be modified until done has run.
func (e *Epoch) Go(peer string, req []byte, done func(resp []byte, err error)) {
	m, err := e.mesh()
	if err != nil {
		done(nil, err)
		return
	}
	op := &channel.Op{Done: func(op *channel.Op) { done(op.Resp, op.Err) }}
	m.Call(e.Number(), peer, req, op)
}

// GoTransient is Go, except that resp is valid only until done returns:
// its buffer is then handed back to the channel, for a later frame to be
// read into, so that a stream of large responses allocates nothing. done
// must copy what it keeps of resp. req must not be modified until done
// has run.
func (e *Epoch) GoTransient(peer string, req []byte, done func(resp []byte, err error)) {
	m, err := e.mesh()
	if err != nil {
		done(nil, err)
		return
	}
	g := goCalls.Get().(*goCall)
	g.done = done
	m.Call(e.Number(), peer, req, &g.op)
}

// goCall is a call of GoTransient; pooled, so that a call allocates
// nothing of its own.
type goCall struct {
	op   channel.Op
	done func(resp []byte, err error)
}

var goCalls sync.Pool

func init() {
	goCalls.New = func() any {
		g := &goCall{}
		g.op.Done = g.finish
		return g
	}
}

// finish is the operation's Done: it hands the response to done, then
// back to the channel, and the call to the pool.
func (g *goCall) finish(op *channel.Op) {
	done := g.done
	g.done = nil
	done(op.Resp, op.Err)
	op.Release()
	op.Err = nil
	goCalls.Put(g)
}

// Ping sends a ping to peer over the epoch's channel and returns the round
// trip: the time from sending it to its answer, on the monotonic clock.
// The peer's channel driver answers by itself, at once: not its Handler,
// and not as an operation of the epoch there, so a ping needs no handler,
// takes none of the peer's window and holds up nobody's quiesce. Here it
// is an operation of the epoch until the answer, as a call is; while the
// channel is not open yet it waits for it, and that wait counts in the
// time. Errors are a call's: they wrap ErrEpochEnded (the epoch ended,
// here or at the peer; ErrNotConnected while this member quiesces),
// ErrPeerLost, ErrNoChannel, ErrNotMember or ErrFenced, or are ctx's.
func (e *Epoch) Ping(ctx context.Context, peer string) (time.Duration, error) {
	m, err := e.mesh()
	if err != nil {
		return 0, err
	}
	w := waiters.Get().(*waiter)
	start := time.Now()
	m.Ping(e.Number(), peer, &w.op)
	select {
	case <-w.done:
	case <-ctx.Done():
		m.Cancel(&w.op, ctx.Err())
		<-w.done
	}
	rtt := time.Since(start)
	err = w.op.Err
	w.op.Resp, w.op.Err = nil, nil
	waiters.Put(w)
	if err != nil {
		return 0, err
	}
	return rtt, nil
}

// Receive returns the next message a peer sent in this epoch, waiting
// for one until ctx ends. A message is delivered only while this member
// is connected in the epoch it was sent in: once the epoch has ended,
// Receive fails with an error wrapping ErrEpochEnded (or ErrFenced) and
// the messages not yet received are dropped. Release the message once
// done with its Data (optional; see Message).
func (e *Epoch) Receive(ctx context.Context) (Message, error) {
	m, err := e.mesh()
	if err != nil {
		return Message{}, err
	}
	n := e.Number()
	for {
		msg, ok, more, err := m.RecvMore(n)
		if err != nil {
			return Message{}, err
		}
		if ok {
			if more > 0 {
				e.d.signal() // another receiver may be waiting
			}
			return msg, nil
		}
		select {
		case <-e.d.msgs:
		case <-e.Context().Done():
		case <-ctx.Done():
			return Message{}, ctx.Err()
		}
	}
}
