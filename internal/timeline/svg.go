package timeline

import (
	"fmt"
	"html"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Vertical layout, in SVG user units.
const (
	yEpoch   = 8.0
	epochH   = 36.0
	gapLaneH = 16.0
	rowH     = 44.0
	ackH     = 44.0
	axisH    = 30.0

	// minEpochPx: consecutive epochs narrower than this are merged into
	// one band until the band is this wide.
	minEpochPx = 6.0
	// binPx: marks of a kind on a row less than this apart are drawn as
	// one; staleBinPx for stale writes, whose marks are wider.
	binPx      = 2.0
	staleBinPx = 10.0
	// maxStaleLines: stale writes are drawn with a line across all rows
	// if there are no more marks than this.
	maxStaleLines = 40
	// narrowPx: faults narrower than this that come within nearPx of
	// each other are drawn as one.
	narrowPx = 8.0
	nearPx   = 3.0
	// maxShapes: a row with more fault shapes than this has all faults
	// within nearPx of each other merged, wide or not.
	maxShapes = 150
	// maxLines caps the items listed in one hover title.
	maxLines = 6
	// maxDrivers is the number of distinct path colours.
	maxDrivers = 6
)

// esc escapes s for XML text and attribute values.
func esc(s string) string { return html.EscapeString(s) }

// svgW accumulates the SVG markup.
type svgW struct{ strings.Builder }

// shape writes the element open (e.g. `<rect x="1"`), then a hover title
// if there is one.
func (s *svgW) shape(name, open, title string) {
	s.WriteString("<")
	s.WriteString(name)
	s.WriteString(" ")
	s.WriteString(open)
	if title == "" {
		s.WriteString("/>")
		return
	}
	s.WriteString("><title>")
	s.WriteString(esc(title))
	s.WriteString("</title></")
	s.WriteString(name)
	s.WriteString(">")
}

func (s *svgW) rect(x, y, w, h float64, class, title string) {
	s.shape("rect", fmt.Sprintf(`x="%s" y="%s" width="%s" height="%s" class="%s"`, ff(x), ff(y), ff(max(w, 0)), ff(max(h, 0)), class), title)
}

func (s *svgW) line(x1, y1, x2, y2 float64, class, title string) {
	s.shape("line", fmt.Sprintf(`x1="%s" y1="%s" x2="%s" y2="%s" class="%s"`, ff(x1), ff(y1), ff(x2), ff(y2), class), title)
}

func (s *svgW) poly(class, title string, pts ...float64) {
	var b strings.Builder
	for i := 0; i+1 < len(pts); i += 2 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(ff(pts[i]) + "," + ff(pts[i+1]))
	}
	s.shape("polygon", fmt.Sprintf(`points="%s" class="%s"`, b.String(), class), title)
}

// text writes a text; anchor is "", "middle" or "end".
func (s *svgW) text(x, y float64, class, anchor, txt, title string) {
	fmt.Fprintf(s, `<text x="%s" y="%s"`, ff(x), ff(y))
	if class != "" {
		fmt.Fprintf(s, ` class="%s"`, class)
	}
	if anchor != "" {
		fmt.Fprintf(s, ` text-anchor="%s"`, anchor)
	}
	s.WriteString(">")
	s.WriteString(esc(txt))
	if title != "" {
		s.WriteString("<title>" + esc(title) + "</title>")
	}
	s.WriteString("</text>")
}

// lane keeps labels on one line from overlapping.
type lane struct{ used [][2]float64 }

// take reserves [x0, x1] (plus a margin) if it is free and inside the
// plot, and reports whether it did.
func (l *lane) take(x0, x1 float64) bool {
	if x0 < left-1 || x1 > width-2 {
		return false
	}
	for _, u := range l.used {
		if x0 < u[1]+4 && x1+4 > u[0] {
			return false
		}
	}
	l.used = append(l.used, [2]float64{x0, x1})
	return true
}

// labelAt is where beside placed a label.
type labelAt struct {
	x      float64
	anchor string
	ok     bool
}

// beside places a label of width w next to the mark at x, pad away from
// it: to its right, or else to its left.
func (l *lane) beside(x, pad, w float64) labelAt {
	if l.take(x+pad, x+pad+w) {
		return labelAt{x + pad, "", true}
	}
	if l.take(x-pad-w, x-pad) {
		return labelAt{x - pad, "end", true}
	}
	return labelAt{}
}

