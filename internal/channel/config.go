// Package channel is the channel driver: the data path between the members
// of a group (DESIGN §7). A Mesh belongs to one membership; in each
// connected epoch it keeps one connection to every peer of the epoch, opened
// with a handshake naming the group, the epoch and both incarnations, and
// closes them all when the epoch ends. Every frame carries its epoch
// (package wire), and a frame is delivered only while the receiver is
// connected in that epoch: anything else is dropped and counted (G2).
//
// Messages and calls are operations of their epoch on both sides: a call
// is one at the caller until its answer or the epoch's end, a handler one
// at the receiver until it replies, so the quiesce barrier (G3) covers work
// in flight in other domains. A ping is an operation at the caller only:
// the peer's driver answers it at once, with no handler and nothing to
// quiesce, so it measures the channel itself. Heartbeats detect a silent
// peer; a silent, reset or misbehaving peer is reported to the membership
// as a fault.
//
// Like the member driver, the Mesh is event-driven: it reaches the network
// and time only through network.Network and clock.Clock, runs their
// callbacks under one lock, and never blocks, so the deterministic
// simulator runs it unchanged. Package idc wraps it in a blocking API.
package channel

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Host is what a Mesh needs of its membership.
type Host interface {
	// Begin starts an operation of epoch e. It fails (wrapping
	// proto.ErrEpochEnded or proto.ErrFenced) unless e is the connected
	// epoch and the lease is certainly valid by the local clock: it is the
	// gate every delivery passes.
	Begin(e uint64) error
	// End ends an operation begun with Begin.
	End(e uint64)
	// ReportFault reports that peer was lost in epoch e.
	ReportFault(e uint64, peer string)
	// Context returns the context of epoch e: it ends when e is
	// disconnected (already ended if e is not the last connected epoch).
	Context(e uint64) context.Context
}

// Config configures a Mesh. Every field is required unless its comment
// gives a default.
type Config struct {
	Group, ID   string
	Incarnation uint64
	Network     network.Network
	Clock       clock.Clock
	Logger      *slog.Logger
	// Listen is the address to accept channels at ("tcp://host:port",
	// "unix:///path").
	Listen string
	// Advertise is the address peers dial, if not the listener's (a
	// listener on 0.0.0.0, say). Optional.
	Advertise string
	// Heartbeat: every Heartbeat/2 (a tick) a channel that has sent
	// nothing since the last tick sends a heartbeat, and one whose peer
	// has been silent for more than Heartbeat·Misses (counted from the
	// tick after it was last heard, less Heartbeat/2) reports it. A silent
	// peer is so reported within Heartbeat·(Misses+½), one tick later if
	// this process was starved (a tick more than Heartbeat/2 late
	// suspects nobody: what came meanwhile may not have been read).
	Heartbeat time.Duration
	Misses    int
	// Window is how many messages and requests a channel accepts from its
	// peer before it has consumed them (credit-based flow control: a slow
	// receiver slows its sender). At most Window·MaxMessage bytes per peer
	// wait at a receiver.
	Window int
	// MaxMessage is the largest message, request or response, in bytes.
	MaxMessage int
	// DialTimeout bounds a dial.
	DialTimeout time.Duration
	// HandshakeTimeout is how long an acceptor holds a handshake for an
	// epoch it has not connected yet before refusing it (the dialer then
	// tries again), and how long a connection may stay silent before its
	// handshake.
	HandshakeTimeout time.Duration
	// SetupTimeout is how long a channel of a connected epoch may take to
	// open before the peer is reported.
	SetupTimeout time.Duration
	// Handler serves requests (nil: every request is answered with an
	// error). It is called without locks; it must call Request.Reply
	// exactly once, from any goroutine, at any later time.
	Handler func(*Request)
	// OnMessage, if set, is called (without locks) when a message of epoch
	// e is waiting to be received.
	OnMessage func(e uint64)
	// Metrics, if set, registers the mesh's metrics (idc_channel_*).
	Metrics prometheus.Registerer
}

// Validate checks c.
func (c Config) Validate() error {
	switch {
	case c.Network == nil || c.Clock == nil || c.Logger == nil:
		return fmt.Errorf("%w: channels need a network, a clock and a logger", proto.ErrConfig)
	case c.Listen == "":
		return fmt.Errorf("%w: channels need an address to listen at", proto.ErrConfig)
	case c.Heartbeat <= 0 || c.Misses < 1:
		return fmt.Errorf("%w: heartbeat %v must be positive and misses %d at least 1", proto.ErrConfig, c.Heartbeat, c.Misses)
	case c.Window < 1 || c.Window > 1<<16:
		return fmt.Errorf("%w: channel window %d must be in 1..65536", proto.ErrConfig, c.Window)
	case c.MaxMessage < 1 || c.MaxMessage > network.MaxFrame-wire.HeaderSize:
		return fmt.Errorf("%w: max message %d must be in 1..%d", proto.ErrConfig, c.MaxMessage, network.MaxFrame-wire.HeaderSize)
	case c.DialTimeout <= 0 || c.HandshakeTimeout <= 0 || c.SetupTimeout <= 0:
		return fmt.Errorf("%w: dial %v, handshake %v and setup %v timeouts must be positive", proto.ErrConfig, c.DialTimeout, c.HandshakeTimeout, c.SetupTimeout)
	}
	if err := CheckAddr(c.Listen); err != nil {
		return err
	}
	if c.Advertise != "" {
		return CheckAddr(c.Advertise)
	}
	return nil
}

// CheckAddr checks that a channel address is printable ASCII without
// quotes or backslashes (it is kept in the epoch record).
func CheckAddr(addr string) error {
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return fmt.Errorf("%w: channel address %q: use printable ASCII without spaces, quotes or backslashes", proto.ErrConfig, addr)
		}
	}
	return nil
}
