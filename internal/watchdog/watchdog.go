// Package watchdog holds the rule by which the owner of a store watch (a
// membership's driver, the coordinator's leader) finds the watch hung.
//
// A watch may hang silently: its stream stays open but delivers nothing
// more, so a change to the watched keys goes unseen. The owner checks the
// watch at a fixed interval, on its own clock. At each check, a watch
// that delivered nothing since the previous check is hung, and the owner
// replaces it; otherwise the owner asks it for a progress notification,
// which a live watch delivers before the next check even when nothing
// changes. So a hung watch is found within two intervals. The package
// holds the decision only: the owner keeps the clock, the timer and the
// watch.
package watchdog

import "github.com/idc-dev/idc/internal/mutation"

// Verdict is what a check decides.
type Verdict int

// The verdicts of a check.
const (
	// Off: the check does nothing, because the watchdog is switched off
	// (the broken variant mutation.NoWatchdog).
	Off Verdict = iota
	// AskProgress: the watch delivered something since the previous
	// check; the owner asks it for a progress notification.
	AskProgress
	// Hung: the watch delivered nothing since the previous check, not
	// even the progress notification asked for then; the owner replaces
	// it.
	Hung
)

// String names the verdict.
func (v Verdict) String() string {
	switch v {
	case Off:
		return "off"
	case AskProgress:
		return "ask-progress"
	case Hung:
		return "hung"
	}
	return "verdict(?)"
}

// Check is one check of a watch. heard is the owner's flag that the watch
// delivered something since the previous check: the owner sets it when it
// starts a watch and on every delivery (an event, a progress
// notification, the watch's creation, an error). Check returns Hung if
// heard is false; otherwise it clears heard and returns AskProgress. With
// mutation.NoWatchdog on, it returns Off and leaves heard as it is.
//
// The owner checks only a watch it holds; one being replaced is not
// checked.
func Check(heard *bool) Verdict {
	switch {
	case mutation.On(mutation.NoWatchdog):
		return Off
	case !*heard:
		return Hung
	default:
		*heard = false
		return AskProgress
	}
}
