package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"strings"
	"sync"
	"time"
)

// Export is one named export of a Server.
type Export struct {
	// Name is the export name clients ask for. The first export of a
	// Config is also the default export, the one a client gets when it
	// asks for the empty name.
	Name string
	// Description is an optional text for humans, sent in NBD_OPT_LIST
	// and NBD_INFO_DESCRIPTION replies.
	Description string
	// Backend stores the export's data.
	Backend Backend
}

// Config configures a Server. Zero fields take the defaults documented on
// each field; NewServer rejects invalid values.
type Config struct {
	// Exports lists the exports; at least one. Names are unique and at
	// most 4096 bytes, without NUL bytes.
	Exports []Export

	// MinBlockSize is the smallest length and alignment of a request:
	// a power of two from 1 to 65536; the default is 1. Requests not
	// aligned to it fail with NBD_EINVAL. Export sizes should be a
	// multiple of it.
	MinBlockSize uint32
	// PreferredBlockSize is the block size for efficient I/O that the
	// server advertises: a power of two, at least 512 and at least
	// MinBlockSize; the default is 4096.
	PreferredBlockSize uint32
	// MaxRequestSize is the largest length of a READ or WRITE request, and
	// the maximum block size the server advertises: a multiple of
	// MinBlockSize, at least PreferredBlockSize and at most 32 MiB; the
	// default is 32 MiB. A longer READ fails with NBD_EINVAL; for a longer
	// WRITE, see Server.
	MaxRequestSize uint32
	// MaxInFlight bounds the requests one connection runs at once, from 1
	// to 1024; the default is 16. When it is reached the server stops
	// reading from that connection until a request completes. Memory per
	// connection is bounded by about MaxInFlight × MaxRequestSize.
	MaxInFlight int
	// HandshakeTimeout bounds the handshake phase of a connection; the
	// default is 30 seconds.
	HandshakeTimeout time.Duration
	// Logger receives the server's logs; the default is slog.Default().
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultMinBlockSize       = 1
	DefaultPreferredBlockSize = 4096
	DefaultMaxRequestSize     = 32 << 20
	DefaultMaxInFlight        = 16
	DefaultHandshakeTimeout   = 30 * time.Second
)

// withDefaults returns c with its defaults filled in, or an error if a
// field is invalid.
func (c Config) withDefaults() (Config, error) {
	if len(c.Exports) == 0 {
		return c, errors.New("nbd: config has no exports")
	}
	seen := map[string]bool{}
	for i, e := range c.Exports {
		switch {
		case e.Backend == nil:
			return c, fmt.Errorf("nbd: export %q has no backend", e.Name)
		case len(e.Name) > maxStringLen || strings.IndexByte(e.Name, 0) >= 0:
			return c, fmt.Errorf("nbd: export %d: name longer than %d bytes or with a NUL byte", i, maxStringLen)
		case len(e.Description) > maxStringLen || strings.IndexByte(e.Description, 0) >= 0:
			return c, fmt.Errorf("nbd: export %q: description longer than %d bytes or with a NUL byte", e.Name, maxStringLen)
		case seen[e.Name]:
			return c, fmt.Errorf("nbd: export name %q listed twice", e.Name)
		}
		seen[e.Name] = true
		if f := e.Backend.Features(); f.FUA && !f.Flush {
			return c, fmt.Errorf("nbd: export %q: backend offers FUA without Flush", e.Name)
		}
	}
	if c.MinBlockSize == 0 {
		c.MinBlockSize = DefaultMinBlockSize
	}
	if c.PreferredBlockSize == 0 {
		c.PreferredBlockSize = DefaultPreferredBlockSize
	}
	if c.MaxRequestSize == 0 {
		c.MaxRequestSize = DefaultMaxRequestSize
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case bits.OnesCount32(c.MinBlockSize) != 1 || c.MinBlockSize > 1<<16:
		return c, fmt.Errorf("nbd: MinBlockSize %d is not a power of two up to 65536", c.MinBlockSize)
	case bits.OnesCount32(c.PreferredBlockSize) != 1 || c.PreferredBlockSize < max(512, c.MinBlockSize):
		return c, fmt.Errorf("nbd: PreferredBlockSize %d is not a power of two at least 512 and MinBlockSize", c.PreferredBlockSize)
	case c.MaxRequestSize%c.MinBlockSize != 0 || c.MaxRequestSize < c.PreferredBlockSize || c.MaxRequestSize > dosWriteLen:
		return c, fmt.Errorf("nbd: MaxRequestSize %d is not a multiple of MinBlockSize between PreferredBlockSize and 32 MiB", c.MaxRequestSize)
	case c.MaxInFlight < 1 || c.MaxInFlight > 1024:
		return c, fmt.Errorf("nbd: MaxInFlight %d is not between 1 and 1024", c.MaxInFlight)
	case c.HandshakeTimeout < 0:
		return c, fmt.Errorf("nbd: negative HandshakeTimeout %v", c.HandshakeTimeout)
	}
	return c, nil
}

