package network

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"
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

// osConn writes frames from one goroutine, in order, and reads them in
// another.
type osConn struct {
	c      net.Conn
	out    chan outFrame
	once   sync.Once
	closed chan struct{}
	recv   sync.Once
}

type outFrame struct {
	b    []byte
	done func(error)
}

func newOSConn(c net.Conn) *osConn {
	oc := &osConn{c: c, out: make(chan outFrame, SendWindow), closed: make(chan struct{})}
	go oc.writer()
	return oc
}

func (c *osConn) writer() {
	w := bufio.NewWriter(c.c)
	var hdr [4]byte
	for {
		var f outFrame
		select {
		case f = <-c.out:
		case <-c.closed:
			return
		}
		binary.BigEndian.PutUint32(hdr[:], uint32(len(f.b)))
		_, err := w.Write(hdr[:])
		if err == nil {
			_, err = w.Write(f.b)
		}
		if err == nil && len(c.out) == 0 {
			err = w.Flush()
		}
		if f.done != nil {
			if err != nil {
				err = fmt.Errorf("%w: %w", ErrClosed, err)
			}
			f.done(err)
		}
		if err != nil {
			c.Close()
			return
		}
	}
}

// Send implements Conn.
func (c *osConn) Send(frame []byte, done func(error)) {
	fail := func(err error) {
		if done != nil {
			go done(err)
		}
	}
	if len(frame) > MaxFrame {
		fail(fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(frame)))
		return
	}
	select {
	case <-c.closed:
		fail(ErrClosed)
		return
	default:
	}
	select {
	case c.out <- outFrame{frame, done}:
	default:
		fail(ErrBusy)
	}
}

// Receive implements Conn.
func (c *osConn) Receive(fn func([]byte, error)) {
	c.recv.Do(func() {
		go func() {
			r := bufio.NewReader(c.c)
			var hdr [4]byte
			for {
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					fn(nil, c.endErr(err))
					return
				}
				n := binary.BigEndian.Uint32(hdr[:])
				if n > MaxFrame {
					c.Close()
					fn(nil, fmt.Errorf("%w: the peer sent %d bytes", ErrFrameTooLarge, n))
					return
				}
				b := make([]byte, n)
				if _, err := io.ReadFull(r, b); err != nil {
					fn(nil, c.endErr(err))
					return
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

func (c *osConn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.c.Close()
	})
	return nil
}

func (c *osConn) Remote() string { return c.c.RemoteAddr().String() }
