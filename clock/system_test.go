package clock

import (
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSystemCountsSuspend: the system clock reads CLOCK_BOOTTIME, the clock
// that keeps counting while the host is suspended. (On a host that never
// suspended it equals CLOCK_MONOTONIC, so this test alone cannot tell the
// two apart; the simulator's suspend fault shows what reading the wrong
// one costs: docs/VERIFICATION.md.)
func TestSystemCountsSuspend(t *testing.T) {
	read := func(id int32) time.Duration {
		var ts unix.Timespec
		if err := unix.ClockGettime(id, &ts); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ts.Nano())
	}
	c := System()
	before := read(unix.CLOCK_BOOTTIME)
	now := c.Now()
	after := read(unix.CLOCK_BOOTTIME)
	if now < before || now > after {
		t.Fatalf("System().Now() = %v, not between two CLOCK_BOOTTIME readings %v and %v", now, before, after)
	}
}

// TestSystemTimer: a timer fires no earlier than its duration by the
// clock, a stopped one never fires, and long timers are re-checked in
// steps of at most MaxTimerStep.
func TestSystemTimer(t *testing.T) {
	c := System()
	const d = 30 * time.Millisecond
	start := c.Now()
	fired := make(chan time.Duration, 1)
	c.AfterFunc(d, func() { fired <- c.Now() })
	select {
	case at := <-fired:
		if at-start < d {
			t.Fatalf("timer of %v fired after %v", d, at-start)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("timer never fired")
	}

	stopped := c.AfterFunc(d, func() { t.Error("a stopped timer fired") })
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer returned false")
	}
	if stopped.Stop() {
		t.Fatal("second Stop returned true")
	}

}

// TestSystemTimerAfterSuspend: a host suspend stops Go's timers but not
// CLOCK_BOOTTIME; a timer whose deadline passed during the suspend fires
// within MaxTimerStep of the resume, not when Go's timer would.
func TestSystemTimerAfterSuspend(t *testing.T) {
	var mu sync.Mutex
	var suspended time.Duration
	boottime = func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return readBoottime() + suspended
	}
	defer func() { boottime = readBoottime }()
	c := System()
	fired := make(chan struct{})
	c.AfterFunc(time.Hour, func() { close(fired) })
	resumed := time.Now()
	mu.Lock()
	suspended = time.Hour // an hour passed while the host was suspended
	mu.Unlock()
	select {
	case <-fired:
		t.Logf("fired %v after the resume", time.Since(resumed).Round(time.Millisecond))
	case <-time.After(MaxTimerStep + 5*time.Second):
		t.Fatalf("a timer whose deadline passed during a suspend did not fire within MaxTimerStep (%v) of the resume", MaxTimerStep)
	}
}
