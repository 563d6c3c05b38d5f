package coordinator

import (
	"slices"
	"time"

	"github.com/idc-dev/idc/proto"
)

// Damping holds back a domain that keeps departing (DESIGN §4: topology
// determination damps flapping). A domain whose incarnations departed an
// epoch Drops times within Window — dropped on a fault report or a quiesce
// deadline, or its lease gone; a graceful leave does not count — is not
// admitted again until Hold after its last departure. Members stay members:
// only admission waits. The history is the coordinator's own observation,
// kept in memory; a coordinator that takes over starts afresh.
type Damping struct {
	// Drops is how many departures within Window make a domain flap
	// (default 3; negative turns damping off).
	Drops int
	// Window (default 1 min) and Hold (default 15 s).
	Window, Hold time.Duration
}

// Defaults of Damping.
const (
	DefaultFlapDrops  = 3
	DefaultFlapWindow = time.Minute
	DefaultFlapHold   = 15 * time.Second
)

func (d Damping) withDefaults() Damping {
	if d.Drops == 0 {
		d.Drops = DefaultFlapDrops
	}
	if d.Window == 0 {
		d.Window = DefaultFlapWindow
	}
	if d.Hold == 0 {
		d.Hold = DefaultFlapHold
	}
	return d
}

// damper keeps the departures of each domain.
type damper struct {
	cfg     Damping
	times   map[string][]time.Duration // departure times by domain ID
	counted map[proto.Ref]bool         // incarnations already counted
}

func newDamper(cfg Damping) *damper {
	return &damper{cfg: cfg, times: map[string][]time.Duration{}, counted: map[proto.Ref]bool{}}
}

// departed records that incarnation r departed an epoch at now (once per
// incarnation) and forgets what no longer matters.
func (d *damper) departed(r proto.Ref, now time.Duration) {
	if d.cfg.Drops < 0 || d.counted[r] {
		return
	}
	d.counted[r] = true
	d.times[r.ID] = append(d.times[r.ID], now)
	for id, ts := range d.times {
		ts = slices.DeleteFunc(ts, func(t time.Duration) bool { return t < now-d.cfg.Window-d.cfg.Hold })
		if len(ts) == 0 {
			delete(d.times, id)
		} else {
			d.times[id] = ts
		}
	}
	if len(d.counted) > 4*len(d.times)+64 { // bound the memory of counted incarnations
		for ref := range d.counted {
			if _, ok := d.times[ref.ID]; !ok {
				delete(d.counted, ref)
			}
		}
	}
}

// heldUntil reports whether domain id is held back at now, and until when.
func (d *damper) heldUntil(id string, now time.Duration) (time.Duration, bool) {
	ts := d.times[id]
	if d.cfg.Drops < 0 || len(ts) < d.cfg.Drops {
		return 0, false
	}
	last := ts[len(ts)-1]
	n := 0
	for _, t := range ts {
		if t >= last-d.cfg.Window {
			n++
		}
	}
	if n >= d.cfg.Drops && now < last+d.cfg.Hold {
		return last + d.cfg.Hold, true
	}
	return 0, false
}