// seg is one drawn shape standing for one or more items.
type seg struct {
	x0, x1   float64
	from, to time.Time
	key      string // kind, driver, ...; "" when merged items differ
	n        int
	one      string   // the hover title when the seg stands for one item
	lines    []string // short lines, one per item, for merged segs
	instant  bool
	lo, hi   uint64        // epoch range
	long     time.Duration // the longest item
}

// absorb merges b into a.
func (a *seg) absorb(b seg) {
	a.x0, a.x1 = min(a.x0, b.x0), max(a.x1, b.x1)
	if b.from.Before(a.from) {
		a.from = b.from
	}
	if b.to.After(a.to) {
		a.to = b.to
	}
	a.one = ""
	if a.key != b.key {
		a.key = ""
	}
	a.n += b.n
	for _, l := range b.lines {
		if len(a.lines) < maxLines {
			a.lines = append(a.lines, l)
		}
	}
	a.instant = a.instant && b.instant
	a.lo, a.hi = min(a.lo, b.lo), max(a.hi, b.hi)
	a.long = max(a.long, b.long)
}

// title is the hover title: one's for a single item with one, else the
// head and the items' lines, saying how many are left out.
func (a *seg) title(head string) string {
	if a.n == 1 && a.one != "" {
		return a.one
	}
	lines := append([]string{head}, a.lines...)
	if more := a.n - len(a.lines); more > 0 {
		lines = append(lines, fmt.Sprintf("… and %d more", more))
	}
	return strings.Join(lines, "\n")
}

// cluster merges consecutive segs (sorted by x0) for which join says so.
func cluster(in []seg, join func(c, s *seg) bool) []seg {
	var out []seg
	for _, s := range in {
		if n := len(out); n > 0 && join(&out[n-1], &s) {
			out[n-1].absorb(s)
			continue
		}
		out = append(out, s)
	}
	return out
}

// near reports whether s starts within nearPx of c's end.
func near(c, s *seg) bool { return s.x0 <= c.x1+nearPx }

// bins merges marks of a row less than px to the right of the first mark
// of a seg into that seg; what heads the hover title of a single mark.
func (r *run) bins(ms []Mark, what string, px float64) []seg {
	var out []seg
	for _, m := range ms {
		x := r.x(m.At)
		short := fmt.Sprintf("e%d %s", m.Epoch, r.off(m.At))
		one := fmt.Sprintf("%s e%d by %s at %s", what, m.Epoch, m.Domain, r.at(m.At))
		if m.Label != "" {
			short += " " + m.Label
			one += "\n" + m.Label
		}
		s := seg{x0: x, x1: x, from: m.At, to: m.At, key: m.Domain, n: 1, one: one, lines: []string{short}, lo: m.Epoch, hi: m.Epoch}
		// Marks are sorted by time: look back over the marks less than
		// binPx to the left for one of the same row.
		merged := false
		for i := len(out) - 1; i >= 0 && x-out[i].x0 < px; i-- {
			if out[i].key == m.Domain {
				out[i].absorb(s)
				merged = true
				break
			}
		}
		if !merged {
			out = append(out, s)
		}
	}
	return out
}

// epochRange formats the epoch range of a seg: e4 or e4–e9.
func epochRange(lo, hi uint64) string {
	if lo == hi {
		return "e" + strconv.FormatUint(lo, 10)
	}
	return "e" + strconv.FormatUint(lo, 10) + "–e" + strconv.FormatUint(hi, 10)
}

// band is an epoch drawn on the epoch lane, or a run of merged ones.
type band struct {
	seg
	e         Epoch // the epoch, if n == 1
	conn, end time.Time
}

// epochBands lays the epochs out in time, merging runs of narrow ones.
func (r *run) epochBands() (bands []band, skipped int) {
	var es []Epoch
	for _, e := range r.epochs {
		if epochStart(e).IsZero() {
			skipped++
			continue
		}
		es = append(es, e)
	}
	for i, e := range es {
		from := epochStart(e)
		to := r.end
		if i+1 < len(es) {
			to = epochStart(es[i+1])
		}
		if to.Before(from) {
			to = from
		}
		b := band{
			seg:  seg{x0: r.x(from), x1: r.x(to), from: from, to: to, n: 1, lo: e.Number, hi: e.Number},
			e:    e,
			conn: e.Connected,
			end:  to,
		}
		b.lines = []string{fmt.Sprintf("e%d %s – %s", e.Number, r.off(from), r.off(to))}
		if n := len(bands); n > 0 {
			c := &bands[n-1]
			if c.x1-c.x0 < minEpochPx && b.x1-b.x0 < minEpochPx && b.x0 <= c.x1+0.5 {
				c.absorb(b.seg)
				c.end = b.end
				continue
			}
		}
		bands = append(bands, b)
	}
	return bands, skipped
}

