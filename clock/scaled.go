package clock

import (
	"math"
	"sync"
	"time"
)

// ScaledClock is a clock that runs at a rate of another's speed, which
// SetRate may change while it runs: fault injection for a drifting clock
// (DESIGN §5: leases assume the rate stays within 1±ρ; a rate below 1−ρ
// makes a member believe its lease valid for longer than the coordinator
// waits).
type ScaledClock struct {
	base Clock

	mu     sync.Mutex
	rate   float64
	from   time.Duration // the base's reading when the rate was set
	origin time.Duration // this clock's reading then
}

// Scaled returns a clock that reads as base does now and from then on
// runs at rate times base's speed: after d on base it reads d·rate later,
// and a timer of d fires once d/rate has passed on base (at the rate of
// when it was set). rate must be positive.
func Scaled(base Clock, rate float64) *ScaledClock {
	checkRate(rate)
	now := base.Now()
	return &ScaledClock{base: base, rate: rate, from: now, origin: now}
}

func checkRate(rate float64) {
	if !(rate > 0) || math.IsInf(rate, 0) {
		panic("clock: a scaled clock's rate must be positive")
	}
}

// SetRate makes the clock run at rate from now on; its readings go on
// from where they are.
func (s *ScaledClock) SetRate(rate float64) {
	checkRate(rate)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.base.Now()
	s.origin = s.nowLocked(now)
	s.from, s.rate = now, rate
}

// Now implements Clock.
func (s *ScaledClock) Now() time.Duration {
	now := s.base.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nowLocked(now)
}

func (s *ScaledClock) nowLocked(base time.Duration) time.Duration {
	return s.origin + time.Duration(float64(base-s.from)*s.rate)
}

// AfterFunc implements Clock.
func (s *ScaledClock) AfterFunc(d time.Duration, f func()) Timer {
	s.mu.Lock()
	rate := s.rate
	s.mu.Unlock()
	return s.base.AfterFunc(time.Duration(math.Ceil(float64(d)/rate)), f)
}