// AsyncBackend is a Backend that can start reads and writes and report
// their completion later, from any goroutine, so that the server holds
// no goroutine per request while it runs: the connection's reading
// goroutine starts each read and write, and the reply is written from the
// completion. The server uses it, for reads and writes, when an export's
// Backend has it; flushes, trims and zeroes still go through Backend's
// methods.
type AsyncBackend interface {
	Backend
	// StartReadAt starts filling p with the bytes at off, as ReadAt does,
	// and returns at once, without blocking. done is called once — from
	// any goroutine, possibly within StartReadAt — with nil once p holds
	// the bytes, or with the error, as ReadAt would return it. p is the
	// backend's until done is called. Once ctx ends, done must be called
	// promptly.
	StartReadAt(ctx context.Context, p []byte, off uint64, done func(error))
	// StartWriteAt starts writing p at off, as WriteAt does (fua as
	// WriteAt's), and returns at once, without blocking; done as
	// StartReadAt's. p is the backend's until done is called.
	StartWriteAt(ctx context.Context, p []byte, off uint64, fua bool, done func(error))
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Server serves exports to NBD clients. Create it with NewServer, run
// Serve on one or more listeners, and stop it with Shutdown.
//
// A WRITE request longer than MaxRequestSize fails with NBD_EINVAL; its
// payload is read and discarded in small pieces, so the connection stays
// usable. A WRITE longer than 32 MiB, which the protocol allows a server
// to treat as a denial of service, ends the connection instead.
//
// The buffers a backend's ReadAt and WriteAt are given are reused for
// later requests once the call returned: a backend must not keep them,
// as an io.ReaderAt or io.WriterAt must not.
type Server struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	shutting  bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // one per connection
}

// NewServer returns a Server for cfg, with cfg's defaults filled in.
func NewServer(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}, nil
}

// Config returns the server's configuration, defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// Serve accepts connections on l (a unix or TCP listener) and serves each
// in its own goroutines. It closes l when it returns. It returns
// ErrServerClosed after Shutdown (which goes on draining the connections);
// when ctx is cancelled it closes l and every connection it accepted (a
// hard disconnect), waits for them to end, and returns ctx.Err();
// otherwise it returns the listener's error, leaving the connections
// running.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var mine sync.WaitGroup // connections accepted here
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				mine.Wait()
				return ctx.Err()
			}
			if s.isShutting() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.mu.Lock()
		if s.shutting {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		c := newConn(ctx, s, nc)
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		mine.Add(1)
		s.mu.Unlock()
		go func() {
			defer mine.Done()
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// ServeConn serves one connection that the caller has accepted (or a
// net.Pipe end) and returns when it ends. It closes nc.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		nc.Close()
		return
	}
	c := newConn(ctx, s, nc)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	c.serve()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) isShutting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutting
}

// Shutdown stops the server: it closes the listeners, so Serve returns
// ErrServerClosed; connections still in the handshake are closed, later
// options getting NBD_REP_ERR_SHUTDOWN; on connections in transmission,
// requests already running finish and are answered, requests received
// from now on are answered NBD_ESHUTDOWN without reaching the backend,
// and once none is running the connection is closed. Shutdown returns
// when every connection has ended, or when ctx is done: then it cancels
// the backend calls still running, closes every connection and returns
// ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.beginShutdown()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}
