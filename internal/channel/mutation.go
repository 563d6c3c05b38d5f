package channel

// noFrameEpochCheck reports whether the broken variant that skips the
// frame's epoch check is on (never, until the simulator can catch it).
func noFrameEpochCheck() bool { return false }