// epochTitle is the hover title of a single epoch.
func (r *run) epochTitle(b *band) string {
	e := b.e
	var lines []string
	lines = append(lines, fmt.Sprintf("epoch %d", e.Number))
	lines = append(lines, "members: "+members(e.Members))
	if !e.Quiescing.IsZero() {
		lines = append(lines, "quiescing "+r.at(e.Quiescing))
	}
	if !e.Connected.IsZero() {
		lines = append(lines, "connected "+r.at(e.Connected))
		if !e.Quiescing.IsZero() {
			lines = append(lines, "quiesce took "+fmtDur(e.Connected.Sub(e.Quiescing)))
		}
	} else {
		lines = append(lines, "never connected in the run")
	}
	lines = append(lines, "until "+r.at(b.end))
	if e.Reason != "" {
		lines = append(lines, "reason: "+e.Reason)
	}
	return strings.Join(lines, "\n")
}

func members(ms []string) string {
	if len(ms) == 0 {
		return "(none)"
	}
	return strings.Join(ms, ", ")
}

// svg renders the chart.
func (r *run) svg() string {
	n := len(r.rows)
	yGap := yEpoch + epochH
	yRows := yGap + gapLaneH
	yAck := yRows + float64(n)*rowH + 4
	yAxis := yAck + ackH
	yLegend := yAxis + axisH + 4
	bottom := yAck + ackH // where lines across all rows end
	legend, legendH := r.legend(yLegend)
	height := yLegend + legendH + 6

	var s svgW
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" class="tl" viewBox="0 0 %s %s" width="%s" height="%s" role="img" aria-label="%s">`,
		ff(width), ff(height), ff(width), ff(height), esc(r.title))
	s.WriteString("\n")
	s.WriteString(svgDefs)
	s.WriteString("\n")

	// Rows, their labels and the time grid.
	ticks := r.ticks()
	s.text(left-8, yEpoch+epochH/2+4, "b", "end", "epochs", "")
	for i, d := range r.rows {
		y := yRows + float64(i)*rowH
		s.rect(left, y, plotW, rowH, "r"+strconv.Itoa(i%2), "")
		label, title := d, ""
		if len([]rune(d)) > 18 {
			label, title = string([]rune(d)[:17])+"…", d
		}
		if d == r.pathRow && len(r.paths) > 0 {
			s.text(left-8, y+rowH/2, "b rl", "end", label, title)
			s.text(left-8, y+rowH/2+12, "sm", "end", "path below", "")
		} else {
			s.text(left-8, y+rowH/2+4, "b rl", "end", label, title)
		}
	}
	for _, t := range ticks {
		x := r.xd(t.at)
		s.line(x, yGap, x, bottom, "grid", "")
	}
	s.WriteString("\n")

	// Rows a member domain was not part of the current epoch.
	bands, skipped := r.epochBands()
	s.WriteString(r.notMembers(yRows))

	// Service gaps, shaded across everything.
	var gapLane lane
	var gaps []seg
	for _, g := range r.gaps {
		to := g.To
		if to.Before(g.From) {
			to = g.From
		}
		one := fmt.Sprintf("service gap %s\nfrom %s\nto %s", fmtDur(to.Sub(g.From)), r.at(g.From), r.at(to))
		if g.Label != "" {
			one += "\n" + g.Label
		}
		short := fmt.Sprintf("%s at %s", fmtDur(to.Sub(g.From)), r.off(g.From))
		gaps = append(gaps, seg{x0: r.x(g.From), x1: r.x(to), from: g.From, to: to, n: 1, one: one, lines: []string{short}, long: to.Sub(g.From)})
	}
	gaps = cluster(gaps, near)
	for i := range gaps {
		g := &gaps[i]
		w := max(g.x1-g.x0, 1.5)
		var label, head string
		if g.n == 1 {
			label = "gap " + fmtDur(g.to.Sub(g.from))
		} else {
			label = fmt.Sprintf("%d gaps, max %s", g.n, fmtDur(g.long))
			head = fmt.Sprintf("%d service gaps from %s to %s, the longest %s", g.n, r.off(g.from), r.off(g.to), fmtDur(g.long))
		}
		s.rect(g.x0, yGap, w, bottom-yGap, "gap", g.title(head))
		tw := textW(label, smallW)
		x0 := g.x0 + w/2 - tw/2
		if gapLane.take(x0, x0+tw) {
			s.text(g.x0+w/2, yGap+gapLaneH-4, "sm gl h", "middle", label, "")
		}
	}
	if len(gaps) < len(r.gaps) {
		r.notes = append(r.notes, fmt.Sprintf("%d service gaps are drawn as %d shapes: gaps within %s px of each other are merged (hover for each).", len(r.gaps), len(gaps), ff(nearPx)))
	}
	s.WriteString("\n")

	// Epochs.
	merged, singles := 0, 0
	for i := range bands {
		b := &bands[i]
		w := max(b.x1-b.x0, 1)
		if b.n > 1 {
			merged++
			title := b.title(fmt.Sprintf("%d epochs merged (each narrower than %s px): %s, %s – %s",
				b.n, ff(minEpochPx), epochRange(b.lo, b.hi), r.off(b.from), r.off(b.end)))
			s.rect(b.x0, yEpoch, w, epochH, "em", title)
			if l := epochRange(b.lo, b.hi); textW(l, smallW)+4 <= w {
				s.text(b.x0+2, yEpoch+13, "sm", "", l, "")
			}
			continue
		}
		title := r.epochTitle(b)
		singles++
		xc := b.x1
		if !b.conn.IsZero() {
			xc = r.x(b.conn)
		}
		xc = min(max(xc, b.x0), b.x1)
		if xc > b.x0 {
			s.rect(b.x0, yEpoch, xc-b.x0, epochH, "eq", title)
		}
		if b.x1 > xc || b.x1 == b.x0 {
			s.rect(xc, yEpoch, max(b.x1-xc, 1), epochH, "e"+strconv.Itoa(singles%2), title)
		}
		if !b.conn.IsZero() {
			s.line(xc, yGap, xc, bottom, "eb", "")
		}
		num := "e" + strconv.FormatUint(b.e.Number, 10)
		if textW(num, charW)+4 <= w {
			s.text(b.x0+3, yEpoch+14, "b", "", num, "")
			if m := members(b.e.Members); textW(m, smallW)+5 <= w {
				s.text(b.x0+3, yEpoch+29, "sm", "", m, "")
			}
		}
	}
	if merged > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d epochs are drawn as %d bands: runs of consecutive epochs narrower than %s px are merged into grey hatched bands (hover for their range; the table below lists epochs one by one).", len(r.epochs)-skipped, len(bands), ff(minEpochPx)))
	}
	if skipped > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d epochs have neither a quiescing nor a connected time and are not drawn.", skipped))
	}
	s.WriteString("\n")

	lanes := make([]struct{ top, mid lane }, n)

	// The disk's path.
	if len(r.paths) > 0 {
		y := yRows + float64(r.rowIdx[r.pathRow])*rowH
		var ps []seg
		for _, p := range r.paths {
			to := p.To
			if to.Before(p.From) {
				to = p.From
			}
			short := fmt.Sprintf("%s %s (%s)", p.Domain, r.off(p.From), fmtDur(to.Sub(p.From)))
			one := fmt.Sprintf("%s sent through %s\nfrom %s\nto %s (%s)", r.pathRow, p.Domain, r.at(p.From), r.at(to), fmtDur(to.Sub(p.From)))
			if p.Label != "" {
				one += "\n" + p.Label
			}
			ps = append(ps, seg{x0: r.x(p.From), x1: r.x(to), from: p.From, to: to, key: p.Domain, n: 1, one: one, lines: []string{short}})
		}
		segs := cluster(ps, func(c, s *seg) bool {
			if s.x0 > c.x1+1 {
				return false
			}
			return c.key == s.key || (c.x1-c.x0 < binPx && s.x1-s.x0 < binPx)
		})
		for i := range segs {
			p := &segs[i]
			w := max(p.x1-p.x0, 1)
			class := "pm"
			head := fmt.Sprintf("%d path spans, mixed drivers", p.n)
			if p.key != "" {
				class = "p" + strconv.Itoa(r.driverIdx(p.key))
				head = fmt.Sprintf("%s sent through %s, %s – %s", r.pathRow, p.key, r.off(p.from), r.off(p.to))
			}
			title := p.title(head)
			s.rect(p.x0, y+19, w, 12, class, title)
			if p.key != "" && textW(p.key, smallW)+6 <= w && lanes[r.rowIdx[r.pathRow]].mid.take(p.x0, p.x0+textW(p.key, smallW)+3) {
				s.text(p.x0+3, y+28.5, "sm pl", "", p.key, "")
			}
		}
		if len(segs) < len(r.paths) {
			r.notes = append(r.notes, fmt.Sprintf("%d path spans are drawn as %d: touching spans of one driver are joined, and touching spans narrower than %s px are merged into grey ones.", len(r.paths), len(segs), ff(binPx)))
		}
	}
	s.WriteString("\n")

	// Faults, per row.
	byRow := make([][]seg, n)
	for _, f := range r.faults {
		until := f.Until
		instant := until.IsZero() || !until.After(f.At)
		var one, short string
		if instant {
			until = f.At
			one = fmt.Sprintf("fault: %s %s at %s", f.Target, f.Kind, r.at(f.At))
			short = fmt.Sprintf("%s %s", f.Kind, r.off(f.At))
		} else {
			one = fmt.Sprintf("fault: %s %s from %s to %s (%s)", f.Target, f.Kind, r.at(f.At), r.at(until), fmtDur(until.Sub(f.At)))
			short = fmt.Sprintf("%s %s (%s)", f.Kind, r.off(f.At), fmtDur(until.Sub(f.At)))
		}
		if f.Detail != "" {
			one += "\n" + f.Detail
		}
		i := r.rowIdx[f.Target]
		byRow[i] = append(byRow[i], seg{x0: r.x(f.At), x1: r.x(until), from: f.At, to: until, key: f.Kind, n: 1, one: one, lines: []string{short}, instant: instant})
	}
	shapes := 0
	for i, fs := range byRow {
		slices.SortStableFunc(fs, func(a, b seg) int { return a.from.Compare(b.from) })
		c := cluster(fs, func(c, s *seg) bool {
			return near(c, s) && c.x1-c.x0 < narrowPx && s.x1-s.x0 < narrowPx
		})
		if len(c) > maxShapes {
			c = cluster(fs, near)
		}
		shapes += len(c)
		y := yRows + float64(i)*rowH
		for j := range c {
			f := &c[j]
			label := f.key
			switch {
			case f.n > 1 && f.key != "":
				label = fmt.Sprintf("%s ×%d", f.key, f.n)
			case f.n > 1:
				label = fmt.Sprintf("%d faults", f.n)
			}
			head := "fault"
			if f.n > 1 {
				head = fmt.Sprintf("%d faults", f.n)
			}
			title := f.title(head)
			lx := f.x0 + 3
			if f.instant {
				s.line(f.x0, y+3, f.x0, y+rowH-2, "fk", title)
				s.poly("fi", title, f.x0-5, y+3, f.x0+5, y+3, f.x0, y+12)
				lx = f.x0 + 7
			} else {
				s.rect(f.x0, y+3, max(f.x1-f.x0, 2), 14, "f", title)
			}
			if tw := textW(label, charW); lanes[i].top.take(lx, lx+tw) {
				s.text(lx, y+14, "fl h", "", label, "")
			}
		}
	}
	if shapes < len(r.faults) {
		r.notes = append(r.notes, fmt.Sprintf("%d faults are drawn as %d shapes: faults narrower than %s px within %s px of each other on a row are merged (on a row with more than %d shapes, all that near each other are; hover for each, the table below lists them).", len(r.faults), shapes, ff(narrowPx), ff(nearPx), maxShapes))
	}
	s.WriteString("\n")

	// Stale writes landed: reserve their labels first, draw them last.
	stale := r.bins(r.stale, "VIOLATION: stale write applied", staleBinPx)
	staleLabels := make([]labelAt, len(stale))
	for i := range stale {
		st := &stale[i]
		l := "STALE " + epochRange(st.lo, st.hi)
		staleLabels[i] = lanes[r.rowIdx[st.key]].mid.beside(st.x0, 5, textW(l, charW))
	}

	// Fences.
	fences := r.bins(r.fences, "fence", binPx)
	for i := range fences {
		fe := &fences[i]
		row := r.rowIdx[fe.key]
		y := yRows + float64(row)*rowH
		head := fmt.Sprintf("fence %s raised at %s", epochRange(fe.lo, fe.hi), fe.key)
		if fe.n > 1 {
			head = fmt.Sprintf("%d fences (%s) at %s", fe.n, epochRange(fe.lo, fe.hi), fe.key)
		}
		title := fe.title(head)
		s.line(fe.x0, y+1, fe.x0, y+rowH-1, "fe", title)
		l := epochRange(fe.lo, fe.hi)
		if at := lanes[row].mid.beside(fe.x0, 3, textW(l, smallW)); at.ok {
			s.text(at.x, y+28.5, "sm fel h", at.anchor, l, "")
		}
	}
	r.binNote(len(r.fences), len(fences), "fences")

	// Refused stale requests.
	refused := r.bins(r.refused, "stale request refused", binPx)
	for i := range refused {
		rf := &refused[i]
		y := yRows + float64(r.rowIdx[rf.key])*rowH
		head := fmt.Sprintf("stale request refused (%s) by %s", epochRange(rf.lo, rf.hi), rf.key)
		if rf.n > 1 {
			head = fmt.Sprintf("%d stale requests refused (%s) by %s", rf.n, epochRange(rf.lo, rf.hi), rf.key)
		}
		s.rect(rf.x0-1, y+32, 2, 10, "rf", rf.title(head))
	}
	r.binNote(len(r.refused), len(refused), "refused requests")
	s.WriteString("\n")

	// Stale writes landed, loud.
	for i := range stale {
		st := &stale[i]
		y := yRows + float64(r.rowIdx[st.key])*rowH
		head := fmt.Sprintf("VIOLATION: stale write (%s) applied by %s", epochRange(st.lo, st.hi), st.key)
		if st.n > 1 {
			head = fmt.Sprintf("VIOLATION: %d stale writes (%s) applied by %s", st.n, epochRange(st.lo, st.hi), st.key)
		}
		title := st.title(head)
		if len(stale) <= maxStaleLines {
			s.line(st.x0, yGap, st.x0, bottom, "st", title)
		}
		s.poly("stm", title, st.x0-7, y+rowH-1, st.x0+7, y+rowH-1, st.x0, y+rowH-15)
		if at := staleLabels[i]; at.ok {
			s.text(at.x, y+29, "stl h", at.anchor, "STALE "+epochRange(st.lo, st.hi), "")
		}
	}
	if len(stale) < len(r.stale) {
		r.notes = append(r.notes, fmt.Sprintf("%d stale writes are drawn as %d marks: stale writes on a row less than %s px apart are drawn as one (hover for counts; the table below lists them first).", len(r.stale), len(stale), ff(staleBinPx)))
	}
	if len(stale) > maxStaleLines {
		r.notes = append(r.notes, fmt.Sprintf("With more than %d stale marks, they are not drawn with lines across all rows.", maxStaleLines))
	}
	s.WriteString("\n")

	// Acknowledgements per bucket.
	s.WriteString(r.acks(yAck))

	// Time axis.
	s.line(left, yAxis, left+plotW, yAxis, "ax", "")
	for _, t := range ticks {
		x := r.xd(t.at)
		s.line(x, yAxis, x, yAxis+5, "ax", "")
		anchor := "middle"
		switch {
		case t.at == 0:
			anchor = "start"
		case x+textW(t.label, charW)/2 > width-2:
			anchor = "end"
		}
		s.text(x, yAxis+17, "", anchor, t.label, "")
	}
	s.text(left-8, yAxis+17, "sm", "end", "time since start", "")
	s.WriteString("\n")

	s.WriteString(legend)
	s.WriteString("</svg>")
	return s.String()
}

