package network

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// OS is the Network of the operating system: TCP and unix sockets, each
// frame written as a 4-byte big-endian length and its bytes.
type OS struct{}

// split parses "tcp://host:port" or "unix:///path" into net's network and
// address.
func split(addr string) (string, string, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return "", "", fmt.Errorf("%w %q: %v", ErrAddress, addr, err)
	}
	switch u.Scheme {
	case "tcp":
		if u.Host == "" {
			return "", "", fmt.Errorf("%w %q: want tcp://host:port", ErrAddress, addr)
		}
		return "tcp", u.Host, nil
	case "unix":
		if u.Path == "" {
			return "", "", fmt.Errorf("%w %q: want unix:///path", ErrAddress, addr)
		}
		return "unix", u.Path, nil
	}
	return "", "", fmt.Errorf("%w %q: scheme %q (want tcp or unix)", ErrAddress, addr, u.Scheme)
}

type osListener struct {
	ln   net.Listener
	addr string
}

// Listen implements Network.
func (OS) Listen(addr string, accept func(Conn)) (Listener, error) {
	network, a, err := split(addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen(network, a)
	if err != nil {
		return nil, fmt.Errorf("%w: listen %s: %w", ErrAddress, addr, err)
	}
	l := &osListener{ln: ln, addr: network + "://" + ln.Addr().String()}
	if network == "unix" {
		l.addr = "unix://" + a
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			accept(newOSConn(c))
		}
	}()
	return l, nil
}

func (l *osListener) Addr() string { return l.addr }
func (l *osListener) Close() error { return l.ln.Close() }

// Dial implements Network.
func (OS) Dial(addr string, timeout time.Duration, done func(Conn, error)) {
	network, a, err := split(addr)
	if err != nil {
		go done(nil, err)
		return
	}
	go func() {
		c, err := net.DialTimeout(network, a, timeout)
		if err != nil {
			done(nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, addr, err))
			return
		}
		done(newOSConn(c), nil)
	}()
}

// osConn writes a frame directly from Send when nothing waits to be
// written and the socket takes the whole frame at once (one non-blocking
// write: Send never blocks); otherwise it queues the frame for its writer
// goroutine. The writer goroutine also runs the done callbacks of frames
// written directly, since done never runs within Send. Frames are read in
// another goroutine; small ones are carved out of a shared block, so that
// a stream of them allocates once per block rather than once per frame,
// and larger ones are read into buffers from the connection's pool, which
// the receiver may hand back (Releaser), so that a stream of them it
// releases allocates nothing.
type osConn struct {
	c      net.Conn
	raw    syscall.RawConn // nil: no direct writes
	once   sync.Once
	closed chan struct{}
	recv   sync.Once
	wake   chan struct{} // the writer has work (capacity 1)
	// corked: SendNow wrote a frame at once and no frame was received
	// since; SendNow then leaves frames to the writer goroutine.
	corked atomic.Bool

	mu       sync.Mutex
	isClosed bool
	writing  bool       // the writer goroutine writes a batch
	batch    int        // frames of that batch
	queue    []outFrame // frames waiting for the writer, in order
	dones    []doneCall // callbacks of frames written directly, in order
	hdr      [4]byte    // the length of a direct write
	iov      [2][]byte  // a direct write: hdr and the frame
	wn       int        // what the direct write returned: bytes,
	werr     error      // and error
	writeFn  func(uintptr) bool

	pool framePool // buffers for frames above smallFrame
}

type outFrame struct {
	b    []byte
	done func(error)
	hdr  [4]byte
	off  int // bytes of hdr and b already written (a direct write cut short)
}

type doneCall struct {
	done func(error)
	err  error
}

