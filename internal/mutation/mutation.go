// Package mutation switches on deliberately broken variants of idc's code,
// for verification only: the deterministic simulator runs each variant and
// must catch it violating a guarantee, which shows that its checks can
// fail (docs/VERIFICATION.md).
//
// The switches exist only in test binaries built with the tag
// idc_mutation (scripts/test runs those); in every other build On is a
// constant false and the broken code paths compile away. So no production
// configuration carries a knob that breaks the protocol.
package mutation

// Kind names a broken variant.
type Kind int

// The broken variants.
const (
	// ConnectEarly: the coordinator connects a quiescing epoch without the
	// survivors' quiesce acknowledgements (breaks G3).
	ConnectEarly Kind = iota + 1
	// TrustStoreExpiry: the coordinator counts a departed member stopped
	// as soon as the store says its lease is gone (breaks G4).
	TrustStoreExpiry
	// NoCAS: epoch writes without the compare-and-swap (breaks G1).
	NoCAS
	// ValidityFromReceipt: a member counts lease validity from a renewal's
	// answer instead of its send (breaks G6).
	ValidityFromReceipt
	// CleanupInCAS: the connect write also deletes every obsolete record,
	// in the same transaction, as it once did; a group with enough leave
	// markers exceeds the store's operations per transaction and never
	// connects again (breaks L1).
	CleanupInCAS
	// NoWatchdog: drivers never check that their watch still delivers; a
	// silently hung watch is never replaced (breaks L1).
	NoWatchdog
	// ContextNotGate: an epoch context's Err does not read the lease clock
	// (breaks G6 after a pause).
	ContextNotGate
	// FenceNothing: a fence-mode group with no resource connects without
	// waiting departed members' leases out (breaks G4).
	FenceNothing
	// KeepLeaveMarkers: obsolete leave markers are never deleted (the store
	// grows without bound).
	KeepLeaveMarkers
	// MonotonicClock: the lease clock stops while the host is suspended,
	// as Go's CLOCK_MONOTONIC does (breaks G6 after a suspend).
	MonotonicClock
	// NoFrameEpochCheck: a channel's receiver does not check the epoch in
	// a frame's header, trusting that a connection belongs to one epoch
	// (breaks G2 when a stale frame reaches a newer connection).
	NoFrameEpochCheck
	// GuardChecksAtAdmission: a resource's guard checks a request's token
	// when it arrives only, not again when it is applied, and a fence does
	// not abort what it admitted (breaks G5 when a fence comes between).
	GuardChecksAtAdmission
	// FenceOnlyDepartures: the coordinator waits for the resources' fence
	// acknowledgements only for changes with departed members (the spin
	// model's finding F1: a survivor's request of the old epoch may still
	// be in the network; breaks G5).
	FenceOnlyDepartures
	// ResendAtOnce: the multipath disk sends a request whose path failed
	// through the other path at once, in the same epoch, while the first
	// copy may still be in the failed path (a stale write lands after a
	// newer one).
	ResendAtOnce
	// NoReplayBarrier: requests of a client that reconnected do not wait
	// for the abandoned ones of its earlier connection, which may then
	// overtake them.
	NoReplayBarrier
	// ForgetTimedOutRenewal: the lease renewer forgets a renewal once its
	// caller gave up on it, so that its late answer on the keep-alive
	// stream is taken for the next renewal's, sent later (breaks G6).
	ForgetTimedOutRenewal

	// last is the last variant: Kinds lists ConnectEarly to it.
	last = ForgetTimedOutRenewal
)

var names = map[Kind]string{
	ConnectEarly: "connect-early", TrustStoreExpiry: "trust-store-expiry", NoCAS: "no-CAS",
	ValidityFromReceipt: "validity-from-receipt", CleanupInCAS: "cleanup-in-CAS", NoWatchdog: "no-watchdog",
	ContextNotGate: "context-not-gate", FenceNothing: "fence-nothing", KeepLeaveMarkers: "keep-leave-markers",
	MonotonicClock: "monotonic-clock", NoFrameEpochCheck: "no-frame-epoch-check",
	GuardChecksAtAdmission: "guard-checks-at-admission", FenceOnlyDepartures: "fence-only-departures",
	ResendAtOnce: "resend-at-once", NoReplayBarrier: "no-replay-barrier",
	ForgetTimedOutRenewal: "forget-timed-out-renewal",
}

func (k Kind) String() string {
	if s, ok := names[k]; ok {
		return s
	}
	return "mutation(?)"
}

// Kinds returns every broken variant.
func Kinds() []Kind {
	out := make([]Kind, 0, len(names))
	for k := ConnectEarly; k <= last; k++ {
		out = append(out, k)
	}
	return out
}
