// Package channel holds the decisions of the channel protocol (DESIGN §7)
// as pure code: who may open a channel (the handshake's admission, on both
// sides), what becomes of each frame on an open channel (the epoch and
// sequence checks of G2, the window), the credits that make a slow
// receiver slow its sender, and when a silent peer is suspected. It has no
// goroutines, clocks or I/O: the channel driver (internal/channel) tells
// it what happened — a Hello, a frame, a tick at a given time — and does
// what it decides, and the interaction scripts in testdata/*.txt drive it
// directly, in the manner of etcd's raft library.
package channel

import (
	"errors"
	"fmt"
	"time"

	"github.com/idc-dev/idc/wire"
)

// Local is where the accepting side of a handshake stands.
type Local struct {
	// Group, ID and Incarnation name the acceptor.
	Group       string
	ID          string
	Incarnation uint64
	// Epoch is the epoch of its channels: the connected one if Connected,
	// else the last that ended (0: none yet).
	Epoch     uint64
	Connected bool
	// Stopping: it is leaving the group for good.
	Stopping bool
}

// Verdict is what becomes of an accepted connection's Hello.
type Verdict uint8

const (
	// Admit: the Hello names this side's connected epoch; Bind decides
	// whether the dialer may have the channel.
	Admit Verdict = iota + 1
	// Hold: the Hello names an epoch not connected here yet; hold it until
	// that epoch connects (then Bind) or the handshake timeout passes (then
	// refuse it with wire.RefuseBehind, so that the dialer tries again).
	Hold
	// Bind: open the channel to the dialer and answer Welcome.
	Bind
	// Refuse: answer Refuse with Code and Reason, then close.
	Refuse
	// Reject: the Hello broke the protocol; close, telling why (Reason).
	Reject
)

var verdictNames = [...]string{Admit: "admit", Hold: "hold", Bind: "bind", Refuse: "refuse", Reject: "reject"}

func (v Verdict) String() string {
	if v >= Admit && v <= Reject {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Admission is the decision on a Hello.
type Admission struct {
	Verdict Verdict
	// Code is the refusal's code (Refuse only).
	Code wire.RefuseCode
	// Reason says why, for the peer and the log (Refuse and Reject).
	Reason string
}

func refuse(code wire.RefuseCode, format string, args ...any) Admission {
	return Admission{Verdict: Refuse, Code: code, Reason: fmt.Sprintf(format, args...)}
}

// Hello decides on the Hello hs of an accepted connection, which arrived
// in a frame of epoch frameEpoch. Only a Hello for this side's connected
// epoch is admitted, so a channel never spans two epochs (G2); one for an
// ended epoch is refused as ahead (the dialer's epoch ended: it gives up
// without reporting a fault), one for a later epoch held.
func (l Local) Hello(hs wire.Handshake, frameEpoch uint64) Admission {
	switch {
	case hs.Epoch != frameEpoch:
		return Admission{Verdict: Reject, Reason: fmt.Sprintf("hello names epoch %d in a frame of epoch %d", hs.Epoch, frameEpoch)}
	case hs.Group != l.Group || hs.ToID != l.ID || hs.ToIncarnation != l.Incarnation:
		return refuse(wire.RefuseWrongPeer, "this is %s/%x in group %s", l.ID, l.Incarnation, l.Group)
	case l.Stopping:
		return refuse(wire.RefuseClosing, "stopping")
	case hs.Epoch < l.Epoch || hs.Epoch == l.Epoch && !l.Connected:
		return refuse(wire.RefuseAhead, "epoch %d ended", hs.Epoch)
	case hs.Epoch > l.Epoch:
		return Admission{Verdict: Hold}
	}
	return Admission{Verdict: Admit}
}

// Peer is what the acceptor knows of a Hello's dialer in its connected
// epoch.
type Peer struct {
	// Member: the dialer's ID names a member of the epoch, of incarnation
	// Incarnation.
	Member      bool
	Incarnation uint64
	// Awaiting: the member's channel in this epoch waits for it to dial;
	// false once a connection was bound to it (open, ended or lost).
	Awaiting bool
}

// Bind decides whether the dialer of hs, admitted by Hello, gets its
// channel: it must be a member of the epoch with that incarnation, the
// one of the pair that dials (the lower ID), and have no channel of this
// epoch yet — sequence numbers start afresh on each connection, so a
// second one would let frames replayed from the first pass as new. A
// peer whose channel failed was reported; the next epoch opens a new one.
func (l Local) Bind(hs wire.Handshake, p Peer) Admission {
	switch {
	case !p.Member || p.Incarnation != hs.FromIncarnation || hs.FromID == l.ID:
		return refuse(wire.RefuseNotMember, "%s/%x is not a member of epoch %d", hs.FromID, hs.FromIncarnation, hs.Epoch)
	case hs.FromID > l.ID:
		return refuse(wire.RefuseWrongPeer, "%s dials %s, not the other way", l.ID, hs.FromID)
	case !p.Awaiting:
		return refuse(wire.RefuseDuplicate, "epoch %d already has a channel from %s", hs.Epoch, hs.FromID)
	}
	return Admission{Verdict: Bind}
}

// Dials reports whether the member id dials peer (rather than waiting for
// it): of each pair, the lower ID dials.
func Dials(id, peer string) bool { return id < peer }

// ErrWelcome is the error of a Welcome that does not answer the Hello.
var ErrWelcome = errors.New("welcome does not answer the hello")

// Welcome checks the Welcome got against the Hello sent: same group and
// epoch, the speakers swapped.
func Welcome(sent, got wire.Handshake) error {
	if got.Group != sent.Group || got.Epoch != sent.Epoch || got.FromID != sent.ToID || got.FromIncarnation != sent.ToIncarnation ||
		got.ToID != sent.FromID || got.ToIncarnation != sent.FromIncarnation {
		return fmt.Errorf("%w: %s/%x→%s/%x in %s epoch %d", ErrWelcome, got.FromID, got.FromIncarnation, got.ToID, got.ToIncarnation, got.Group, got.Epoch)
	}
	return nil
}

// Outcome is what a dialer does when its Hello is refused.
type Outcome uint8

const (
	// Retry: the peer has not connected the epoch yet; dial again after
	// Backoff.
	Retry Outcome = iota + 1
	// Ended: the peer is past the epoch or leaving: the channel's
	// operations fail as of an ended epoch; nothing is reported.
	Ended
	// Lost: the peer refuses this member (wrong peer, not a member,
	// duplicate, version): it is reported as a fault.
	Lost
)

var outcomeNames = [...]string{Retry: "retry", Ended: "ended", Lost: "lost"}

func (o Outcome) String() string {
	if o >= Retry && o <= Lost {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Refused returns what a dialer does when refused with code.
func Refused(code wire.RefuseCode) Outcome {
	switch code {
	case wire.RefuseBehind:
		return Retry
	case wire.RefuseAhead, wire.RefuseClosing:
		return Ended
	}
	return Lost
}

// Bounds of the redial delay after a RefuseBehind.
const (
	MinBackoff = 2 * time.Millisecond
	MaxBackoff = 100 * time.Millisecond
)

// Backoff returns the delay before the next dial, given the previous one
// (0 for the first): it doubles from MinBackoff up to MaxBackoff.
func Backoff(prev time.Duration) time.Duration { return min(max(2*prev, MinBackoff), MaxBackoff) }
