// Package clock is the time a driver sees: a monotonic clock and timers on
// it, behind a small interface with two implementations — the system's
// (System) and the deterministic simulator's (package sim).
//
// Readings are durations since an arbitrary origin, the way the pure
// machines under core/ take time. The system clock counts time the host or
// VM spends suspended (Linux CLOCK_BOOTTIME): Go's own monotonic clock is
// CLOCK_MONOTONIC, which stops during suspend, so a domain resumed from
// suspend would otherwise believe its lease still valid (DESIGN §5).
package clock

import "time"

// Clock is a local monotonic clock with timers.
type Clock interface {
	// Now returns the time since an arbitrary origin, counting suspend.
	Now() time.Duration
	// AfterFunc calls f once d has passed on this clock, on a goroutine of
	// its own (or, in the simulator, as an event of the node). It never
	// calls f before AfterFunc has returned.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a timer set by AfterFunc.
type Timer interface {
	// Stop prevents the timer from firing; it reports whether it did so
	// (false if the timer already fired or was stopped).
	Stop() bool
}