const (
	// readBuffer is the size of a connection's read buffer, and
	// largeReadBuffer its size once a frame larger than readBuffer came:
	// then one read takes a whole large frame, where a small buffer takes
	// two or three (a 64 KiB frame over TCP arrives in pieces).
	readBuffer      = 32 << 10
	largeReadBuffer = 256 << 10
	// blockSize is the size of the blocks small frames are read into, and
	// smallFrame the largest such frame: a frame the application keeps
	// keeps at most blockSize bytes alive.
	blockSize  = 8 << 10
	smallFrame = 1 << 10
	// Frames above smallFrame are read into buffers of a size class: the
	// powers of two from minClass to MaxFrame (classes of them). A buffer
	// of a class takes any frame of that class.
	minClass = 2 << 10
	classes  = 14
	// maxFree and maxFreeBytes bound the released buffers a connection
	// keeps for reuse; a buffer released beyond them is left to the GC.
	maxFree      = 64
	maxFreeBytes = 8 << 20
)

// class is the size class of a frame of n bytes, smallFrame < n <= MaxFrame:
// the buffer it is read into has minClass<<class(n) bytes.
func class(n int) int { return max(bits.Len(uint(n-1))-bits.Len(minClass-1), 0) }

// framePool is a connection's free list of released buffers, by size
// class, the last released last. Its mutex is its own, apart from the
// sender's: Receive's goroutine takes from it and Release, from any
// goroutine, gives back. A buffer is on the list only from its release to
// the next get of its class, so nothing is read into a frame the receiver
// still has.
type framePool struct {
	mu     sync.Mutex
	closed bool
	free   [classes][][]byte // each of length 0 and capacity its class
	n      int               // buffers in free,
	bytes  int               // and their bytes
}

// get returns a buffer for a frame of n bytes, smallFrame < n <= MaxFrame:
// of length n and capacity its size class, a released one if there is one.
func (p *framePool) get(n int) []byte {
	k := class(n)
	p.mu.Lock()
	if f := p.free[k]; len(f) > 0 {
		b := f[len(f)-1]
		f[len(f)-1] = nil
		p.free[k] = f[:len(f)-1]
		p.n--
		p.bytes -= cap(b)
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, minClass<<k)
}

// put takes b back for reuse if its capacity is a size class, unless the
// connection is closed, b is already on the list (released again before
// it was reused), or its class alone fills the list (maxFree buffers or
// maxFreeBytes). When the list is full, b takes the place of a buffer of
// the other class that holds the most bytes.
func (p *framePool) put(b []byte) {
	c := cap(b)
	if c < minClass || c > MaxFrame || c&(c-1) != 0 {
		return // nil, a frame carved out of a block, or not a buffer of a class
	}
	k := class(c)
	b = b[:0]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || c > maxFreeBytes || len(p.free[k]) >= maxFree {
		return
	}
	for _, f := range p.free[k] {
		if &f[:1][0] == &b[:1][0] {
			return
		}
	}
	for p.n >= maxFree || p.bytes+c > maxFreeBytes {
		// Make room from the other class that holds the most, so that
		// what is kept follows the traffic: buffers of an earlier size do
		// not crowd out those of the frames arriving now.
		big := -1
		for i := range p.free {
			if i != k && len(p.free[i]) > 0 && (big < 0 || len(p.free[i])<<i > len(p.free[big])<<big) {
				big = i
			}
		}
		if big < 0 {
			return
		}
		f := p.free[big]
		p.bytes -= cap(f[len(f)-1])
		p.n--
		f[len(f)-1] = nil
		p.free[big] = f[:len(f)-1]
	}
	p.free[k] = append(p.free[k], b)
	p.n++
	p.bytes += c
}

// close empties the list and makes put ignore what it is given.
func (p *framePool) close() {
	p.mu.Lock()
	p.closed = true
	p.free = [classes][][]byte{}
	p.n, p.bytes = 0, 0
	p.mu.Unlock()
}

