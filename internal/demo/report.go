package demo

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc/internal/nemesis"
	"github.com/idc-dev/idc/internal/scenario"
	"github.com/idc-dev/idc/internal/timeline"
	"github.com/idc-dev/idc/storage"
)

// printTotals writes what several runs add up to: faults by kind with
// their service gaps (median, 99th percentile, maximum), stale writes
// refused and landed, lost acknowledged writes, non-linearizable blocks.
func (s *Summary) printTotals(out io.Writer) {
	gaps := map[nemesis.Kind][]time.Duration{}
	var refused, landed, lost, nonlin, timedOut int
	for _, r := range s.Results {
		for _, f := range r.Faults {
			gaps[f.Kind] = append(gaps[f.Kind], f.Gap)
		}
		refused += r.Refused
		landed += r.Landed
		lost += len(r.Verdict.Lost)
		nonlin += len(r.Verdict.NonLinearizable)
		if r.Verdict.TimedOut {
			timedOut++
		}
	}
	fmt.Fprintf(out, "  %-18s %6s %12s %12s %12s\n", "fault", "count", "gap p50", "gap p99", "gap max")
	for _, k := range nemesis.Kinds() {
		g := gaps[k]
		if len(g) == 0 {
			continue
		}
		slices.Sort(g)
		fmt.Fprintf(out, "  %-18s %6d %12s %12s %12s\n", k, len(g), ms(quantile(g, 0.5)), ms(quantile(g, 0.99)), ms(g[len(g)-1]))
	}
	fmt.Fprintf(out, "  stale requests refused by the guard %d; stale writes landed %d; lost acknowledged writes %d; non-linearizable blocks %d; checker timeouts %d\n",
		refused, landed, lost, nonlin, timedOut)
}