func (r *run) binNote(items, shapes int, what string) {
	if shapes < items {
		r.notes = append(r.notes, fmt.Sprintf("%d %s are drawn as %d marks: marks on a row less than %s px apart are drawn as one (hover for counts).", items, what, shapes, ff(binPx)))
	}
}

// driverIdx is the colour index of a driver's path.
func (r *run) driverIdx(d string) int {
	return slices.Index(r.drivers, d) % maxDrivers
}

// notMembers shades, on the rows of domains that are members of some
// epoch, the epochs they are not members of.
func (r *run) notMembers(yRows float64) string {
	ever := map[string]bool{}
	for _, e := range r.epochs {
		for _, m := range e.Members {
			ever[m] = true
		}
	}
	var es []Epoch
	for _, e := range r.epochs {
		if !epochStart(e).IsZero() {
			es = append(es, e)
		}
	}
	var s svgW
	for row, d := range r.rows {
		if !ever[d] {
			continue
		}
		var out []seg
		for i, e := range es {
			if slices.Contains(e.Members, d) {
				continue
			}
			from := epochStart(e)
			to := r.end
			if i+1 < len(es) {
				to = epochStart(es[i+1])
			}
			if to.Before(from) {
				to = from
			}
			out = append(out, seg{x0: r.x(from), x1: r.x(to), from: from, to: to, n: 1, lo: e.Number, hi: e.Number})
		}
		out = cluster(out, func(c, s *seg) bool { return s.x0 <= c.x1+1 })
		y := yRows + float64(row)*rowH
		for _, o := range out {
			if o.x1-o.x0 < 0.5 {
				continue
			}
			title := fmt.Sprintf("%s is not a member of %s (%s – %s)", d, epochRange(o.lo, o.hi), r.off(o.from), r.off(o.to))
			if o.n > 1 {
				title = fmt.Sprintf("%s is not a member of %d epochs in %s (%s – %s)", d, o.n, epochRange(o.lo, o.hi), r.off(o.from), r.off(o.to))
			}
			s.rect(o.x0, y, o.x1-o.x0, rowH, "nm", title)
		}
	}
	return s.String()
}

