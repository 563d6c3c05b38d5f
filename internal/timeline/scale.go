package timeline

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Geometry of the chart, in SVG user units (pixels at 100 %).
const (
	width    = 1200.0
	left     = 132.0 // the row labels' column
	right    = 16.0
	plotW    = width - left - right
	charW    = 6.6 // estimated width of a character at 11 px
	smallW   = 5.6 // at 9.5 px
	maxTicks = 40
	// maxBuckets bounds the acknowledgement strip's buckets.
	maxBuckets = 200
)

// niceSteps are the tick spacings and bucket sizes to choose from.
var niceSteps = []time.Duration{
	time.Microsecond, 2 * time.Microsecond, 5 * time.Microsecond,
	10 * time.Microsecond, 20 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 200 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second,
	10 * time.Second, 15 * time.Second, 30 * time.Second,
	time.Minute, 2 * time.Minute, 5 * time.Minute,
	10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour,
	24 * time.Hour,
}

// step returns the i-th nice step, doubling past the end of the list.
func step(i int) time.Duration {
	if i < len(niceSteps) {
		return niceSteps[i]
	}
	d := niceSteps[len(niceSteps)-1]
	for range i - len(niceSteps) + 1 {
		if d > math.MaxInt64/2 {
			return d
		}
		d *= 2
	}
	return d
}

// x is the horizontal position of time t, clamped to the plot.
func (r *run) x(t time.Time) float64 {
	if t.Before(r.start) {
		t = r.start
	}
	if t.After(r.end) {
		t = r.end
	}
	return left + float64(t.Sub(r.start))/float64(r.scale)*plotW
}

// xd is the horizontal position of the offset d from the start, clamped.
func (r *run) xd(d time.Duration) float64 {
	d = min(max(d, 0), r.dur)
	return left + float64(d)/float64(r.scale)*plotW
}

// tick is one labelled tick of the time axis.
type tick struct {
	at    time.Duration
	label string
}

// ticks chooses the axis' ticks: the smallest nice spacing at which no two
// labels come closer than a gap, and no closer than 70 px anyway.
func (r *run) ticks() []tick {
	for i := 0; ; i++ {
		s := step(i)
		if r.dur/s > maxTicks {
			continue
		}
		px := float64(s) / float64(r.scale) * plotW
		var ts []tick
		widest := 0.0
		for at := time.Duration(0); at <= r.dur; at += s {
			l := r.tickLabel(at, s)
			ts = append(ts, tick{at, l})
			widest = max(widest, textW(l, charW))
			if at > math.MaxInt64-s {
				break
			}
		}
		if px >= max(widest+16, 70) || s >= r.dur {
			// A label at the right edge is drawn ending there, so the
			// one before must leave room.
			if n := len(ts); n > 2 && r.xd(ts[n-1].at)+textW(ts[n-1].label, charW)/2 > width-2 &&
				r.xd(ts[n-1].at)-textW(ts[n-1].label, charW)-8 < r.xd(ts[n-2].at)+textW(ts[n-2].label, charW)/2 {
				ts = ts[:n-1]
			}
			return ts
		}
	}
}

// tickLabel formats the offset at on an axis of spacing s: milliseconds
// for runs under 1.5 s, seconds for runs under 3 min, minutes (m:ss) for
// longer runs.
func (r *run) tickLabel(at, s time.Duration) string {
	switch {
	case at == 0:
		return "0"
	case r.dur < 1500*time.Millisecond:
		if s < time.Millisecond {
			return strconv.FormatFloat(float64(at)/1e6, 'f', decimals(s, time.Millisecond), 64) + " ms"
		}
		return strconv.FormatInt(int64(at/time.Millisecond), 10) + " ms"
	case r.dur < 3*time.Minute:
		return strconv.FormatFloat(at.Seconds(), 'f', decimals(s, time.Second), 64) + " s"
	case r.dur < 3*time.Hour:
		m := at / time.Minute
		sec := at - m*time.Minute
		return fmt.Sprintf("%d:%02d", m, sec/time.Second)
	default:
		h := at / time.Hour
		m := (at - h*time.Hour) / time.Minute
		return fmt.Sprintf("%dh%02d", h, m)
	}
}

// decimals is how many decimals of unit it takes to show multiples of s.
func decimals(s, unit time.Duration) int {
	n := 0
	for s < unit && s%unit != 0 && n < 9 {
		unit /= 10
		n++
	}
	return n
}

// bucket is the acknowledgement strip's bucket size: the smallest nice
// step that needs no more than maxBuckets buckets (the last may be
// partial).
func (r *run) bucket() time.Duration {
	for i := 0; ; i++ {
		if s := step(i); r.dur/s <= maxBuckets {
			return s
		}
	}
}

// fmtDur formats a duration for reading: 850 µs, 4.2 ms, 412 ms, 1.25 s,
// 2m05.3s.
func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + fmtDur(-d)
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d/time.Microsecond)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	case d < 999500*time.Microsecond:
		return fmt.Sprintf("%d ms", d.Round(time.Millisecond)/time.Millisecond)
	case d < 59995*time.Millisecond:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		d = d.Round(100 * time.Millisecond)
		m := d / time.Minute
		return fmt.Sprintf("%dm%04.1fs", m, (d - m*time.Minute).Seconds())
	}
}

// fmtStep formats a bucket size: 10 ms, 5 s, 1 min.
func fmtStep(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d/time.Microsecond)
	case d < time.Second:
		return fmt.Sprintf("%d ms", d/time.Millisecond)
	case d < time.Minute:
		return fmt.Sprintf("%d s", d/time.Second)
	case d < time.Hour:
		return fmt.Sprintf("%d min", d/time.Minute)
	default:
		return fmt.Sprintf("%d h", d/time.Hour)
	}
}

// off formats t as an offset from the start, exactly (not clamped; a
// time before the start is negative).
func (r *run) off(t time.Time) string {
	return fmt.Sprintf("%.3f s", t.Sub(r.start).Seconds())
}

// at formats t for a hover title: offset and wall-clock time.
func (r *run) at(t time.Time) string {
	return r.off(t) + " (" + t.Format("15:04:05.000") + ")"
}

// textW estimates the width of s at a character width of cw.
func textW(s string, cw float64) float64 {
	n := 0
	for range s {
		n++
	}
	return float64(n) * cw
}

// ff formats a coordinate with at most one decimal.
func ff(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}
