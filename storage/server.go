package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/network"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxInFlight is ServerConfig.MaxInFlight's default.
const DefaultMaxInFlight = 64

// maxRead is the longest read whose answer fits in one frame.
var maxRead = uint64(network.MaxFrame - len(block.AppendAnswer(nil, block.Answer{})))

// ErrServerClosed: the server was shut down.
var ErrServerClosed = errors.New("idc: storage: server closed")

// ServerConfig configures a Server.
type ServerConfig struct {
	// Storage serves the requests; required.
	Storage *Storage
	// Network is where Listen listens (not needed for ServeConn alone).
	Network network.Network
	// Logger receives the server's logs (default: none).
	Logger *slog.Logger
	// Exec runs the serving of one request: the apply and the sending of
	// its answer. The simulator passes its own, which runs fn as an event
	// of the store's node. By default, a write that does not ask to be
	// durable (no FUA) is served on the goroutine that received it, as it
	// only reaches the page cache: that spares a goroutine and a thread's
	// wake-up per write; every other request — a read, a flush, a FUA
	// write, a trim or a zero, which may wait for the device — runs in a
	// goroutine of its own.
	Exec func(fn func())
	// MaxInFlight bounds the requests of one connection served at once
	// (default DefaultMaxInFlight); later ones wait, in order of arrival.
	MaxInFlight int
	// Name is the resource's name; it labels the metrics.
	Name string
	// Metrics, if not nil, registers the server's metrics: requests by
	// operation and status, connections open.
	Metrics prometheus.Registerer
}

// Server serves a Storage over resource connections: plain framed
// connections over network.Network, not idc channels (the store is a
// guarded resource, not a member of its groups: only its guard, checking
// each request's token, stops a stale request). Each frame a connection
// receives is one encoded request (block.AppendRequest); each frame it
// sends back is one encoded answer (block.AppendAnswer) carrying the
// request's ID. Answers go back in the order the requests finish, not the
// order they came: the sender matches them by ID.
//
// Each request is served by ServerConfig.Exec (by default, a write
// without FUA on the goroutine that received it) — the guard's check and
// the apply in one step (Storage.Serve), then the answer sent on the same
// connection. At most MaxInFlight requests of a connection are served at
// once; later ones wait in the connection's queue, which the server does
// not bound itself: its senders do. A driver domain forwards the requests
// its disks send it over idc channels, whose credit windows bound the
// requests a disk has outstanding, so a connection's queue holds at most
// the sum of the windows of the disks that use it. Answers beyond the
// connection's send window (network.SendWindow) wait until earlier ones
// are written. A frame that is not a request is answered
// block.StatusInvalid (with the ID in its header when there is one, else
// 0) and the connection stays up; a read whose answer would not fit in a
// frame (network.MaxFrame) is invalid too.
//
// Like the other drivers, the server is event-driven over
// network.Network: its callbacks take one lock, never block (but for the
// default Exec's writes to the page cache), and call nothing (Exec, Send,
// Close) under it, so the simulator runs it unchanged.
type Server struct {
	st   *Storage
	net  network.Network
	log  *slog.Logger
	exec func(func())
	// inline: writes without FUA are served on the goroutine that
	// received them (the default Exec).
	inline bool
	max    int
	met    *serverMetrics

	bufs answerBufs // answers' buffers, once written

	mu      sync.Mutex
	after   []func()
	lns     []network.Listener
	conns   map[*conn]struct{}
	running int // requests being served, on every connection
	closing bool
	idle    chan struct{} // closed once closing and nothing runs or waits to be sent
	isIdle  bool
}

// conn is one connection's state, guarded by the server's lock.
type conn struct {
	c       network.Conn
	now     nowSender        // nil if the connection has no SendNow
	rel     network.Releaser // nil if the connection has none
	queue   [][]byte         // requests received, not yet served, in order
	running int              // requests being served
	out     [][]byte         // answers waiting for room in the send window
	sending int              // answers handed to Send, not yet reported
	ended   bool             // closed or failed: nothing more is sent
}

// release hands a received frame back to the connection.
func (c *conn) release(frame []byte) {
	if c.rel != nil {
		c.rel.Release(frame)
	}
}

// NewServer returns a server for cfg.Storage; it serves nothing until
// Listen or ServeConn.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.Storage == nil:
		return nil, fmt.Errorf("%w: server: no storage", ErrConfig)
	case cfg.MaxInFlight < 0:
		return nil, fmt.Errorf("%w: server: MaxInFlight %d is negative", ErrConfig, cfg.MaxInFlight)
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	inline := cfg.Exec == nil
	if cfg.Exec == nil {
		cfg.Exec = func(fn func()) { go fn() }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		st: cfg.Storage, net: cfg.Network, log: cfg.Logger, exec: cfg.Exec, inline: inline, max: cfg.MaxInFlight,
		met:   newServerMetrics(cfg.Metrics, cfg.Name),
		conns: map[*conn]struct{}{}, idle: make(chan struct{}),
	}, nil
}

