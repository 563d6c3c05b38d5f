package timeline

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the files under testdata")

var t0 = time.Date(2026, 3, 14, 9, 26, 53, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// small is a hand-made 4 s run with one failover: driver-a is stopped,
// the disk fails over to driver-b in epoch 2, the storage fences epoch 1
// and later refuses driver-a's held writes.
func small() *Timeline {
	t := &Timeline{
		Title:   "idc scenario: stopped driver",
		Summary: []string{"fault: stopped driver-a past its lease", "service gap 410 ms; 3 stale writes refused"},
		Start:   t0,
		End:     at(4 * time.Second),
		Domains: []string{"store", "disk", "driver-a", "driver-b", "storage"},
		Epochs: []Epoch{
			{Number: 1, Members: []string{"disk", "driver-a", "driver-b", "storage"}, Connected: at(ms(50)), Reason: "group formed"},
			{Number: 2, Members: []string{"disk", "driver-b", "storage"}, Quiescing: at(ms(1500)), Connected: at(ms(1620)), Reason: "disk reported driver-a lost"},
		},
		Faults: []Fault{
			{Kind: "stopped", Target: "driver-a", At: at(ms(1400)), Until: at(ms(2900)), Detail: "SIGSTOP past its lease, forwarded writes held"},
			{Kind: "killed", Target: "driver-a", At: at(ms(3500)), Detail: "SIGKILL at the end"},
		},
		Fences:  []Mark{{Domain: "storage", At: at(ms(1580)), Epoch: 2, Label: "acknowledged"}},
		Refused: []Mark{{At: at(ms(2950)), Epoch: 1}, {At: at(ms(2951)), Epoch: 1}, {At: at(ms(2990)), Epoch: 1, Label: "block 7"}},
		Gaps:    []Span{{From: at(ms(1380)), To: at(ms(1790)), Label: "last ack via driver-a to first via driver-b"}},
		Paths: []Span{
			{Domain: "driver-a", From: at(0), To: at(ms(1400))},
			{Domain: "driver-b", From: at(ms(1790)), To: at(4 * time.Second)},
		},
	}
	for d := ms(5); d < 4*time.Second; d += ms(5) {
		if d > ms(1380) && d < ms(1790) {
			continue
		}
		t.Acks = append(t.Acks, at(d))
	}
	return t
}

// example is a 20 s run with three failovers, the last one in lease mode
// letting a stale write land; it is rendered to testdata/example.html.
func example() *Timeline {
	t := &Timeline{
		Title: "idc scenario: three failovers (example)",
		Summary: []string{
			"faults: driver-a stopped, driver-b cut off, driver-a killed",
			"fence mode for the first two failovers, lease mode for the third (a held write lands: the checker flags it)",
			"service gaps 420 ms, 1.31 s, 260 ms",
		},
		Start:   t0,
		End:     at(20 * time.Second),
		Domains: []string{"store", "disk", "driver-a", "driver-b", "storage"},
	}
	all := []string{"disk", "driver-a", "driver-b", "storage"}
	t.Epochs = []Epoch{
		{Number: 7, Members: all, Connected: at(ms(80)), Reason: "group formed"},
		{Number: 8, Members: []string{"disk", "driver-b", "storage"}, Quiescing: at(ms(4100)), Connected: at(ms(4230)), Reason: "disk reported driver-a lost"},
		{Number: 9, Members: all, Quiescing: at(ms(7300)), Connected: at(ms(7360)), Reason: "driver-a rejoined (new incarnation)"},
		{Number: 10, Members: []string{"disk", "driver-a", "storage"}, Quiescing: at(ms(9900)), Connected: at(ms(11150)), Reason: "disk reported driver-b lost; lease of driver-b waited out"},
		{Number: 11, Members: all, Quiescing: at(ms(13500)), Connected: at(ms(13540)), Reason: "driver-b rejoined"},
		{Number: 12, Members: []string{"disk", "driver-b", "storage"}, Quiescing: at(ms(16050)), Connected: at(ms(16250)), Reason: "disk reported driver-a lost (lease mode)"},
	}
	t.Faults = []Fault{
		{Kind: "stopped", Target: "driver-a", At: at(ms(3900)), Until: at(ms(6800)), Detail: "SIGSTOP past its lease; 4 forwarded writes held on their way to the storage"},
		{Kind: "cut-off", Target: "driver-b", At: at(ms(9700)), Until: at(ms(12900)), Detail: "every connection held (blackhole)"},
		{Kind: "killed", Target: "driver-a", At: at(ms(15900)), Detail: "SIGKILL"},
		{Kind: "delay", Target: "driver-a", At: at(ms(15850)), Until: at(ms(17900)), Detail: "one write delayed on its way to the storage"},
	}
	t.Fences = []Mark{
		{Domain: "storage", At: at(ms(4190)), Epoch: 8},
		{Domain: "storage", At: at(ms(7330)), Epoch: 9},
		{Domain: "storage", At: at(ms(11100)), Epoch: 10},
		{Domain: "storage", At: at(ms(13520)), Epoch: 11},
	}
	for i := range 4 {
		t.Refused = append(t.Refused, Mark{Domain: "storage", At: at(ms(6850 + 3*i)), Epoch: 7, Label: fmt.Sprintf("block %d", 10+i)})
	}
	for i := range 6 {
		t.Refused = append(t.Refused, Mark{Domain: "storage", At: at(ms(12950 + 40*i)), Epoch: 9, Label: fmt.Sprintf("block %d", 30+i)})
	}
	t.Stale = []Mark{{Domain: "storage", At: at(ms(17950)), Epoch: 11, Label: "block 42 overwritten by a write of driver-a's old epoch"}}
	t.Gaps = []Span{
		{From: at(ms(3880)), To: at(ms(4300))},
		{From: at(ms(9690)), To: at(ms(11000))},
		{From: at(ms(15880)), To: at(ms(16140))},
	}
	t.Paths = []Span{
		{Domain: "driver-a", From: at(0), To: at(ms(3880))},
		{Domain: "driver-b", From: at(ms(4300)), To: at(ms(9690))},
		{Domain: "driver-a", From: at(ms(11000)), To: at(ms(15880))},
		{Domain: "driver-b", From: at(ms(16140)), To: at(20 * time.Second)},
	}
	for d := ms(3); d < 20*time.Second; d += ms(3) + ms(int(d/time.Second)%3) {
		in := false
		for _, g := range t.Gaps {
			if !at(d).Before(g.From) && at(d).Before(g.To) {
				in = true
			}
		}
		if !in {
			t.Acks = append(t.Acks, at(d))
		}
	}
	return t
}

func render(t *testing.T, tl *Timeline) string {
	t.Helper()
	var b bytes.Buffer
	if err := tl.WriteHTML(&b); err != nil {
		t.Fatalf("WriteHTML: %v", err)
	}
	return b.String()
}

// svgOf extracts the <svg> element and checks that it is well-formed XML;
// it returns the SVG and the character data of its text elements.
func svgOf(t *testing.T, page string) (string, []string) {
	t.Helper()
	i, j := strings.Index(page, "<svg"), strings.LastIndex(page, "</svg>")
	if i < 0 || j < i {
		t.Fatalf("no <svg> in the page")
	}
	svg := page[i : j+len("</svg>")]
	d := xml.NewDecoder(strings.NewReader(svg))
	d.Strict = true
	var texts []string
	var stack []string
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			stack = append(stack, tok.Name.Local)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 && (stack[len(stack)-1] == "text" || stack[len(stack)-1] == "title") {
				texts = append(texts, string(tok))
			}
		}
	}
	if len(stack) != 0 {
		t.Fatalf("unclosed elements: %v", stack)
	}
	return svg, texts
}