// acks draws the acknowledgements per bucket.
func (r *run) acks(y float64) string {
	var s svgW
	b := r.bucket()
	nb := int(r.dur/b) + 1
	if r.dur%b == 0 && r.dur > 0 {
		nb--
	}
	counts := make([]int, nb)
	for _, a := range r.t.Acks {
		d := min(max(a.Sub(r.start), 0), r.dur)
		counts[min(int(d/b), nb-1)]++
	}
	top := slices.Max(counts)
	s.rect(left, y, plotW, ackH, "ab", "")
	s.text(left-8, y+ackH/2, "b", "end", "acks / "+fmtStep(b), "")
	s.text(left-8, y+ackH/2+12, "sm", "end", fmt.Sprintf("max %d, total %d", top, len(r.t.Acks)), "")
	if top == 0 {
		s.text(left+plotW/2, y+ackH/2+4, "sm", "middle", "no acknowledged writes", "")
		return s.String()
	}
	base := y + ackH - 3
	for i, c := range counts {
		if c == 0 {
			continue
		}
		from := time.Duration(i) * b
		to := min(from+b, r.dur)
		x0, x1 := r.xd(from), r.xd(to)
		h := float64(c) / float64(top) * (ackH - 8)
		s.rect(x0, base-h, max(x1-x0-0.3, 0.7), h, "ack",
			fmt.Sprintf("%d acks, %s – %s", c, r.off(r.start.Add(from)), r.off(r.start.Add(to))))
	}
	s.line(left, base, left+plotW, base, "ax", "")
	return s.String()
}

