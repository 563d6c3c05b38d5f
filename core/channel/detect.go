package channel

import (
	"fmt"
	"time"
)

// Detector decides, at the ticks of a mesh's timer (every Heartbeat/2),
// which peers are suspected and which channels need a heartbeat. Times are
// read from the driver's clock, as durations since its start.
//
// A peer heard since the previous tick was heard at most Heartbeat/2 ago:
// it counts as heard then (reading the clock per frame would cost more than
// the rest of the frame's handling). A peer not heard for more than
// Heartbeat·Misses is suspected, so a silent peer is suspected within
// Heartbeat·(Misses+½).
//
// A tick more than Heartbeat/2 late means this process was starved (a
// stall, a pause, a loaded machine): what its peers sent meanwhile may not
// have been read yet, so nobody is suspected at that tick. The next one
// decides, late or not: a local stall delays the detection of a silent
// peer by one tick and is not taken for the peers' silence, and a process
// starved at every tick still suspects at every other one.
type Detector struct {
	// Heartbeat is the heartbeat interval, Misses how many may be missed.
	Heartbeat time.Duration
	Misses    int

	armedAt time.Duration // when the tick timer was set
	stalled bool          // the last tick was late: nobody was suspected
}

// Armed notes that the tick timer was set at now, for Heartbeat/2.
func (d *Detector) Armed(now time.Duration) { d.armedAt = now }

// Tick begins the tick at now and reports whether it is stalled: more than
// Heartbeat/2 late, after a tick that was not.
func (d *Detector) Tick(now time.Duration) (stalled bool) {
	stalled = now-d.armedAt > d.Heartbeat && !d.stalled
	d.stalled = stalled
	return stalled
}

// Silence is how long a channel's peer may be silent before it is
// suspected.
func (d *Detector) Silence() time.Duration { return d.Heartbeat * time.Duration(d.Misses) }

// Check decides, at the tick at now (stalled as Tick said), on an open
// channel: whether its peer is suspected (err says for how long it was
// silent), else whether a Heartbeat must be sent (nothing was sent since
// the previous tick).
func (d *Detector) Check(c *Channel, now time.Duration, stalled bool) (heartbeat bool, err error) {
	if c.heard {
		c.heard = false
		c.lastHeard = max(c.lastHeard, now-d.Heartbeat/2)
	}
	if now-c.lastHeard > d.Silence() && !stalled {
		return false, fmt.Errorf("heard nothing for %v (heartbeat %v, misses %d)", (now - c.lastHeard).Round(time.Millisecond), d.Heartbeat, d.Misses)
	}
	heartbeat = !c.sent
	c.sent = false
	return heartbeat, nil
}

// Overdue reports whether a channel still being set up at the tick at now
// has missed setupBy, the time it had to open by (never at a stalled
// tick).
func (d *Detector) Overdue(setupBy, now time.Duration, stalled bool) bool {
	return now > setupBy && !stalled
}