func containsAll(t *testing.T, what string, texts []string, want ...string) {
	t.Helper()
	all := strings.Join(texts, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

func TestSmallRun(t *testing.T) {
	page := render(t, small())
	_, texts := svgOf(t, page)
	containsAll(t, "the SVG's texts", texts,
		"e1", "e2", // epoch numbers
		"disk, driver-b, storage", // members
		"stopped", "killed",       // fault kinds
		"gap 410 ms", // gap duration
		"Legend", "epoch quiescing", "fence raised (epoch)", "stale request refused", "STALE write landed (violation)", "service gap", "path via driver-a", "path via driver-b",
		"store", "disk", "driver-a", "driver-b", "storage", // rows
		"2 stale requests refused (e1) by storage", // refused bin, hover
		"reason: disk reported driver-a lost",
		"members: disk, driver-b, storage",
		"quiesce took 120 ms",
		"driver-a is not a member of e2",
		"SIGSTOP past its lease",
		"acks / 20 ms",
	)
	containsAll(t, "the page", []string{page},
		"<title>idc scenario: stopped driver</title>",
		"<li>fault: stopped driver-a past its lease</li>",
		"410 ms from 1.380 s to 1.790 s",
	)
	if strings.Contains(page, "class=\"alarm\"") {
		t.Errorf("the page raises the stale alarm without stale writes")
	}
}

func TestEscaping(t *testing.T) {
	tl := small()
	tl.Title = `<script>alert("t")</script>`
	tl.Summary = []string{`<b>bold</b> & "quoted"`}
	tl.Domains = append(tl.Domains, "<x&y>")
	tl.Faults = append(tl.Faults, Fault{Kind: `"kind" & <k>`, Target: "<x&y>", At: at(ms(300)), Until: at(ms(900)), Detail: "]]> <!-- --> \x00 \xff"})
	tl.Epochs[1].Members = append(tl.Epochs[1].Members, "<x&y>")
	tl.Epochs[1].Reason = "'<reason>'"
	tl.Fences = append(tl.Fences, Mark{Domain: "<x&y>", At: at(ms(2000)), Epoch: 2, Label: "</title></svg>"})
	tl.Paths[0].Domain = "drv<&>"
	page := render(t, tl)
	svg, texts := svgOf(t, page)
	containsAll(t, "the SVG's texts", texts, "<x&y>", `"kind" & <k>`, "'<reason>'", "</title></svg>", "drv<&>")
	for _, raw := range []string{"<x&y>", "<script>", "<b>bold", `"kind" & <k>`, "</title></svg>", "drv<&>", "\x00"} {
		if strings.Contains(page, raw) {
			t.Errorf("the page holds %q unescaped", raw)
		}
	}
	if !strings.Contains(svg, "&lt;x&amp;y&gt;") {
		t.Errorf("the SVG lacks the escaped domain name")
	}
}

func TestNoEpochs(t *testing.T) {
	tl := &Timeline{Start: t0, End: at(2 * time.Second), Domains: []string{"disk", "storage"}}
	page := render(t, tl)
	_, texts := svgOf(t, page)
	containsAll(t, "the SVG's texts", texts, "Legend", "no acknowledged writes", "disk", "storage")
	containsAll(t, "the page", []string{page}, "<title>Timeline</title>", "Epochs (0)", "None.")
}

func TestInstantFault(t *testing.T) {
	tl := &Timeline{Start: t0, End: at(time.Second), Faults: []Fault{{Kind: "killed", Target: "driver-a", At: at(ms(500))}}}
	page := render(t, tl)
	svg, texts := svgOf(t, page)
	containsAll(t, "the SVG's texts", texts, "killed", "driver-a killed at 0.500 s", "driver-a")
	x := ff(left + plotW/2)
	if !strings.Contains(svg, `<line x1="`+x+`" y1=`) || !strings.Contains(svg, `class="fi"><title>`) {
		t.Errorf("no instant fault marker at x=%s", x)
	}
	if strings.Contains(svg, `class="f"><title>`) {
		t.Errorf("an instant fault drawn as a span")
	}
}

// coords returns the values of the attributes named in the SVG.
func coords(t *testing.T, svg string, names ...string) map[string][]float64 {
	t.Helper()
	out := map[string][]float64{}
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if se.Name.Local == "defs" {
			if err := d.Skip(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		for _, a := range se.Attr {
			for _, n := range names {
				if a.Name.Local == n {
					v, err := strconv.ParseFloat(a.Value, 64)
					if err != nil {
						t.Fatalf("%s=%q: %v", n, a.Value, err)
					}
					out[n] = append(out[n], v)
				}
			}
		}
	}
}

func TestClamp(t *testing.T) {
	tl := &Timeline{
		Start: t0, End: at(2 * time.Second),
		Domains: []string{"disk", "driver-a", "storage"},
		Epochs:  []Epoch{{Number: 3, Quiescing: at(-time.Second), Connected: at(-ms(500))}, {Number: 4, Quiescing: at(ms(1900)), Connected: at(5 * time.Second)}},
		Faults:  []Fault{{Kind: "stopped", Target: "driver-a", At: at(-time.Hour), Until: at(time.Hour)}},
		Fences:  []Mark{{At: at(-5 * time.Second), Epoch: 3}, {At: at(time.Minute), Epoch: 4}},
		Refused: []Mark{{At: at(-time.Second)}, {At: at(3 * time.Second)}},
		Stale:   []Mark{{At: at(10 * time.Second), Epoch: 3}},
		Gaps:    []Span{{From: at(-time.Second), To: at(ms(100))}, {From: at(ms(1950)), To: at(time.Minute)}},
		Paths:   []Span{{Domain: "driver-a", From: at(-time.Second), To: at(time.Minute)}},
		Acks:    []time.Time{at(-time.Second), at(ms(5)), at(time.Hour)},
	}
	page := render(t, tl)
	svg, texts := svgOf(t, page)
	cs := coords(t, svg, "x", "x1", "x2", "width")
	for _, n := range []string{"x", "x1", "x2"} {
		for _, v := range cs[n] {
			if v < 0 || v > width {
				t.Errorf("%s=%v outside the chart", n, v)
			}
		}
	}
	// Everything in time is drawn inside the plot; x and width come in
	// pairs for rects only, so check the lines (ticks, fences, stale).
	for _, n := range []string{"x1", "x2"} {
		for _, v := range cs[n] {
			if v < left-0.05 || v > left+plotW+16+0.05 {
				t.Errorf("%s=%v outside the plot", n, v)
			}
		}
	}
	containsAll(t, "the SVG's texts", texts,
		"fence e3 by storage at -5.000 s", "fence e4 by storage at 60.000 s", // exact times in the hover
		"stopped from -3600.000 s", "max 2, total 3", "STALE e3",
	)
	if !strings.Contains(svg, `<line x1="`+ff(left)+`" y1="`) || !strings.Contains(svg, `<line x1="`+ff(left+plotW)+`" y1="`) {
		t.Errorf("clamped marks not drawn at the plot's edges")
	}
}

func TestTimesErrors(t *testing.T) {
	for name, tl := range map[string]*Timeline{
		"end before start": {Start: t0, End: at(-time.Millisecond)},
		"zero start":       {End: t0},
		"zero end":         {Start: t0},
	} {
		if err := tl.WriteHTML(io.Discard); !errors.Is(err, ErrTimes) {
			t.Errorf("%s: got %v, want ErrTimes", name, err)
		}
	}
	var nilT *Timeline
	if err := nilT.WriteHTML(io.Discard); !errors.Is(err, ErrNil) {
		t.Errorf("nil: got %v, want ErrNil", err)
	}
	// A run of no length renders.
	page := render(t, &Timeline{Start: t0, End: t0, Acks: []time.Time{t0}, Fences: []Mark{{At: t0, Epoch: 1}}})
	svgOf(t, page)
}

type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("broken") }

func TestWriteError(t *testing.T) {
	if err := small().WriteHTML(errWriter{}); err == nil {
		t.Errorf("no error from a broken writer")
	}
}

func TestDoesNotModifyAndIsDeterministic(t *testing.T) {
	tl := example()
	// Shuffle the order the caller gives things in.
	tl.Epochs[0], tl.Epochs[3] = tl.Epochs[3], tl.Epochs[0]
	tl.Fences[0], tl.Fences[2] = tl.Fences[2], tl.Fences[0]
	before := example()
	before.Epochs[0], before.Epochs[3] = before.Epochs[3], before.Epochs[0]
	before.Fences[0], before.Fences[2] = before.Fences[2], before.Fences[0]
	a := render(t, tl)
	if !reflect.DeepEqual(tl, before) {
		t.Errorf("WriteHTML modified the Timeline")
	}
	if b := render(t, tl); a != b {
		t.Errorf("two renderings differ")
	}
	if c := render(t, example()); a != c {
		t.Errorf("the input's order changes the rendering")
	}
}

// huge is a 10 min run with ~500 epochs, thousands of acks and many faults
// and marks.
func huge(epochs, acks int) *Timeline {
	dur := 10 * time.Minute
	t := &Timeline{
		Title: "huge", Start: t0, End: at(dur),
		Domains: []string{"store", "disk", "driver-a", "driver-b", "storage"},
	}
	drv := []string{"driver-a", "driver-b"}
	every := dur / time.Duration(epochs)
	for i := range epochs {
		// Bursts: most epochs come in quick succession, some last.
		start := time.Duration(i) * every
		if i%10 != 0 {
			start = time.Duration(i/10*10)*every + time.Duration(i%10)*ms(3)
		}
		m := []string{"disk", drv[i%2], "storage"}
		t.Epochs = append(t.Epochs, Epoch{Number: uint64(i + 1), Members: m, Quiescing: at(start), Connected: at(start + ms(2)), Reason: strings.Repeat("r", 40)})
		t.Faults = append(t.Faults, Fault{Kind: "cut-off", Target: drv[(i+1)%2], At: at(start - ms(50)), Until: at(start + ms(400)), Detail: strings.Repeat("d", 40)})
		t.Fences = append(t.Fences, Mark{Domain: "storage", At: at(start + ms(1)), Epoch: uint64(i + 1)})
		for j := range 6 {
			t.Refused = append(t.Refused, Mark{Domain: "storage", At: at(start + ms(500+j)), Epoch: uint64(i), Label: "held write"})
		}
		if i%5 == 0 {
			t.Stale = append(t.Stale, Mark{Domain: "storage", At: at(start + ms(600)), Epoch: uint64(i)})
		}
		t.Gaps = append(t.Gaps, Span{From: at(start - ms(60)), To: at(start + ms(30))})
		t.Paths = append(t.Paths, Span{Domain: drv[i%2], From: at(start + ms(30)), To: at(start + every)})
	}
	for i := range acks {
		t.Acks = append(t.Acks, at(time.Duration(i)*dur/time.Duration(acks)))
	}
	return t
}

// maxPage is the documented bound on the page's size for the huge run:
// the chart's shapes are bounded by the plot's width in pixels, not by the
// number of items, and the tables under it list at most 100 rows each.
const maxPage = 600 << 10

func TestBoundedSize(t *testing.T) {
	small := len(render(t, huge(50, 1000)))
	for _, c := range []struct{ epochs, acks int }{{500, 5000}, {500, 200000}, {2000, 20000}} {
		page := render(t, huge(c.epochs, c.acks))
		svgOf(t, page)
		if len(page) > maxPage {
			t.Errorf("%d epochs, %d acks: page of %d bytes, want at most %d", c.epochs, c.acks, len(page), maxPage)
		}
		t.Logf("%d epochs, %d acks: %d bytes (50 epochs: %d)", c.epochs, c.acks, len(page), small)
		containsAll(t, "the page", []string{page}, "Rendering notes", "epochs are drawn as", "refused requests are drawn as", "more epochs, not listed", "class=\"alarm\"", "service gaps are drawn as", "gaps, max 90 ms", "stale writes are drawn as")
	}
}

func TestTicks(t *testing.T) {
	for _, d := range []time.Duration{ms(1), ms(300), ms(1400), 2 * time.Second, 7 * time.Second, 10 * time.Second, time.Minute, 170 * time.Second, 10 * time.Minute, time.Hour, 30 * time.Hour} {
		r := newRun(&Timeline{Start: t0, End: at(d)})
		ts := r.ticks()
		if len(ts) < 3 || len(ts) > 20 {
			t.Errorf("%v: %d ticks", d, len(ts))
		}
		seen := map[string]bool{}
		var labels []string
		for i, tk := range ts {
			if seen[tk.label] {
				t.Errorf("%v: label %q twice", d, tk.label)
			}
			seen[tk.label] = true
			labels = append(labels, tk.label)
			if i > 0 {
				gap := r.xd(tk.at) - r.xd(ts[i-1].at)
				if need := (textW(tk.label, charW)+textW(ts[i-1].label, charW))/2 + 8; gap < need {
					t.Errorf("%v: labels %q and %q overlap (%.0f px apart, need %.0f)", d, ts[i-1].label, tk.label, gap, need)
				}
			}
		}
		b := r.bucket()
		if n := r.dur / b; n > maxBuckets || n < maxBuckets/5 {
			t.Errorf("%v: bucket %v gives %d buckets", d, b, n)
		}
		t.Logf("%v: bucket %s, ticks %s", d, fmtStep(b), strings.Join(labels, " | "))
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850 * time.Microsecond:       "850 µs",
		ms(4) + 200*time.Microsecond: "4.2 ms",
		ms(410):                      "410 ms",
		ms(999):                      "999 ms",
		ms(1250):                     "1.25 s",
		125300 * time.Millisecond:    "2m05.3s",
		-ms(20):                      "-20 ms",
	} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestGolden compares the small run's page with testdata/small.golden.html
// and the example's with testdata/example.html (a page to open in a
// browser); go test -run TestGolden -update rewrites both.
func TestGolden(t *testing.T) {
	for name, tl := range map[string]*Timeline{"small.golden.html": small(), "example.html": example()} {
		got := render(t, tl)
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
		}
		if got != string(want) {
			gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
			for i := range min(len(gl), len(wl)) {
				if gl[i] != wl[i] {
					t.Fatalf("%s differs from the rendering at line %d (run go test -run TestGolden -update and review the diff):\n got: %.300s\nwant: %.300s", path, i+1, gl[i], wl[i])
				}
			}
			t.Fatalf("%s differs from the rendering in length: %d lines, want %d (go test -run TestGolden -update)", path, len(gl), len(wl))
		}
	}
}
