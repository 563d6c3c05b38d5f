package clock

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// MaxTimerStep bounds how long a system timer sleeps before it reads the
// clock again. Go's timers run on CLOCK_MONOTONIC, which stops while the
// host is suspended: a timer armed before a suspend would fire late by the
// time spent suspended. Re-reading CLOCK_BOOTTIME at least every
// MaxTimerStep makes a timer fire at most MaxTimerStep after its deadline
// once the host has resumed. (A process pause — SIGSTOP, a long GC — does
// not stop CLOCK_MONOTONIC, so timers are not late then.)
const MaxTimerStep = time.Second

type system struct{}

// System returns the host's clock: CLOCK_BOOTTIME, which keeps counting
// while the host is suspended.
func System() Clock { return system{} }

func (system) Now() time.Duration { return boottime() }

// boottime reads the clock; tests replace it to simulate a suspend.
var boottime = readBoottime

func readBoottime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		// Kernels without CLOCK_BOOTTIME (before 2.6.39) are not supported.
		panic("clock: CLOCK_BOOTTIME unavailable: " + err.Error())
	}
	return time.Duration(ts.Nano())
}

func (system) AfterFunc(d time.Duration, f func()) Timer {
	t := &sysTimer{at: boottime() + d, f: f}
	t.mu.Lock()
	t.arm(d)
	t.mu.Unlock()
	return t
}

type sysTimer struct {
	mu      sync.Mutex
	at      time.Duration
	f       func()
	t       *time.Timer
	stopped bool
}

// arm sleeps for d, at most MaxTimerStep. Called with mu held.
func (t *sysTimer) arm(d time.Duration) {
	t.t = time.AfterFunc(min(max(d, 0), MaxTimerStep), t.fire)
}

func (t *sysTimer) fire() {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	if left := t.at - boottime(); left > 0 {
		t.arm(left)
		t.mu.Unlock()
		return
	}
	t.stopped = true
	t.mu.Unlock()
	t.f()
}

func (t *sysTimer) Stop() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.stopped = true
	t.t.Stop()
	return true
}
