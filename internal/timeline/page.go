package timeline

import (
	"bufio"
	"fmt"
	"html/template"
	"io"
	"time"
)

// maxTableRows caps each table under the chart.
const maxTableRows = 100

// page is what the page template shows.
type page struct {
	Title   string
	Summary []string
	Run     string
	Counts  string
	Stale   string
	SVG     template.HTML
	Notes   []string
	Gaps    []string
	Epochs  table
	Faults  table
	Marks   table
}

// table is a capped table.
type table struct {
	Total int
	Rows  [][]string
	More  int
}

func (t *table) add(cells ...string) {
	t.Total++
	if len(t.Rows) < maxTableRows {
		t.Rows = append(t.Rows, cells)
	} else {
		t.More++
	}
}

func writePage(w io.Writer, r *run) error {
	p := page{
		Title:   r.title,
		Summary: r.summary,
		Run: fmt.Sprintf("Run of %s, from %s to %s; times are given from the start.",
			fmtDur(r.dur), r.start.Format("2006-01-02 15:04:05.000 MST"), r.end.Format("15:04:05.000 MST")),
		Counts: fmt.Sprintf("%d epochs, %d faults, %d fences, %d stale requests refused, %d stale writes landed, %d service gaps, %d writes acknowledged.",
			len(r.epochs), len(r.faults), len(r.fences), len(r.refused), len(r.stale), len(r.gaps), len(r.t.Acks)),
	}
	p.SVG = template.HTML(r.svg()) // every user string in it is escaped
	p.Notes = r.notes
	if n := len(r.stale); n > 0 {
		what := "1 stale write of an ended epoch was"
		if n > 1 {
			what = fmt.Sprintf("%d stale writes of ended epochs were", n)
		}
		p.Stale = fmt.Sprintf("Violation: %s applied by the resource (first at %s, on %s).", what, r.off(r.stale[0].At), r.stale[0].Domain)
	}
	var longest time.Duration
	for i, g := range r.gaps {
		d := max(g.To.Sub(g.From), 0)
		longest = max(longest, d)
		if i < maxTableRows {
			l := fmt.Sprintf("%s from %s to %s", fmtDur(d), r.off(g.From), r.off(g.To))
			if g.Label != "" {
				l += ": " + g.Label
			}
			p.Gaps = append(p.Gaps, l)
		}
	}
	if len(r.gaps) > maxTableRows {
		p.Gaps = append(p.Gaps, fmt.Sprintf("… and %d more", len(r.gaps)-maxTableRows))
	}
	if len(r.gaps) > 1 {
		p.Gaps = append([]string{"longest " + fmtDur(longest)}, p.Gaps...)
	}
	opt := func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return r.off(t)
	}
	for _, e := range r.epochs {
		took := "–"
		if !e.Quiescing.IsZero() && !e.Connected.IsZero() {
			took = fmtDur(e.Connected.Sub(e.Quiescing))
		}
		p.Epochs.add(fmt.Sprint(e.Number), opt(e.Quiescing), opt(e.Connected), took, members(e.Members), e.Reason)
	}
	for _, f := range r.faults {
		until, long := "–", "instant"
		if f.Until.After(f.At) {
			until, long = r.off(f.Until), fmtDur(f.Until.Sub(f.At))
		}
		p.Faults.add(f.Kind, f.Target, r.off(f.At), until, long, f.Detail)
	}
	for _, m := range r.stale {
		p.Marks.add("STALE write landed", m.Domain, fmt.Sprint(m.Epoch), r.off(m.At), m.Label)
	}
	for _, m := range r.fences {
		p.Marks.add("fence", m.Domain, fmt.Sprint(m.Epoch), r.off(m.At), m.Label)
	}
	for _, m := range r.refused {
		p.Marks.add("refused", m.Domain, fmt.Sprint(m.Epoch), r.off(m.At), m.Label)
	}
	bw := bufio.NewWriter(w)
	if err := pageTmpl.Execute(bw, p); err != nil {
		return err
	}
	return bw.Flush()
}

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:16px 24px;max-width:1240px}
h1{font-size:20px;margin:0 0 6px}
h2{font-size:15px;margin:18px 0 6px}
.summary{margin:4px 0 8px;padding-left:20px}
.meta{color:#555;margin:2px 0}
.alarm{background:#c51b8a;color:#fff;font-weight:700;padding:6px 10px;border-radius:3px}
figure{margin:10px 0;overflow-x:auto}
figure svg{max-width:100%;height:auto}
.notes{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
details{margin:6px 0}
summary{cursor:pointer;font-weight:600}
</style>
</head>
<body>
<h1>{{.Title}}</h1>
{{with .Stale}}<p class="alarm">{{.}}</p>
{{end}}{{with .Summary}}<ul class="summary">
{{range .}}<li>{{.}}</li>
{{end}}</ul>
{{end}}<p class="meta">{{.Run}}</p>
<p class="meta">{{.Counts}}</p>
<figure>
{{.SVG}}
</figure>
<p class="notes">How to read it: time runs left to right; the epoch lane at the top shows each epoch from when it was written as quiescing (hatched) to when it connected (solid) and on to the next; faults sit on the faulted domain's row; fences, refused and landed stale requests on the resource's row; service gaps (no write acknowledged) are shaded across all rows; the strip at the bottom counts acknowledged writes per time bucket. Hover over a shape for its details.</p>
{{with .Notes}}<h2>Rendering notes</h2>
<ul class="notes">
{{range .}}<li>{{.}}</li>
{{end}}</ul>
{{end}}<h2>Service gaps</h2>
{{with .Gaps}}<ul>
{{range .}}<li>{{.}}</li>
{{end}}</ul>
{{else}}<p>None.</p>
{{end}}<details><summary>Epochs ({{.Epochs.Total}})</summary>
<table>
<tr><th>epoch</th><th>quiescing</th><th>connected</th><th>quiesce took</th><th>members</th><th>reason</th></tr>
{{range .Epochs.Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{with .Epochs.More}}<p>… and {{.}} more epochs, not listed.</p>
{{end}}</details>
<details><summary>Faults ({{.Faults.Total}})</summary>
<table>
<tr><th>kind</th><th>target</th><th>at</th><th>until</th><th>lasted</th><th>detail</th></tr>
{{range .Faults.Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{with .Faults.More}}<p>… and {{.}} more faults, not listed.</p>
{{end}}</details>
<details><summary>Fences, refused and stale requests ({{.Marks.Total}})</summary>
<table>
<tr><th>what</th><th>resource</th><th>epoch</th><th>at</th><th>label</th></tr>
{{range .Marks.Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{with .Marks.More}}<p>… and {{.}} more, not listed.</p>
{{end}}</details>
</body>
</html>
`))
