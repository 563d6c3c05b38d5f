//go:build idc_mutation

package mutation

import "sync/atomic"

// Enabled reports whether this build can switch mutations on.
const Enabled = true

var current atomic.Int64

// On reports whether variant k is switched on.
func On(k Kind) bool { return current.Load() == int64(k) }

// Set switches variant k on (one at a time, process-wide) until restore
// is called. For tests that run one variant at a time.
func Set(k Kind) (restore func()) {
	prev := current.Swap(int64(k))
	return func() { current.Store(prev) }
}
