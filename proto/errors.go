package proto

import "errors"

// Errors shared by the state machines and the drivers. Package idc
// re-exports them; test for them with errors.Is.
var (
	// ErrFenced means the membership has stopped itself (its lease may have
	// lapsed, it was dropped from the group, or it left): nothing more is
	// done under this incarnation. Rejoin with a new incarnation.
	ErrFenced = errors.New("idc: membership fenced")
	// ErrLeaseExpired is wrapped by ErrFenced when the lease may have lapsed
	// by the member's own conservative clock.
	ErrLeaseExpired = errors.New("lease may have lapsed")
	// ErrEvicted is wrapped by ErrFenced when the coordinator dropped the
	// member from the group.
	ErrEvicted = errors.New("dropped from the group by the coordinator")
	// ErrLeft is returned after Leave.
	ErrLeft = errors.New("idc: membership left the group")
	// ErrEpochEnded means the epoch an operation names is no longer the
	// connected one.
	ErrEpochEnded = errors.New("idc: epoch ended")
	// ErrNotConnected means the member has no connected epoch at the moment.
	ErrNotConnected = errors.New("idc: not connected")
)

// Errors of configuration and of joining, shared by every package (one
// ErrConfig across idc, coordinator, core/lease and core/coordinator).
var (
	// ErrConfig is wrapped by every configuration error.
	ErrConfig = errors.New("idc: invalid config")
	// ErrAlreadyLive means another incarnation of the domain is a live
	// member of the group; it holds the membership until its lease ends.
	ErrAlreadyLive = errors.New("idc: domain already live in the group")
	// ErrNotMember means the named domain is not a member of the epoch.
	ErrNotMember = errors.New("idc: not a member")
	// ErrClosed is returned once a membership was closed (Close) rather
	// than left gracefully or fenced.
	ErrClosed = errors.New("idc: membership closed")
)

// Errors of channels (DESIGN §7).
var (
	// ErrPeerLost means the channel to the peer failed in this epoch: it
	// stopped answering, its connection was reset, or it spoke garbage. A
	// fault report names it, so the epoch will end.
	ErrPeerLost = errors.New("idc: peer lost")
	// ErrNoChannel means the peer accepts no channels (it registered no
	// address), or this membership has channels turned off.
	ErrNoChannel = errors.New("idc: no channel to the peer")
	// ErrRemote is wrapped by the error a call returns when the peer's
	// handler failed; the text is the handler's.
	ErrRemote = errors.New("idc: the peer's handler failed")
	// ErrMessageTooLarge means a message exceeds the configured maximum.
	ErrMessageTooLarge = errors.New("idc: message too large")
)
