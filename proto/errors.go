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