// legend draws the legend from y and returns it with its height.
func (r *run) legend(y float64) (string, float64) {
	type item struct {
		draw  func(s *svgW, x, y float64)
		label string
	}
	sw := func(class string) func(s *svgW, x, y float64) {
		return func(s *svgW, x, y float64) { s.rect(x, y-9, 16, 11, class, "") }
	}
	items := []item{
		{sw("e0"), "epoch (connected)"},
		{sw("eq"), "epoch quiescing"},
		{sw("em"), "merged epochs"},
		{sw("nm"), "not a member of the epoch"},
		{sw("f"), "fault (span)"},
		{func(s *svgW, x, y float64) { s.poly("fi", "", x+3, y-9, x+13, y-9, x+8, y) }, "fault (instant)"},
		{func(s *svgW, x, y float64) { s.line(x+8, y-11, x+8, y+3, "fe", "") }, "fence raised (epoch)"},
		{func(s *svgW, x, y float64) { s.rect(x+7, y-9, 2, 10, "rf", "") }, "stale request refused"},
		{func(s *svgW, x, y float64) {
			s.line(x+8, y-11, x+8, y+3, "st", "")
			s.poly("stm", "", x+2, y+2, x+14, y+2, x+8, y-8)
		}, "STALE write landed (violation)"},
		{sw("gap"), "service gap"},
	}
	for i, d := range r.drivers {
		if i == maxDrivers {
			items = append(items, item{sw("pm"), fmt.Sprintf("%d more drivers (colours repeat)", len(r.drivers)-maxDrivers)})
			break
		}
		items = append(items, item{sw("p" + strconv.Itoa(i)), "path via " + d})
	}
	items = append(items, item{sw("pm"), "mixed paths"}, item{sw("ack"), "acks per bucket"})

	var s svgW
	s.text(8, y+12, "b", "", "Legend", "")
	x, line := left, y+12
	for _, it := range items {
		w := 22 + textW(it.label, charW) + 18
		if x+w > width-right && x > left {
			x, line = left, line+18
		}
		it.draw(&s, x, line)
		s.text(x+22, line, "", "", it.label, "")
		x += w
	}
	return s.String(), line - y + 8
}

