package clock

import (
	"math"
	"time"
)

// Scaled returns a clock that runs at rate times base's speed from the
// moment Scaled is called: after d on base it reads d·rate later, and
// its timers fire once d/rate has passed on base. It is fault injection
// for a drifting clock (DESIGN §5: leases assume the rate stays within
// 1±ρ): a rate below 1−ρ makes a member believe its lease valid for
// longer than the coordinator waits. rate must be positive.
func Scaled(base Clock, rate float64) Clock {
	if !(rate > 0) || math.IsInf(rate, 0) {
		panic("clock: Scaled with a rate that is not positive")
	}
	return &scaled{base: base, rate: rate, origin: base.Now()}
}

type scaled struct {
	base   Clock
	rate   float64
	origin time.Duration
}

func (s *scaled) Now() time.Duration {
	return s.origin + time.Duration(float64(s.base.Now()-s.origin)*s.rate)
}

func (s *scaled) AfterFunc(d time.Duration, f func()) Timer {
	return s.base.AfterFunc(time.Duration(math.Ceil(float64(d)/s.rate)), f)
}