// Listen accepts connections at addr ("tcp://host:port", port 0 for any;
// "unix:///path") and serves each; it returns the address to dial. A
// server may listen at several addresses.
func (s *Server) Listen(addr string) (string, error) {
	if s.net == nil {
		return "", fmt.Errorf("%w: server: no network to listen on", ErrConfig)
	}
	l, err := s.net.Listen(addr, s.ServeConn)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return "", ErrServerClosed
	}
	s.lns = append(s.lns, l)
	s.mu.Unlock()
	return l.Addr(), nil
}

// ServeConn serves requests arriving on c until c ends or the server is
// shut down; then it closes c.
func (s *Server) ServeConn(c network.Conn) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.Close()
		return
	}
	sc := &conn{c: c}
	sc.now, _ = c.(nowSender)
	sc.rel, _ = c.(network.Releaser)
	s.conns[sc] = struct{}{}
	s.met.conns.Inc()
	s.mu.Unlock()
	// Receive may deliver at once (the simulator's does): not under the
	// lock.
	c.Receive(func(frame []byte, err error) { s.onFrame(sc, frame, err) })
}

// Shutdown stops the server: it stops accepting, answers the requests
// received but not yet started block.StatusShutdown (and those arriving
// meanwhile), waits until the requests being served have been applied
// and every answer written, or until ctx ends, then closes every
// connection. It returns ctx's error if ctx ended first: requests may
// then still be under way (close the Storage only after they end, or
// accept that they fail). Later calls wait again and return at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		lns := s.lns
		s.lns = nil
		s.later(func() {
			for _, l := range lns {
				l.Close()
			}
		})
		for c := range s.conns {
			q := c.queue
			c.queue = nil
			for _, f := range q {
				s.refuse(c, f)
			}
		}
		s.checkIdle()
	}
	idle := s.idle
	s.unlock()
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.mu.Lock()
	for c := range s.conns {
		s.end(c, ErrServerClosed)
	}
	s.unlock()
	return err
}

// Close shuts the server down without waiting: as Shutdown with a context
// already ended.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Shutdown(ctx)
	return nil
}

// unlock releases the lock, then runs what was left for later.
func (s *Server) unlock() {
	after := s.after
	s.after = nil
	s.mu.Unlock()
	for _, f := range after {
		f()
	}
}

// later runs f once the lock is released. Called with s.mu held.
func (s *Server) later(f func()) { s.after = append(s.after, f) }

// onFrame is the receive callback of c.
func (s *Server) onFrame(c *conn, frame []byte, err error) {
	s.mu.Lock()
	defer s.unlock()
	switch {
	case err != nil:
		s.end(c, err)
	case c.ended:
		c.release(frame)
	case s.closing:
		s.refuse(c, frame)
	case c.running < s.max:
		s.start(c, frame)
	default:
		c.queue = append(c.queue, frame)
	}
}

// start serves frame, a request of c, through Exec. Called with s.mu
// held.
func (s *Server) start(c *conn, frame []byte) {
	c.running++
	s.running++
	if s.inline && cached(frame) {
		s.later(func() { s.serve(c, frame) })
		return
	}
	s.later(func() { s.exec(func() { s.serve(c, frame) }) })
}

// cached reports whether frame is a write that does not ask to be
// durable: its apply only reaches the page cache.
func cached(frame []byte) bool {
	return len(frame) >= 4 && frame[0] == block.Version && block.Op(frame[1]) == block.OpWrite &&
		binary.BigEndian.Uint16(frame[2:])&block.FlagFUA == 0
}

// serve serves one request of c and sends its answer; it runs in Exec.
func (s *Server) serve(c *conn, frame []byte) {
	var t guard.Ticket
	ans, op, st := s.handle(frame, &t)
	c.release(frame)
	s.met.count(op, st)
	s.mu.Lock()
	defer s.unlock()
	c.running--
	s.running--
	if !c.ended {
		s.send(c, ans)
		if !s.closing && len(c.queue) > 0 {
			next := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			s.start(c, next)
		}
	}
	s.checkIdle()
}