func newOSConn(c net.Conn) *osConn {
	oc := &osConn{c: c, closed: make(chan struct{}), wake: make(chan struct{}, 1)}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			oc.raw = raw
			oc.writeFn = func(fd uintptr) bool {
				oc.wn, oc.werr = unix.Writev(int(fd), oc.iov[:])
				return true // one attempt: never wait for the socket
			}
		}
	}
	go oc.writer()
	return oc
}

// signal wakes the writer goroutine.
func (c *osConn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeNow writes frame with one non-blocking write and returns how many
// bytes of its length and itself were written. Called with c.mu held.
func (c *osConn) writeNow(frame []byte) (int, error) {
	binary.BigEndian.PutUint32(c.hdr[:], uint32(len(frame)))
	c.iov[0], c.iov[1] = c.hdr[:], frame
	err := c.raw.Write(c.writeFn)
	c.iov[1] = nil
	n, werr := max(c.wn, 0), c.werr
	c.werr = nil
	if err != nil {
		return 0, err
	}
	if werr == unix.EAGAIN || werr == unix.EINTR {
		werr = nil
	}
	return n, werr
}

func (c *osConn) writer() {
	var (
		batch []outFrame
		dones []doneCall
		iovs  [][]byte
		bufs  net.Buffers // escapes (WriteTo): allocated once
	)
	for {
		select {
		case <-c.wake:
		case <-c.closed:
		}
		c.mu.Lock()
		dones, c.dones = c.dones, dones[:0]
		closed := c.isClosed
		if !closed {
			batch, c.queue = c.queue, batch[:0]
			c.batch = len(batch)
			c.writing = len(batch) > 0
		}
		c.mu.Unlock()
		for i, d := range dones {
			if d.done != nil {
				d.done(d.err)
			}
			dones[i] = doneCall{}
		}
		if closed {
			return
		}
		if len(batch) == 0 {
			continue
		}
		// One write for the whole batch (writev).
		bufs = iovs[:0]
		for i := range batch {
			f := &batch[i]
			binary.BigEndian.PutUint32(f.hdr[:], uint32(len(f.b)))
			switch {
			case f.off < len(f.hdr):
				bufs = append(bufs, f.hdr[f.off:], f.b)
			default:
				bufs = append(bufs, f.b[f.off-len(f.hdr):])
			}
		}
		iovs = bufs[:0]
		_, err := bufs.WriteTo(c.c)
		clear(iovs[:cap(iovs)])
		if err != nil {
			err = fmt.Errorf("%w: %w", ErrClosed, err)
			c.Close()
		}
		// The batch no longer waits (its callbacks may send again); a
		// frame written directly from now on is written after it and
		// its callback runs after the batch's.
		c.mu.Lock()
		c.batch = 0
		if len(c.queue) == 0 {
			c.writing = false
		} else {
			c.signal()
		}
		c.mu.Unlock()
		for i, f := range batch {
			if f.done != nil {
				f.done(err)
			}
			batch[i] = outFrame{}
		}
	}
}

// Send implements Conn.
func (c *osConn) Send(frame []byte, done func(error)) { c.send(frame, done, false) }

// SendNow is Send, except that a frame written at once is reported by
// returning true, and done is then not called: frame may be reused at
// once. The channel driver uses it, when a connection has it, to spare
// the writer goroutine a callback per frame.
//
// A frame is written at once if the connection is idle, the socket takes
// all of it in one non-blocking write, and a frame was received since the
// last frame SendNow wrote so: requests and their answers go out at once,
// while a stream in one direction goes through the writer goroutine,
// which writes what has gathered in one system call.
func (c *osConn) SendNow(frame []byte, done func(error)) bool { return c.send(frame, done, true) }

func (c *osConn) send(frame []byte, done func(error), now bool) bool {
	fail := func(err error) {
		if done != nil {
			go done(err)
		}
	}
	if len(frame) > MaxFrame {
		fail(fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(frame)))
		return false
	}
	c.mu.Lock()
	switch {
	case c.isClosed:
		c.mu.Unlock()
		fail(ErrClosed)
		return false
	case len(c.queue)+c.batch+len(c.dones) >= SendWindow:
		c.mu.Unlock()
		fail(ErrBusy)
		return false
	}
	off := 0
	// Written directly only if the connection is idle: while the writer
	// has work (frames, or callbacks of frames written directly), frames
	// join it, so that a burst is written in few system calls.
	if !c.writing && len(c.queue) == 0 && len(c.dones) == 0 && c.raw != nil && !(now && c.corked.Load()) {
		n, err := c.writeNow(frame)
		switch {
		case err != nil:
			// The connection failed: done learns it from the writer.
			c.dones = append(c.dones, doneCall{done, fmt.Errorf("%w: %w", ErrClosed, err)})
			c.mu.Unlock()
			c.Close()
			return false
		case n == 4+len(frame) && now:
			c.corked.Store(true)
			c.mu.Unlock()
			return true
		case n == 4+len(frame):
			if done != nil {
				c.dones = append(c.dones, doneCall{done: done})
				c.signal()
			}
			c.mu.Unlock()
			return false
		}
		off = n // the writer writes the rest
	}
	c.queue = append(c.queue, outFrame{b: frame, done: done, off: off})
	c.signal()
	c.mu.Unlock()
	return false
}

