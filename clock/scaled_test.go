package clock

import (
	"testing"
	"time"
)

// fake is a clock set by hand; its timers fire when it is advanced.
type fake struct {
	now    time.Duration
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Duration
	f  func()
}

func (c *fake) Now() time.Duration { return c.now }
func (c *fake) AfterFunc(d time.Duration, f func()) Timer {
	c.timers = append(c.timers, fakeTimer{c.now + d, f})
	return nil
}
func (c *fake) advance(d time.Duration) {
	c.now += d
	for _, t := range c.timers {
		if t.at <= c.now && t.f != nil {
			t.f()
		}
	}
}

func TestScaled(t *testing.T) {
	for _, tc := range []struct {
		rate    float64
		after   time.Duration // on the base clock
		reads   time.Duration // elapsed on the scaled clock
		timer   time.Duration // a timer of this on the scaled clock...
		firesAt time.Duration // ...fires after this on the base clock
	}{
		{1, time.Second, time.Second, time.Second, time.Second},
		{0.5, time.Second, 500 * time.Millisecond, time.Second, 2 * time.Second},
		{2, time.Second, 2 * time.Second, time.Second, 500 * time.Millisecond},
		{0.995, 2 * time.Second, 1990 * time.Millisecond, time.Second, 1005025126 * time.Nanosecond},
	} {
		base := &fake{now: 7 * time.Hour}
		c := Scaled(base, tc.rate)
		start := c.Now()
		if start != base.now {
			t.Errorf("rate %v: starts at %v, want the base's %v", tc.rate, start, base.now)
		}
		fired := time.Duration(-1)
		from := base.now
		c.AfterFunc(tc.timer, func() { fired = base.now - from })
		for range int(tc.firesAt/time.Millisecond) + 2 {
			base.advance(time.Millisecond)
			if fired >= 0 {
				break
			}
		}
		if d := fired - tc.firesAt; d < 0 || d > time.Millisecond {
			t.Errorf("rate %v: a timer of %v fired after %v on the base clock, want %v", tc.rate, tc.timer, fired, tc.firesAt)
		}
		base.now = from + tc.after
		if got := c.Now() - start; got != tc.reads {
			t.Errorf("rate %v: %v on the base reads %v, want %v", tc.rate, tc.after, got, tc.reads)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("Scaled with rate 0 did not panic")
		}
	}()
	Scaled(&fake{}, 0)
}

// TestScaledSetRate: a new rate takes effect from now, the readings going
// on from where they were.
func TestScaledSetRate(t *testing.T) {
	base := &fake{now: time.Hour}
	c := Scaled(base, 1)
	base.now += time.Second
	c.SetRate(0.5)
	if got := c.Now(); got != time.Hour+time.Second {
		t.Fatalf("after SetRate: %v, want %v", got, time.Hour+time.Second)
	}
	base.now += 2 * time.Second
	if got := c.Now(); got != time.Hour+2*time.Second {
		t.Fatalf("2 s at half speed: %v, want %v", got, time.Hour+2*time.Second)
	}
	c.SetRate(1)
	base.now += time.Second
	if got := c.Now(); got != time.Hour+3*time.Second {
		t.Fatalf("back at full speed: %v, want %v", got, time.Hour+3*time.Second)
	}
}