// quantile returns the q-quantile of sorted d (nearest rank).
func quantile(d []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

// printLine writes the run in one line: seed, verdict, each fault with
// its service gap, stale requests refused and landed, duration.
func (r *Result) printLine(out io.Writer) {
	verdict := "PASS"
	if !r.Verdict.OK {
		verdict = "FAIL"
	}
	faults := make([]string, len(r.Faults))
	for i, f := range r.Faults {
		faults[i] = fmt.Sprintf("%s %s gap %s", f.Kind, f.Target, ms(f.Gap))
	}
	fmt.Fprintf(out, "seed %d %s %s: %s; %d refused, %d landed; %v\n", r.Seed, r.Mode, verdict, strings.Join(faults, ", "),
		r.Refused, r.Landed, r.End.Sub(r.Start).Round(100*time.Millisecond))
}

// print writes the run's report.
func (r *Result) print(out io.Writer) {
	w := bufio.NewWriter(out)
	defer w.Flush()
	fmt.Fprintf(w, "\n-- report: seed %d, mode %s, %v\n", r.Seed, r.Mode, r.End.Sub(r.Start).Round(100*time.Millisecond))
	if n := len(r.Epochs); n > 0 {
		fmt.Fprintf(w, "  epochs           %d to %d: %d changes\n", r.Epochs[0].Number, r.Epochs[n-1].Number, n-1)
	}
	fmt.Fprintf(w, "  faults           %d: %s\n", len(r.Faults), r.Schedule)
	for _, f := range r.Faults {
		fence := "no fence"
		if f.ToFence > 0 {
			fence = "time to fence " + ms(f.ToFence)
		}
		fmt.Fprintf(w, "    %-18s %-9s service gap %s, %s\n", f.Kind, f.Target, ms(f.Gap), fence)
	}
	fmt.Fprintf(w, "  stale requests   %d refused by the storage's guard, %d writes landed after a later epoch took over\n", r.Refused, r.Landed)
	v := r.Verdict
	fmt.Fprintf(w, "  operations       %d writes (%d acknowledged), %d reads\n", v.Writes, v.Acknowledged, v.Reads)
	if v.OK {
		fmt.Fprintf(w, "  checker          PASS: no stale write applied, every block holds its last acknowledged write, reads linearizable per block (porcupine)\n")
	} else {
		fmt.Fprintf(w, "  checker          FAIL: %s\n", v.Reason)
	}
	fmt.Fprintf(w, "  timeline         %s\n", r.Timeline)
	if r.Linearizability != "" {
		fmt.Fprintf(w, "  not linearizable %s (porcupine's view of blocks %v)\n", r.Linearizability, r.Verdict.NonLinearizable)
	}
	if held := r.held(); held != "" {
		fmt.Fprintf(w, "\n%s\n", wrap(r.lesson(held), 78))
	}
}

// held names the driver whose writes were held, if the schedule held any.
func (r *Result) held() string {
	for _, f := range r.Faults {
		if f.Kind == nemesis.HoldWrites {
			return f.Target
		}
	}
	return ""
}

// lesson says, in two sentences, what the held writes show.
func (r *Result) lesson(driver string) string {
	if r.Landed > 0 {
		return fmt.Sprintf("Why: the writes %s had forwarded were held in the network and reached the storage only after the next epoch had connected, and %d of them overwrote newer acknowledged data: a lease stops a domain, not the requests it already sent. "+
			"With fencing (--mode fence) the storage checks every request's epoch as it applies it, and refuses them.", driver, r.Landed)
	}
	if r.Mode == ModeLease {
		return fmt.Sprintf("Why: the writes %s had forwarded were held in the network past the failover; this time none of them overwrote newer data the checker could see, but nothing at an unguarded storage would have stopped them. "+
			"With fencing (--mode fence) the storage refuses every request of an ended epoch.", driver)
	}
	return fmt.Sprintf("Why: the writes %s had forwarded were held in the network and reached the storage after the failover, carrying the token of an epoch that had ended; the storage's guard had raised the next epoch's fence and refused them (%d refused in all). "+
		"With leases alone (--mode lease) nothing at the storage could tell them stale, and they would overwrite newer data.", driver, r.Refused)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// wrap breaks s into lines of at most width columns.
func wrap(s string, width int) string {
	var b strings.Builder
	n := 0
	for _, word := range strings.Fields(s) {
		if n > 0 && n+1+len(word) > width {
			b.WriteByte('\n')
			n = 0
		} else if n > 0 {
			b.WriteByte(' ')
			n++
		}
		b.WriteString(word)
		n += len(word)
	}
	return b.String()
}

// writeTimeline draws the run.
func writeTimeline(path string, r *Result, acks []scenario.Ack, applied []storage.Applied, diskLines []scenario.Line) error {
	t := timeline.Timeline{
		Title:   fmt.Sprintf("idc demo: seed %d, mode %s", r.Seed, r.Mode),
		Start:   r.Start,
		End:     r.End,
		Domains: []string{"disk", "driver-a", "driver-b", "storage"},
		PathRow: "disk",
	}
	verdict := "checker: PASS"
	if !r.Verdict.OK {
		verdict = "checker: FAIL: " + r.Verdict.Reason
	}
	t.Summary = []string{"schedule " + r.Schedule.String(), verdict,
		fmt.Sprintf("%d stale requests refused by the guard, %d stale writes landed", r.Refused, r.Landed)}
	for _, e := range r.Epochs {
		t.Epochs = append(t.Epochs, timeline.Epoch{Number: e.Number, Members: e.Members, Quiescing: e.Quiescing, Connected: e.Connected, Reason: e.Reason})
	}
	for _, f := range r.Faults {
		t.Faults = append(t.Faults, timeline.Fault{Kind: string(f.Kind), Target: f.Target, At: f.At, Until: f.Healed})
		if f.Gap > 0 {
			t.Gaps = append(t.Gaps, gapSpan(acks, f))
		}
	}
	for _, a := range applied {
		at := time.Unix(0, a.At)
		switch a.Op {
		case "fence":
			t.Fences = append(t.Fences, timeline.Mark{Domain: "storage", At: at, Epoch: a.Epoch, Label: fmt.Sprintf("fence %d", a.Epoch)})
		case "refused":
			t.Refused = append(t.Refused, timeline.Mark{Domain: "storage", At: at, Epoch: a.Epoch, Label: fmt.Sprintf("%s of epoch %d refused: %s", a.Request, a.Epoch, a.Reason)})
		}
	}
	for _, s := range r.Verdict.Stale {
		t.Stale = append(t.Stale, timeline.Mark{Domain: "storage", At: time.Unix(0, s.At), Epoch: s.Epoch, Label: fmt.Sprintf("write of epoch %d landed at offset %d", s.Epoch, s.Offset)})
	}
	t.Paths = paths(diskLines, r.End)
	for _, a := range acks {
		t.Acks = append(t.Acks, a.At)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := t.WriteHTML(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// gapSpan places a fault's service gap: the longest pause between
// acknowledgements after it.
func gapSpan(acks []scenario.Ack, f FaultResult) timeline.Span {
	for i := 1; i < len(acks); i++ {
		if acks[i].At.After(f.At) && acks[i].At.Sub(acks[i-1].At) == f.Gap {
			return timeline.Span{From: acks[i-1].At, To: acks[i].At, Label: fmt.Sprintf("%s: gap %s", f.Kind, ms(f.Gap))}
		}
	}
	return timeline.Span{From: f.At, To: f.At.Add(f.Gap), Label: string(f.Kind)}
}

// paths reads which driver the disk used from its epoch lines ("disk:
// epoch 4 connected: disk, driver-b; path driver-b"), timed as they were
// read.
func paths(lines []scenario.Line, end time.Time) []timeline.Span {
	var (
		out  []timeline.Span
		open bool // the last span lasts until the next line
	)
	for _, l := range lines {
		path, ok := scenario.PathOf(l.Text)
		if !ok {
			continue
		}
		if open {
			out[len(out)-1].To = l.At
		}
		open = path != ""
		if open {
			out = append(out, timeline.Span{Domain: path, From: l.At, To: end, Label: "path " + path})
		}
	}
	return out
}
