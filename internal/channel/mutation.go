package channel

import "github.com/idc-dev/idc/internal/mutation"

// noFrameEpochCheck reports whether the broken variant that skips the
// frame's epoch check is on (only in builds with the idc_mutation tag).
func noFrameEpochCheck() bool { return mutation.On(mutation.NoFrameEpochCheck) }