// svgDefs are the chart's styles and hatch patterns.
const svgDefs = `<defs>` +
	`<pattern id="tl-hq" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#eef5fb"/><line x1="0" y1="0" x2="0" y2="6" stroke="#6baed6" stroke-width="2"/></pattern>` +
	`<pattern id="tl-hm" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)"><rect width="5" height="5" fill="#d9d9d9"/><line x1="0" y1="0" x2="0" y2="5" stroke="#969696" stroke-width="2"/></pattern>` +
	`<pattern id="tl-hn" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="8" height="8" fill="#e6e6e6" fill-opacity="0.6"/><line x1="0" y1="0" x2="0" y2="8" stroke="#bdbdbd" stroke-width="1.5"/></pattern>` +
	`</defs>` +
	`<style>` +
	`.tl text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;fill:#222;pointer-events:none}.tl .rl{pointer-events:auto}` +
	`.tl .sm{font-size:9.5px}.tl .b{font-weight:600}.tl .h{paint-order:stroke;stroke:#fff;stroke-opacity:.85;stroke-width:3px;stroke-linejoin:round}` +
	`.tl .r0{fill:#fbfbfb}.tl .r1{fill:#f1f1f1}.tl .ab{fill:#f7fbff}` +
	`.tl .grid{stroke:#dcdcdc;stroke-width:1}.tl .ax{stroke:#777;stroke-width:1}` +
	`.tl .e0{fill:#c6dbef}.tl .e1{fill:#9ecae1}.tl .eq{fill:url(#tl-hq)}.tl .em{fill:url(#tl-hm)}` +
	`.tl .eb{stroke:#4292c6;stroke-width:1;stroke-dasharray:2 3}` +
	`.tl .nm{fill:url(#tl-hn)}` +
	`.tl .gap{fill:#ffe082;fill-opacity:.45;stroke:#f9a825;stroke-dasharray:4 2}.tl .gl{fill:#7a5c00;font-weight:600}` +
	`.tl .f{fill:#fdae6b;fill-opacity:.6;stroke:#e6550d}.tl .fi{fill:#e6550d}.tl .fk{stroke:#e6550d;stroke-width:1.5}.tl .fl{fill:#a63603;font-weight:600}` +
	`.tl .fe{stroke:#08519c;stroke-width:2}.tl .fel{fill:#08519c}` +
	`.tl .rf{fill:#e34a33}` +
	`.tl .st{stroke:#c51b8a;stroke-width:2.5}.tl .stm{fill:#c51b8a}.tl .stl{fill:#c51b8a;font-weight:700}` +
	`.tl .p0{fill:#1b9e77}.tl .p1{fill:#7570b3}.tl .p2{fill:#66a61e}.tl .p3{fill:#a6761d}.tl .p4{fill:#1f78b4}.tl .p5{fill:#666}.tl .pm{fill:#bbb}.tl .pl{fill:#fff}` +
	`.tl .ack{fill:#74a9cf}` +
	`</style>`
