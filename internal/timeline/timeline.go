// Package timeline renders one run of the storage scenario as a
// self-contained HTML page with an inline SVG chart: one row per domain,
// the group's epochs as bands across the top, faults on the faulted
// domain's row, the storage's fences, refused and landed stale requests,
// the service gaps shaded across all rows, the path the disk used and the
// write acknowledgements per time bucket.
//
// The page has no external scripts, fonts or style sheets; details are in
// hover titles and in collapsible tables below the chart. It stays readable
// and bounded in size for runs from a second to hours: the time axis, its
// labels and the acknowledgement buckets are chosen from the run's duration,
// labels that would overlap are left out, and what is too dense to draw one
// by one (epochs, faults, marks, gaps, paths narrower than a few pixels) is
// merged into one shape whose hover title says what it stands for. The page
// says what it merged.
package timeline

import (
	"errors"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Timeline is one run, in wall-clock times.
//
// Times outside [Start, End] are drawn at the nearer edge (hover titles
// still give them exactly). Rows are Domains, top to bottom, followed by
// any domain the other fields name that Domains does not list, in the
// order they are first named.
type Timeline struct {
	// Title heads the page ("Timeline" if empty).
	Title string
	// Summary holds lines shown under the title.
	Summary []string
	// Start and End bound the run; End must not be before Start and
	// neither may be zero.
	Start, End time.Time
	// Domains are the rows, top to bottom (e.g. "store", "disk",
	// "driver-a", "driver-b", "storage").
	Domains []string
	// Epochs are the group's epochs, in any order (drawn by Number).
	Epochs []Epoch
	// Faults are the injected faults, each on its Target's row.
	Faults []Fault
	// Fences are the fences a resource applied; Domain is the resource
	// ("storage" if empty), Epoch the fence's epoch.
	Fences []Mark
	// Refused are stale requests the resource's guard refused; Domain is
	// the resource ("storage" if empty), Epoch the request's epoch.
	Refused []Mark
	// Stale are stale writes the resource applied (a violation: lease
	// mode can let them land); Domain is the resource ("storage" if
	// empty), Epoch the write's epoch.
	Stale []Mark
	// Gaps are the service gaps (spans without an acknowledged write);
	// they are shaded across all rows and Domain is ignored.
	Gaps []Span
	// Paths are the spans during which the disk sent through a driver:
	// Domain is the driver, From/To the span. They are drawn as a band on
	// the PathRow row.
	Paths []Span
	// PathRow is the row the Paths band is drawn on ("disk" if empty).
	PathRow string
	// Acks are the times at which writes were acknowledged; they are
	// counted per time bucket in a strip under the rows.
	Acks []time.Time
}

// Epoch is one epoch of the group.
type Epoch struct {
	// Number is the epoch number.
	Number uint64
	// Members are the epoch's members. A row is shaded as "not a member"
	// during an epoch only if its domain is a member of some epoch, so
	// rows that never take part (the store) stay clear.
	Members []string
	// Quiescing is when the epoch was written as quiescing (zero if not
	// known, e.g. the first epoch), Connected when it connected (zero if
	// it never did within the run). The epoch lasts until the next one
	// starts, or to End.
	Quiescing, Connected time.Time
	// Reason says why the epoch was started (e.g. the fault report).
	Reason string
}

// Fault is one injected fault.
type Fault struct {
	// Kind is the fault's kind ("killed", "stopped", "cut-off", ...),
	// the label drawn on the row.
	Kind string
	// Target is the faulted domain: the row the fault is drawn on.
	Target string
	// At is when the fault began, Until when it ended; Until zero (or not
	// after At) makes the fault instantaneous (e.g. a kill).
	At, Until time.Time
	// Detail is shown in the fault's hover title.
	Detail string
}

// Mark is an event at a point in time on one row.
type Mark struct {
	// Domain is the row.
	Domain string
	// At is when it happened.
	At time.Time
	// Epoch is the epoch the event is about (the fence's, or the stale
	// request's).
	Epoch uint64
	// Label is shown in the mark's hover title.
	Label string
}

// Span is an interval of time, on one row where that matters.
type Span struct {
	// Domain is the row, or for Timeline.Paths the driver.
	Domain string
	// From and To bound the span.
	From, To time.Time
	// Label is shown in the span's hover title.
	Label string
}

// DefaultResource is the row marks with an empty Domain are drawn on.
const DefaultResource = "storage"

// DefaultPathRow is the row the Paths band is drawn on when
// Timeline.PathRow is empty.
const DefaultPathRow = "disk"

// unknownDomain names the row of a fault or path without a domain.
const unknownDomain = "(unknown)"

// Errors of WriteHTML.
var (
	// ErrTimes means Start or End is zero, or End is before Start.
	ErrTimes = errors.New("timeline: End is before Start, or one of them is zero")
	// ErrNil means WriteHTML was called on a nil Timeline.
	ErrNil = errors.New("timeline: nil Timeline")
)

// WriteHTML writes the page. It does not modify t. It returns ErrTimes if
// End is before Start or either is zero, and any error of w.
func (t *Timeline) WriteHTML(w io.Writer) error {
	if t == nil {
		return ErrNil
	}
	if t.Start.IsZero() || t.End.IsZero() || t.End.Before(t.Start) {
		return ErrTimes
	}
	r := newRun(t)
	return writePage(w, r)
}

// run is a Timeline prepared for drawing: user strings made safe for
// XML, rows resolved, slices sorted (copies; the Timeline is untouched).
type run struct {
	t          *Timeline // for times and acks only
	title      string
	summary    []string
	start, end time.Time
	dur        time.Duration // End - Start
	scale      time.Duration // dur, at least 1 ns: the axis' length
	rows       []string
	rowIdx     map[string]int
	pathRow    string
	epochs     []Epoch
	faults     []Fault
	fences     []Mark
	refused    []Mark
	stale      []Mark
	gaps       []Span
	paths      []Span
	drivers    []string // Paths' domains, in order of first use
	notes      []string // what the drawing merged or left out
}

func newRun(t *Timeline) *run {
	r := &run{
		t:      t,
		title:  clean(t.Title),
		start:  t.Start,
		end:    t.End,
		dur:    t.End.Sub(t.Start),
		rowIdx: map[string]int{},
	}
	if r.title == "" {
		r.title = "Timeline"
	}
	r.scale = max(r.dur, 1)
	for _, s := range t.Summary {
		r.summary = append(r.summary, clean(s))
	}
	for _, d := range t.Domains {
		r.row(clean(d))
	}
	for _, e := range t.Epochs {
		e.Members = cleanAll(e.Members)
		e.Reason = clean(e.Reason)
		r.epochs = append(r.epochs, e)
	}
	slices.SortStableFunc(r.epochs, func(a, b Epoch) int {
		switch {
		case a.Number < b.Number:
			return -1
		case a.Number > b.Number:
			return 1
		}
		return epochStart(a).Compare(epochStart(b))
	})
	for _, f := range t.Faults {
		f.Kind, f.Target, f.Detail = clean(f.Kind), orUnknown(clean(f.Target)), clean(f.Detail)
		r.row(f.Target)
		r.faults = append(r.faults, f)
	}
	slices.SortStableFunc(r.faults, func(a, b Fault) int { return a.At.Compare(b.At) })
	r.pathRow = clean(t.PathRow)
	if r.pathRow == "" {
		r.pathRow = DefaultPathRow
	}
	for _, p := range t.Paths {
		p.Domain, p.Label = orUnknown(clean(p.Domain)), clean(p.Label)
		r.paths = append(r.paths, p)
		if !slices.Contains(r.drivers, p.Domain) {
			r.drivers = append(r.drivers, p.Domain)
		}
	}
	if len(r.paths) > 0 {
		r.row(r.pathRow)
	}
	slices.SortStableFunc(r.paths, func(a, b Span) int { return a.From.Compare(b.From) })
	r.fences = r.marks(t.Fences)
	r.refused = r.marks(t.Refused)
	r.stale = r.marks(t.Stale)
	for _, g := range t.Gaps {
		g.Domain, g.Label = clean(g.Domain), clean(g.Label)
		r.gaps = append(r.gaps, g)
	}
	slices.SortStableFunc(r.gaps, func(a, b Span) int { return a.From.Compare(b.From) })
	return r
}

// row returns the index of domain d's row, adding the row if need be.
func (r *run) row(d string) int {
	if i, ok := r.rowIdx[d]; ok {
		return i
	}
	r.rowIdx[d] = len(r.rows)
	r.rows = append(r.rows, d)
	return len(r.rows) - 1
}

// marks copies ms with safe strings and resolved rows, sorted by time.
func (r *run) marks(ms []Mark) []Mark {
	out := make([]Mark, 0, len(ms))
	for _, m := range ms {
		m.Domain, m.Label = clean(m.Domain), clean(m.Label)
		if m.Domain == "" {
			m.Domain = DefaultResource
		}
		r.row(m.Domain)
		out = append(out, m)
	}
	slices.SortStableFunc(out, func(a, b Mark) int { return a.At.Compare(b.At) })
	return out
}

// epochStart is when epoch e began: quiescing, else connected.
func epochStart(e Epoch) time.Time {
	if !e.Quiescing.IsZero() {
		return e.Quiescing
	}
	return e.Connected
}

func orUnknown(s string) string {
	if s == "" {
		return unknownDomain
	}
	return s
}

// clean makes s safe to put (escaped) into XML: invalid UTF-8 and the
// characters XML 1.0 does not allow become U+FFFD.
func clean(s string) string {
	ok := utf8.ValidString(s)
	if ok {
		for _, c := range s {
			if !xmlChar(c) {
				ok = false
				break
			}
		}
	}
	if ok {
		return s
	}
	return strings.Map(func(c rune) rune {
		if !xmlChar(c) {
			return utf8.RuneError
		}
		return c
	}, strings.ToValidUTF8(s, string(utf8.RuneError)))
}

func cleanAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = clean(s)
	}
	return out
}

// xmlChar reports whether c may appear in an XML 1.0 document.
func xmlChar(c rune) bool {
	return c == 0x9 || c == 0xA || c == 0xD ||
		(c >= 0x20 && c <= 0xD7FF) ||
		(c >= 0xE000 && c <= 0xFFFD) ||
		(c >= 0x10000 && c <= 0x10FFFF)
}
