// Package clocktest holds a clock.Clock for tests whose time the test
// moves by hand.
package clocktest

import (
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
)

// Manual is a clock.Clock that stands still until the test moves it with
// Advance, which runs the timers then due on the test's goroutine, in the
// order of their times (then of their setting). The zero value reads 0.
type Manual struct {
	mu     sync.Mutex
	now    time.Duration
	seq    uint64
	timers []*timer
}

type timer struct {
	c    *Manual
	at   time.Duration
	seq  uint64
	f    func()
	done bool
}

// Now implements clock.Clock.
func (c *Manual) Now() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc implements clock.Clock: f runs from Advance once d has passed
// (a d of 0 or less: at the next Advance, even by 0).
func (c *Manual) AfterFunc(d time.Duration, f func()) clock.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &timer{c: c, at: c.now + max(d, 0), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

// Stop implements clock.Timer.
func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// Advance moves the clock by d, running every timer due on the way at its
// own time (timers they set that fall due within d run too).
func (c *Manual) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now + max(d, 0)
	for {
		c.timers = slices.DeleteFunc(c.timers, func(t *timer) bool { return t.done })
		var next *timer
		for _, t := range c.timers {
			if t.at <= end && (next == nil || t.at < next.at || t.at == next.at && t.seq < next.seq) {
				next = t
			}
		}
		if next == nil {
			break
		}
		next.done = true
		c.now = max(c.now, next.at)
		c.mu.Unlock()
		next.f()
		c.mu.Lock()
	}
	c.now = end
	c.mu.Unlock()
}

// Jump moves the clock by d at once, as a process that was not scheduled
// for that long sees it, then runs the timers that fell due, each once
// and late, at the new time (timers they set are left for later).
func (c *Manual) Jump(d time.Duration) {
	c.mu.Lock()
	c.now += max(d, 0)
	var due []*timer
	for _, t := range c.timers {
		if !t.done && t.at <= c.now {
			t.done = true
			due = append(due, t)
		}
	}
	slices.SortFunc(due, func(a, b *timer) int {
		if a.at != b.at {
			return int(a.at - b.at)
		}
		return int(a.seq) - int(b.seq)
	})
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// Pending returns how many timers are set and not yet run or stopped.
func (c *Manual) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.done {
			n++
		}
	}
	return n
}