// Receive implements Conn. A frame of at most smallFrame bytes is carved
// out of a shared block (capacity its length); a larger one is read into
// a buffer of its size class (its capacity), from the connection's pool
// if one was released. A frame belongs to fn's caller until it is
// released: nothing is read into a buffer that was not. The connection
// reads through a buffer of readBuffer bytes, and of largeReadBuffer once
// a frame larger than readBuffer came.
func (c *osConn) Receive(fn func([]byte, error)) {
	c.recv.Do(func() {
		go func() {
			r := bufio.NewReaderSize(c.c, readBuffer)
			var (
				hdr   [4]byte
				block []byte
				large bool // r is of largeReadBuffer
			)
			for {
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					fn(nil, c.endErr(err))
					return
				}
				n := int(binary.BigEndian.Uint32(hdr[:]))
				if n > MaxFrame {
					c.Close()
					fn(nil, fmt.Errorf("%w: the peer sent %d bytes", ErrFrameTooLarge, n))
					return
				}
				var b []byte
				if n <= smallFrame {
					if len(block) < n {
						block = make([]byte, blockSize)
					}
					b, block = block[:n:n], block[n:]
				} else {
					b = c.pool.get(n)
				}
				if _, err := io.ReadFull(r, b); err != nil {
					fn(nil, c.endErr(err))
					return
				}
				if c.corked.Load() {
					c.corked.Store(false)
				}
				if n > readBuffer && !large && r.Buffered() == 0 {
					// Large frames come: a larger buffer from now on
					// (nothing is buffered in this one to carry over).
					r, large = bufio.NewReaderSize(c.c, largeReadBuffer), true
				}
				fn(b, nil)
			}
		}()
	})
}

func (c *osConn) endErr(err error) error {
	select {
	case <-c.closed:
		return ErrClosed
	default:
	}
	if errors.Is(err, io.EOF) {
		return io.EOF
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}

// Close implements Conn.
func (c *osConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.isClosed = true
		c.mu.Unlock()
		close(c.closed)
		c.c.Close()
		c.pool.close()
	})
	return nil
}

// Release implements Releaser. The connection knows its buffers by their
// capacity, a size class (a power of two from 2 KiB to MaxFrame): a
// frame of another capacity, such as a small frame carved out of a block,
// is ignored, as is a buffer released again before it was reused, and
// anything released after Close. A slice that no connection's Receive
// delivered must not be released: one of a class's capacity would be
// taken.
func (c *osConn) Release(frame []byte) { c.pool.put(frame) }

var _ Releaser = (*osConn)(nil)

func (c *osConn) Remote() string { return c.c.RemoteAddr().String() }
