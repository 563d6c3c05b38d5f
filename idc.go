// Package idc is fault-tolerant inter-domain communication: domains join a
// group, are connected in an epoch, are told when it is disconnected,
// quiesce every operation of it, and are connected again in the next epoch,
// which carries nothing stale. Every change is decided in an etcd store; a
// domain that may have lost its lease stops itself.
//
// A domain joins with Join and takes epochs with Membership.Next. Work in an
// epoch is bracketed as an operation (Epoch.Begin and Op.End, or Epoch.Do);
// the epoch's context ends at disconnect, and the member acknowledges
// quiesce only when the epoch's last operation has ended.
//
// The coordinator that decides epochs runs in `idc store` (package
// coordinator); the protocol itself lives in pure state machines under
// core/. See docs/ARCHITECTURE.md.
package idc

import (
	"errors"

	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/idc-dev/idc/token"
)

// Member is a member of an epoch.
type Member = proto.Member

// Token is what a request carries to a resource to prove its authority:
// its group, epoch, domain and incarnation (package token has its binary
// encoding; package guard checks it at the resource).
type Token = token.Token

// Errors. Test for them with errors.Is.
var (
	// ErrFenced: the membership stopped itself; nothing more is done under
	// this incarnation. It wraps ErrLeaseExpired or ErrEvicted.
	ErrFenced = proto.ErrFenced
	// ErrLeaseExpired: the lease may have lapsed by the local clock.
	ErrLeaseExpired = proto.ErrLeaseExpired
	// ErrEvicted: the coordinator dropped the member from the group.
	ErrEvicted = proto.ErrEvicted
	// ErrLeft: the membership left the group.
	ErrLeft = proto.ErrLeft
	// ErrEpochEnded: the epoch is no longer connected.
	ErrEpochEnded = proto.ErrEpochEnded
	// ErrNotConnected: there is no connected epoch at the moment.
	ErrNotConnected = proto.ErrNotConnected
	// ErrAlreadyLive: another incarnation of the domain is a live member
	// of the group; it holds the membership until its lease ends.
	ErrAlreadyLive = proto.ErrAlreadyLive
	// ErrNotMember: the named domain is not a member of the epoch.
	ErrNotMember = proto.ErrNotMember
	// ErrClosed: the membership was closed (Close).
	ErrClosed = proto.ErrClosed
	// ErrPeerLost: the channel to the peer failed in this epoch (it went
	// silent, its connection was reset, or it broke the protocol); the
	// peer has been reported, so the epoch will end.
	ErrPeerLost = proto.ErrPeerLost
	// ErrNoChannel: the peer accepts no channels, or channels are off
	// here (Config.Listen is empty).
	ErrNoChannel = proto.ErrNoChannel
	// ErrRemote: the peer's handler failed (see RemoteError).
	ErrRemote = proto.ErrRemote
	// ErrMessageTooLarge: a message exceeds Config.MaxMessage.
	ErrMessageTooLarge = proto.ErrMessageTooLarge
	// ErrConfig is wrapped by every configuration error, of every package.
	ErrConfig = proto.ErrConfig
	// ErrUnavailable: the store could not be reached or did not answer in
	// time (store.ErrUnavailable).
	ErrUnavailable = store.ErrUnavailable
)

func errorsIs(err, target error) bool { return errors.Is(err, target) }
