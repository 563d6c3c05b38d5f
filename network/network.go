// Package network is how a driver reaches other domains: listening for and
// dialing connections that carry frames, behind a small interface with two
// implementations — the operating system's (OS: TCP and unix sockets) and
// the deterministic simulator's (package sim). Channels (DESIGN §7) are
// built on it, so that the channel driver, like the store and clock
// drivers, runs unchanged under the simulator.
//
// Like store.Store, the interface is asynchronous: calls return at once and
// report through callbacks, which the caller serialises under its own lock.
// A connection carries frames (byte slices up to MaxFrame) in order; Send
// reports when a frame has been handed to the connection, and Receive
// delivers the next frame only after the previous callback returned, so a
// slow receiver slows its sender and nothing queues without bound.
package network

import (
	"errors"
	"time"
)

// Network listens and dials.
type Network interface {
	// Listen accepts connections at addr ("tcp://host:port", port 0 for
	// any; "unix:///path"), calling accept for each, until the listener is
	// closed.
	Listen(addr string, accept func(Conn)) (Listener, error)
	// Dial connects to addr within timeout and calls done with the
	// connection or an error wrapping ErrUnreachable.
	Dial(addr string, timeout time.Duration, done func(Conn, error))
}

// Listener is a listening address.
type Listener interface {
	// Addr is the address to dial, in the form Listen takes.
	Addr() string
	// Close stops accepting; connections already accepted stay open.
	Close() error
}

// Conn is a connection that carries frames in order, both ways.
type Conn interface {
	// Send writes frame; done (if not nil) is called once it was written
	// (nil) or the connection failed. Frames are sent in the order of the
	// calls. At most SendWindow frames may wait to be written: one more
	// fails with ErrBusy (wait for a done first — that is the sender's
	// backpressure). A frame over MaxFrame fails with ErrFrameTooLarge.
	// Send never blocks; done never runs within it.
	Send(frame []byte, done func(error))
	// Receive starts delivering frames to fn, one at a time, in order: the
	// next is read only after fn returned. A failed or closed connection
	// ends with one call with a nil frame and the error (io.EOF after an
	// orderly close by the peer). A frame belongs to the receiver, also
	// after fn returned: the connection never uses it again, unless the
	// receiver hands it back through Releaser.
	Receive(fn func(frame []byte, err error))
	// Close closes the connection at once; frames in flight are lost.
	Close() error
	// Remote names the peer's address, for logs.
	Remote() string
}

// Releaser is a Conn whose received frames may be handed back once the
// receiver is done with them, for the connection to read later frames
// into. Release is optional: a frame never released is garbage collected.
// A released frame must not be used again, and must be released at most once.
type Releaser interface {
	// Release hands back a frame Receive delivered. Frames the
	// connection did not take from its pool are ignored. Safe for
	// concurrent use, also after Close.
	Release(frame []byte)
}

// MaxFrame is the largest frame a connection carries (16 MiB), and
// SendWindow the most frames a connection holds waiting to be written.
const (
	MaxFrame   = 16 << 20
	SendWindow = 64
)

// Errors, for errors.Is.
var (
	// ErrUnreachable: a dial failed or timed out.
	ErrUnreachable = errors.New("idc: network: unreachable")
	// ErrClosed: the connection was closed.
	ErrClosed = errors.New("idc: network: connection closed")
	// ErrFrameTooLarge: a frame exceeds MaxFrame.
	ErrFrameTooLarge = errors.New("idc: network: frame too large")
	// ErrBusy: SendWindow frames already wait to be written.
	ErrBusy = errors.New("idc: network: send window full")
	// ErrAddress: an address Listen or Dial cannot use.
	ErrAddress = errors.New("idc: network: bad address")
)