// handle applies one frame and returns the encoded answer (in a buffer of
// s.bufs), the request's operation (0 if the frame is not a request) and
// the answer's status. t is the request's ticket, idle.
func (s *Server) handle(frame []byte, t *guard.Ticket) ([]byte, block.Op, block.Status) {
	r, err := block.Parse(frame)
	switch {
	case err != nil:
		return answer(&s.bufs, block.StatusInvalid, headerID(frame), err.Error()), 0, block.StatusInvalid
	case r.Op == block.OpRead && uint64(r.Length) > maxRead:
		return answer(&s.bufs, block.StatusInvalid, r.ID, fmt.Sprintf("read of %d bytes: its answer would exceed a connection's largest frame; read at most %d", r.Length, maxRead)), r.Op, block.StatusInvalid
	}
	a, st := s.st.serve(r, t, &s.bufs)
	return a, r.Op, st
}

// refuse answers frame, a request of c not served, StatusShutdown. Called
// with s.mu held.
func (s *Server) refuse(c *conn, frame []byte) {
	var op block.Op
	id := headerID(frame)
	if r, err := block.Parse(frame); err == nil {
		op, id = r.Op, r.ID
	}
	c.release(frame)
	s.met.count(op, block.StatusShutdown)
	s.send(c, answer(&s.bufs, block.StatusShutdown, id, "the storage is shutting down"))
}

// send queues an answer on c. Called with s.mu held.
func (s *Server) send(c *conn, a []byte) {
	c.out = append(c.out, a)
	s.pump(c)
}

// pump hands c's waiting answers to Send while its send window has
// room: the server counts what it handed over and not yet heard of, so
// the connection never refuses a frame for a full window (ErrBusy) — if
// it does anyway, the answer waits again. Called with s.mu held.
func (s *Server) pump(c *conn) {
	for !c.ended && c.sending < network.SendWindow && len(c.out) > 0 {
		a := c.out[0]
		c.out[0] = nil
		c.out = c.out[1:]
		c.sending++
		s.later(func() { s.transmit(c, a) })
	}
}

// transmit hands the answer a to c's connection; once it was written,
// its buffer is kept for a later answer. Called without the lock.
func (s *Server) transmit(c *conn, a []byte) {
	done := func(err error) { s.sent(c, a, err) }
	if c.now == nil {
		c.c.Send(a, done)
		return
	}
	if c.now.SendNow(a, done) {
		// Written at once: no callback follows.
		s.bufs.Put(a)
		s.mu.Lock()
		c.sending--
		s.pump(c)
		s.checkIdle()
		s.unlock()
	}
}

// sent is the completion of an answer's Send.
func (s *Server) sent(c *conn, a []byte, err error) {
	s.mu.Lock()
	defer s.unlock()
	c.sending--
	switch {
	case err == nil || c.ended:
		s.bufs.Put(a)
	case errors.Is(err, network.ErrBusy):
		c.out = append(c.out, a)
	default:
		s.bufs.Put(a)
		s.end(c, err)
	}
	s.pump(c)
	s.checkIdle()
}

// nowSender is a connection that can write a frame at once: SendNow is
// Send, except that it returns true, and calls no callback, when the frame
// was written before it returned (network.OS's connections have it).
type nowSender interface {
	SendNow(frame []byte, done func(error)) bool
}

// end ends c: it failed, its peer closed it, or the server stops. Its
// waiting requests are dropped (released, not served: nobody would hear
// their answers); those being served finish, their answers dropped.
// Called with s.mu held.
func (s *Server) end(c *conn, err error) {
	if c.ended {
		return
	}
	c.ended = true
	for _, f := range c.queue {
		c.release(f)
	}
	for _, a := range c.out {
		s.bufs.Put(a)
	}
	dropped := len(c.queue) + len(c.out)
	c.queue, c.out = nil, nil
	delete(s.conns, c)
	s.met.conns.Dec()
	switch {
	case errors.Is(err, ErrServerClosed):
	case errors.Is(err, io.EOF) && dropped == 0:
		s.log.Debug("connection closed by the peer", "remote", c.c.Remote())
	default:
		s.log.Info("connection ended", "remote", c.c.Remote(), "err", err, "dropped", dropped, "running", c.running)
	}
	cc := c.c
	s.later(func() { cc.Close() })
	s.checkIdle()
}

// checkIdle closes s.idle once the server is closing, nothing is being
// served and every answer of an open connection was written. Called with
// s.mu held.
func (s *Server) checkIdle() {
	if !s.closing || s.isIdle || s.running > 0 {
		return
	}
	for c := range s.conns {
		if len(c.out) > 0 || c.sending > 0 {
			return
		}
	}
	s.isIdle = true
	close(s.idle)
}
