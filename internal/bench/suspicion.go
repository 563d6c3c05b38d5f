package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SuspicionOptions configure Suspicion.
type SuspicionOptions struct {
	// Members is the number of healthy domains (default 3), each a child
	// process.
	Members int
	// Duration is how long each phase counts (required).
	Duration time.Duration
	// Load is how many processes spin, one core each, during the loaded
	// phase; 0: no loaded phase.
	Load int
	// Baseline runs a phase without load first, for comparison. Without
	// load and without Baseline, the one phase runs without load.
	Baseline bool
	// Heartbeat and Misses are the members' channel settings (0: idc's
	// defaults).
	Heartbeat time.Duration
	Misses    int
	// CallEvery is the pause between two calls of a member to one peer
	// (default 5 ms): each member calls every peer in turn, one call
	// outstanding per peer.
	CallEvery time.Duration
	// Every is the time between two progress lines (default 10 s).
	Every time.Duration
	// Child returns the command that runs SuspicionChild with args in a
	// new process (required): the idc binary's hidden `idc bench
	// suspicion child`, or a test binary.
	Child func(args []string) *exec.Cmd
	// DataDir for the embedded store (default: a temporary directory per
	// phase, removed at its end).
	DataDir string
	// Out receives the progress lines and the summary (may be nil).
	Out io.Writer
	// Stderr receives the children's logs (warnings: a lost peer, say),
	// each line prefixed with its domain (nil: discarded).
	Stderr io.Writer
	// Logger receives the store's and the coordinator's logs (default:
	// discarded).
	Logger *slog.Logger
}

// SuspicionResult holds a run's figures, one entry per phase.
type SuspicionResult struct {
	Phases []SuspicionPhase `json:"phases"`
}

// SuspicionPhase holds one phase's figures.
type SuspicionPhase struct {
	// Load is the number of processes spinning during the phase.
	Load      int           `json:"load"`
	Members   int           `json:"members"`
	Heartbeat time.Duration `json:"heartbeat_ns"`
	Misses    int           `json:"misses"`
	CallEvery time.Duration `json:"call_every_ns"`
	// Elapsed is how long the phase counted.
	Elapsed time.Duration `json:"elapsed_ns"`
	// FaultReports are the fault reports written in the store while the
	// phase counted: every member is healthy, so each is a false
	// suspicion.
	FaultReports []SuspicionFault `json:"fault_reports"`
	// EpochChanges counts the epochs connected while the phase counted.
	EpochChanges int `json:"epoch_changes"`
	// Calls counts the calls answered, CallErrors those that failed (an
	// epoch's end excepted).
	Calls      int64 `json:"calls"`
	CallErrors int64 `json:"call_errors"`
	// ChannelFaults counts the peers the members' channel drivers lost,
	// by cause (idc_channel_faults_total); Suspected those suspected after
	// missed heartbeats (idc_channel_suspected_total).
	ChannelFaults map[string]int64 `json:"channel_faults"`
	Suspected     int64            `json:"suspected"`
	// Rejoins counts the members that had to join again (dropped after a
	// fault report, or fenced).
	Rejoins int64 `json:"rejoins"`
	// Gaps: for each member and each report interval (a second), the
	// longest time between two answers from one peer. A call's answer is
	// traffic on the channel both ways, so this bounds from above the
	// silences the channels saw (heartbeats fill the gaps between calls).
	Gaps Dist `json:"gaps"`
	// Late: for each member and second, the most a timer of Heartbeat/2
	// (the channel driver's tick) fired late.
	Late Dist `json:"late"`
	// Samples are the progress lines.
	Samples []SuspicionSample `json:"samples"`
}

// SuspicionFault is one fault report.
type SuspicionFault struct {
	Elapsed  time.Duration `json:"elapsed_ns"`
	Epoch    uint64        `json:"epoch"`
	Reporter string        `json:"reporter"`
	Suspect  string        `json:"suspect"`
}

// SuspicionSample is one progress line.
type SuspicionSample struct {
	Elapsed      time.Duration `json:"elapsed_ns"`
	Epoch        uint64        `json:"epoch"`
	FaultReports int           `json:"fault_reports"`
	EpochChanges int           `json:"epoch_changes"`
	// CallsPerSec, MaxGap and MaxLate are over the interval since the
	// previous line.
	CallsPerSec float64       `json:"calls_per_sec"`
	MaxGap      time.Duration `json:"max_gap_ns"`
	MaxLate     time.Duration `json:"max_late_ns"`
}

// Dist summarises durations.
type Dist struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

func dist(ds []time.Duration) Dist {
	if len(ds) == 0 {
		return Dist{}
	}
	return Dist{N: len(ds), P50: Percentile(ds, 50), P99: Percentile(ds, 99), Max: slices.Max(ds)}
}

func (d Dist) String() string {
	if d.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%s / %s / %s", ms(d.P50), ms(d.P99), ms(d.Max))
}

// PerMinute is the phase's false suspicions per minute.
func (p SuspicionPhase) PerMinute() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(len(p.FaultReports)) / p.Elapsed.Minutes()
}

// suspicionGroup is the group the members join.
const suspicionGroup = "suspicion"

// reportEvery is how often a member child reports.
const reportEvery = time.Second

// Suspicion measures false suspicions: healthy members, each a child
// process, keep their channels busy with calls while, in the loaded phase,
// o.Load other processes spin; every fault report written in the store
// is a false suspicion. Each phase runs on a fresh embedded store with a
// coordinator, in this process. If ctx ends first it stops and returns
// ctx's error with the phases so far.
func Suspicion(ctx context.Context, o SuspicionOptions) (SuspicionResult, error) {
	var res SuspicionResult
	if o.Members == 0 {
		o.Members = 3
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = idc.DefaultHeartbeat
	}
	if o.Misses == 0 {
		o.Misses = idc.DefaultHeartbeatMisses
	}
	if o.CallEvery == 0 {
		o.CallEvery = 5 * time.Millisecond
	}
	if o.Every == 0 {
		o.Every = 10 * time.Second
	}
	switch {
	case o.Duration <= 0:
		return res, fmt.Errorf("bench: suspicion duration %v must be positive", o.Duration)
	case o.Members < 2:
		return res, fmt.Errorf("bench: suspicion needs at least 2 members, got %d", o.Members)
	case o.Load < 0:
		return res, fmt.Errorf("bench: load %d must not be negative", o.Load)
	case o.Heartbeat < 0 || o.Misses < 0 || o.CallEvery < 0 || o.Every < 0:
		return res, fmt.Errorf("bench: heartbeat %v, misses %d, call interval %v and progress interval %v must be positive",
			o.Heartbeat, o.Misses, o.CallEvery, o.Every)
	case o.Child == nil:
		return res, errors.New("bench: suspicion needs a way to start its child processes")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var loads []int
	if o.Baseline || o.Load == 0 {
		loads = append(loads, 0)
	}
	if o.Load > 0 {
		loads = append(loads, o.Load)
	}
	o.printf("suspicion: %d healthy members (child processes) in group %q, heartbeat %v × %d misses (a silent peer is reported after %v), each member calls every peer every %v; %v per phase\n",
		o.Members, suspicionGroup, o.Heartbeat, o.Misses, o.Heartbeat*time.Duration(o.Misses), o.CallEvery, o.Duration)
	for i, load := range loads {
		what := "no load"
		if load > 0 {
			what = fmt.Sprintf("load: %d processes spinning (one core each; this machine has %d)", load, runtime.NumCPU())
		}
		o.printf("\nphase %d/%d, %s\n", i+1, len(loads), what)
		p, err := suspicionPhase(ctx, o, load)
		res.Phases = append(res.Phases, p)
		if err != nil {
			o.summary(res)
			return res, err
		}
	}
	o.summary(res)
	return res, nil
}

func (o SuspicionOptions) printf(format string, args ...any) {
	if o.Out != nil {
		fmt.Fprintf(o.Out, format, args...)
	}
}

// summary prints a table, one row per phase.
func (o SuspicionOptions) summary(r SuspicionResult) {
	if o.Out == nil || len(r.Phases) == 0 {
		return
	}
	fmt.Fprintf(o.Out, "\nsummary (answer gap and timer lateness: p50 / p99 / max of each member's longest in each second):\n")
	tw := tabwriter.NewWriter(o.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "load\tcounted\tfalse suspicions\tper minute\tepoch changes\trejoins\tcalls\tcall errors\tchannel faults\tanswer gap ms\ttimer late ms\t")
	for _, p := range r.Phases {
		fmt.Fprintf(tw, "%d\t%v\t%d\t%.2f\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t\n", p.Load, p.Elapsed.Round(time.Second), len(p.FaultReports), p.PerMinute(),
			p.EpochChanges, p.Rejoins, p.Calls, p.CallErrors, causes(p.ChannelFaults), p.Gaps, p.Late)
	}
	tw.Flush()
	for _, p := range r.Phases {
		for _, f := range p.FaultReports {
			fmt.Fprintf(o.Out, "  load %d: at %v %s reported losing %s in epoch %d\n", p.Load, f.Elapsed.Round(time.Millisecond), f.Reporter, f.Suspect, f.Epoch)
		}
	}
}

func causes(m map[string]int64) string {
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(m)) {
		if m[c] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c, m[c]))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

// phase is one phase in progress.
type phase struct {
	o    SuspicionOptions
	load int

	mu  sync.Mutex
	rec proto.EpochRecord // the latest epoch record
	// counting is set while the phase counts, from start to end; the
	// store's records count if written after revision from (and not after
	// to, once set).
	counting   bool
	from, to   int64
	start, end time.Time
	faults     []SuspicionFault
	changes    int
	members    map[string]*memberState
	gaps       []time.Duration
	late       []time.Duration
	winGap     time.Duration // over the progress interval
	winLate    time.Duration
}

// memberState holds a member's reports: the latest, and the latest before
// the phase began and ended counting (each lags by under a report
// interval, so their difference covers the phase's length).
type memberState struct {
	last, first, end MemberReport
	counted          bool
}

// suspicionPhase runs one phase on a fresh store.
func suspicionPhase(ctx context.Context, o SuspicionOptions, load int) (SuspicionPhase, error) {
	p := &phase{o: o, load: load, members: map[string]*memberState{}}
	out := SuspicionPhase{Load: load, Members: o.Members, Heartbeat: o.Heartbeat, Misses: o.Misses, CallEvery: o.CallEvery}
	dir := o.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "idc-suspicion-")
		if err != nil {
			return out, err
		}
		defer os.RemoveAll(d)
		dir = d
	} else {
		dir = fmt.Sprintf("%s/load-%d", dir, load)
	}
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Logger: o.Logger})
	if err != nil {
		return out, err
	}
	defer e.Close()
	cli, err := store.Dial(ctx, store.DialConfig{Endpoints: e.Endpoints, Logger: o.Logger})
	if err != nil {
		return out, err
	}
	defer cli.Close()

	run, stop := context.WithCancelCause(ctx)
	var bg sync.WaitGroup
	defer func() {
		stop(nil)
		bg.Wait()
	}()
	coordinate(run, stop, &bg, e, cli, o.Logger)
	watching := make(chan struct{})
	bg.Go(func() { p.watch(run, cli, watching) })
	<-watching

	// The members, then the load.
	var children []*child
	defer func() { stopChildren(children) }()
	for i := range o.Members {
		args := ChildOptions{Role: "member", Endpoint: e.Endpoints[0], ID: fmt.Sprintf("m%d", i),
			Heartbeat: o.Heartbeat, Misses: o.Misses, CallEvery: o.CallEvery}.Args()
		c, err := startChild(o.Child(args), fmt.Sprintf("m%d", i), o.Stderr, p.report)
		if err != nil {
			return out, err
		}
		children = append(children, c)
	}
	epoch, err := p.waitReady(run)
	if err != nil {
		return out, err
	}
	o.printf("epoch %d connected with the %d members, every channel answered a call\n", epoch, o.Members)
	for range load {
		c, err := startChild(o.Child(ChildOptions{Role: "spin"}.Args()), "spin", o.Stderr, nil)
		if err != nil {
			return out, err
		}
		children = append(children, c)
	}

	// Count.
	rev, err := revision(run, cli)
	if err != nil {
		return out, err
	}
	p.mu.Lock()
	p.counting, p.from, p.start = true, rev, time.Now()
	for _, m := range p.members {
		m.first, m.counted = m.last, true
	}
	p.mu.Unlock()
	o.printf("%8s  %6s  %7s  %16s  %8s  %14s  %14s\n", "elapsed", "epoch", "changes", "false suspicions", "calls/s", "max gap ms", "max late ms")
	tick := time.NewTicker(o.Every)
	defer tick.Stop()
	end := time.NewTimer(o.Duration)
	defer end.Stop()
	lastCalls, lastAt := p.calls(), time.Now()
	sample := func() {
		now := time.Now()
		calls := p.calls()
		p.mu.Lock()
		s := SuspicionSample{Elapsed: now.Sub(p.start), Epoch: p.rec.Number, FaultReports: len(p.faults), EpochChanges: p.changes,
			CallsPerSec: float64(calls-lastCalls) / now.Sub(lastAt).Seconds(), MaxGap: p.winGap, MaxLate: p.winLate}
		p.winGap, p.winLate = 0, 0
		p.mu.Unlock()
		lastCalls, lastAt = calls, now
		out.Samples = append(out.Samples, s)
		o.printf("%8v  %6d  %7d  %16d  %8.0f  %14s  %14s\n", s.Elapsed.Round(time.Second), s.Epoch, s.EpochChanges, s.FaultReports,
			s.CallsPerSec, ms(s.MaxGap), ms(s.MaxLate))
	}
	for done := false; !done; {
		select {
		case <-run.Done():
			done = true
		case <-tick.C:
			sample()
		case <-end.C:
			if len(out.Samples) == 0 || time.Since(lastAt) > o.Every/10 { // unless a tick just printed it
				sample()
			}
			done = true
		}
	}
	p.mu.Lock()
	p.counting, p.end = false, time.Now()
	for _, m := range p.members {
		m.end = m.last
	}
	p.mu.Unlock()
	if run.Err() != nil {
		return p.result(out), context.Cause(run)
	}
	to, err := revision(run, cli)
	if err != nil {
		return p.result(out), err
	}
	// Records written before the end may still be on their way.
	p.mu.Lock()
	p.to = to
	p.mu.Unlock()
	sleep(run, 100*time.Millisecond)
	return p.result(out), nil
}

// calls returns the calls answered so far since the phase began counting.
func (p *phase) calls() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for _, m := range p.members {
		if m.counted {
			n += m.last.Calls - m.first.Calls
		}
	}
	return n
}

// result fills in the phase's figures.
func (p *phase) result(out SuspicionPhase) SuspicionPhase {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.start.IsZero() {
		return out
	}
	out.Elapsed = p.end.Sub(p.start)
	out.FaultReports = append([]SuspicionFault{}, p.faults...) // [] in JSON, not null
	out.EpochChanges = p.changes
	out.ChannelFaults = map[string]int64{}
	for _, m := range p.members {
		if !m.counted {
			continue
		}
		out.Calls += m.end.Calls - m.first.Calls
		out.CallErrors += m.end.Errors - m.first.Errors
		out.Suspected += m.end.Suspected - m.first.Suspected
		out.Rejoins += m.end.Joins - m.first.Joins
		for c, n := range m.end.Faults {
			out.ChannelFaults[c] += n - m.first.Faults[c]
		}
	}
	out.Gaps, out.Late = dist(p.gaps), dist(p.late)
	return out
}

// revision returns the store's present revision.
func revision(ctx context.Context, cli *clientv3.Client) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return r.Header.Revision, nil
}

// watch follows the group's epoch record and fault reports until ctx
// ends; it closes started once the watch is set up.
func (p *phase) watch(ctx context.Context, cli *clientv3.Client, started chan<- struct{}) {
	keys := proto.Keys{}
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), keys.Group(suspicionGroup), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	close(started)
	for wr := range wch {
		seen := time.Now()
		for _, ev := range wr.Events {
			k, ok := keys.Parse(string(ev.Kv.Key))
			if !ok || ev.Type != clientv3.EventTypePut {
				continue
			}
			rev := ev.Kv.ModRevision
			p.mu.Lock()
			in := p.from > 0 && rev > p.from && (p.to == 0 || rev <= p.to)
			switch k.Kind {
			case proto.KindEpoch:
				if rec, err := proto.DecodeEpoch(ev.Kv.Value); err == nil {
					p.rec = rec
					if in && rec.State == proto.Connected {
						p.changes++
					}
				}
			case proto.KindFaults:
				if in && ev.IsCreate() {
					p.faults = append(p.faults, SuspicionFault{Elapsed: seen.Sub(p.start), Epoch: k.Epoch, Reporter: k.Name, Suspect: k.Suspect})
				}
			}
			p.mu.Unlock()
		}
	}
}

// report takes a member's report.
func (p *phase) report(r MemberReport) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.members[r.ID]
	if m == nil {
		m = &memberState{}
		p.members[r.ID] = m
	}
	m.last = r
	if p.counting {
		if !m.counted { // a member whose first report came late
			m.first, m.counted = r, true
		}
		p.gaps = append(p.gaps, r.Gap)
		p.late = append(p.late, r.Late)
		p.winGap, p.winLate = max(p.winGap, r.Gap), max(p.winLate, r.Late)
	}
}

// waitReady waits until the group's epoch is connected with every member
// and every member reported an answer from each peer in it.
func (p *phase) waitReady(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		p.mu.Lock()
		rec := p.rec
		ready := rec.State == proto.Connected && len(rec.Members) == p.o.Members && len(p.members) == p.o.Members
		for _, m := range p.members {
			ready = ready && m.last.Ready && m.last.Epoch == rec.Number
		}
		p.mu.Unlock()
		if ready {
			return rec.Number, nil
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return 0, fmt.Errorf("bench: suspicion: the %d members did not connect and call each other: %w", p.o.Members, context.Cause(ctx))
		}
	}
}

// child is a child process: a member or a spinner.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed once its output is read to the end
}

// startChild starts cmd. Closing its stdin asks it to stop (and it stops
// by itself if this process dies). Its stdout carries a member's reports;
// its stderr goes to stderr, each line prefixed with name.
func startChild(cmd *exec.Cmd, name string, stderr io.Writer, report func(MemberReport)) (*child, error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errOut, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	c := &child{cmd: cmd, stdin: in, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var r MemberReport
			if report != nil && json.Unmarshal(sc.Bytes(), &r) == nil && r.ID != "" {
				report(r)
			}
		}
	})
	wg.Go(func() {
		sc := bufio.NewScanner(errOut)
		for sc.Scan() {
			if stderr != nil {
				fmt.Fprintf(stderr, "[%s] %s\n", name, sc.Text())
			}
		}
	})
	go func() {
		wg.Wait()
		close(c.done)
	}()
	return c, nil
}

// stopChildren asks the children to stop, kills those that have not
// within a few seconds, and waits for them.
func stopChildren(cs []*child) {
	for _, c := range cs {
		c.stdin.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range cs {
		select {
		case <-c.done:
		case <-time.After(time.Until(deadline)):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		_ = c.cmd.Wait()
	}
}

// ChildOptions configure a child process of Suspicion.
type ChildOptions struct {
	// Role is "member" or "spin" (a busy loop on one core).
	Role      string
	Endpoint  string
	ID        string
	Heartbeat time.Duration
	Misses    int
	CallEvery time.Duration
}

// Args are the arguments that give o to SuspicionChild.
func (o ChildOptions) Args() []string {
	if o.Role != "member" {
		return []string{"-role", o.Role}
	}
	return []string{"-role", o.Role, "-endpoint", o.Endpoint, "-id", o.ID,
		"-heartbeat", o.Heartbeat.String(), "-misses", fmt.Sprint(o.Misses), "-call-every", o.CallEvery.String()}
}

// MemberReport is a member child's report, a JSON line a second on its
// stdout. Counts are since the child started.
type MemberReport struct {
	ID string `json:"id"`
	// Epoch is the member's connected epoch (0: none); Ready says every
	// peer of it answered a call.
	Epoch uint64 `json:"epoch"`
	Ready bool   `json:"ready"`
	// Calls answered; Errors: calls failed other than by an epoch's end.
	Calls  int64 `json:"calls"`
	Errors int64 `json:"errors"`
	// Gap is the longest time between two answers from one peer since the
	// previous report; Late the most a Heartbeat/2 timer fired late.
	Gap  time.Duration `json:"gap_ns"`
	Late time.Duration `json:"late_ns"`
	// Faults are idc_channel_faults_total by cause; Suspected
	// idc_channel_suspected_total.
	Faults    map[string]int64 `json:"faults"`
	Suspected int64            `json:"suspected"`
	// Joins counts the memberships joined.
	Joins int64 `json:"joins"`
}

// SuspicionChild runs a child process of Suspicion with args (see
// ChildOptions.Args) until stdin ends or ctx does: a member writes its
// reports to stdout and its warnings to stderr.
func SuspicionChild(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var o ChildOptions
	fs := flag.NewFlagSet("suspicion child", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Role, "role", "", "member or spin")
	fs.StringVar(&o.Endpoint, "endpoint", "", "the store's endpoint")
	fs.StringVar(&o.ID, "id", "", "the member's domain ID")
	fs.DurationVar(&o.Heartbeat, "heartbeat", idc.DefaultHeartbeat, "channel heartbeat")
	fs.IntVar(&o.Misses, "misses", idc.DefaultHeartbeatMisses, "channel heartbeat misses")
	fs.DurationVar(&o.CallEvery, "call-every", 5*time.Millisecond, "pause between two calls to one peer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()
	switch o.Role {
	case "spin":
		spin(ctx)
		return nil
	case "member":
		if o.Endpoint == "" || o.ID == "" {
			return errors.New("bench: a member child needs -endpoint and -id")
		}
		return runMember(ctx, o, stdout, stderr)
	}
	return fmt.Errorf("bench: unknown child role %q", o.Role)
}

var spins atomic.Uint64

// spin keeps one core busy until ctx ends.
func spin(ctx context.Context) {
	runtime.GOMAXPROCS(1)
	var n uint64
	for ctx.Err() == nil {
		for range 1 << 20 {
			n++
		}
	}
	spins.Add(n)
}

// memberStats are a member child's counts.
type memberStats struct {
	calls, errors, joins atomic.Int64

	registry *prometheus.Registry
	id       string

	mu        sync.Mutex
	epoch     uint64
	answered  map[string]bool // peers that answered in epoch
	peers     int
	gap, late time.Duration
}

func (s *memberStats) answer(epoch uint64, peer string, gap time.Duration) {
	s.calls.Add(1)
	s.mu.Lock()
	if epoch == s.epoch {
		s.answered[peer] = true
	}
	s.gap = max(s.gap, gap)
	s.mu.Unlock()
}

// runMember joins the group as o.ID, again after each time its
// membership stops, and calls every peer every o.CallEvery in each epoch.
func runMember(ctx context.Context, o ChildOptions, stdout, stderr io.Writer) error {
	s := &memberStats{registry: prometheus.NewRegistry(), id: o.ID, answered: map[string]bool{}}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var bg sync.WaitGroup
	defer bg.Wait()
	bg.Go(func() { s.probe(ctx, o.Heartbeat/2) })
	bg.Go(func() { s.reports(ctx, stdout) })
	echo := idc.HandlerFunc(func(_ context.Context, req idc.Request) ([]byte, error) { return req.Data, nil })
	for ctx.Err() == nil {
		cfg := idc.DefaultConfig()
		cfg.Group, cfg.ID, cfg.Endpoints = suspicionGroup, o.ID, []string{o.Endpoint}
		cfg.Heartbeat, cfg.HeartbeatMisses = o.Heartbeat, o.Misses
		cfg.Handler, cfg.Metrics, cfg.Logger = echo, s.registry, log
		d, err := idc.Join(ctx, cfg)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			log.Warn("join failed; trying again", "err", err)
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		s.joins.Add(1)
		for {
			ep, err := d.Next(ctx)
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("membership stopped; joining again", "err", err)
				}
				break
			}
			s.mu.Lock()
			s.epoch, s.peers = ep.Number(), len(ep.Peers())
			clear(s.answered)
			s.mu.Unlock()
			for _, peer := range ep.Peers() {
				bg.Go(func() { s.callLoop(ctx, ep, peer.ID, o.CallEvery) })
			}
		}
		s.mu.Lock()
		s.epoch = 0
		s.mu.Unlock()
		_ = d.Close()
	}
	return nil
}

// callLoop calls peer in ep, one call at a time, until the epoch ends.
func (s *memberStats) callLoop(ctx context.Context, ep *idc.Epoch, peer string, every time.Duration) {
	ectx := ep.Context()
	req := []byte(s.id + "→" + peer)
	var last time.Time
	for ctx.Err() == nil && ectx.Err() == nil {
		_, err := ep.Call(ctx, peer, req)
		now := time.Now()
		switch {
		case err == nil:
			var gap time.Duration
			if !last.IsZero() {
				gap = now.Sub(last)
			}
			last = now
			s.answer(ep.Number(), peer, gap)
		case errors.Is(err, idc.ErrEpochEnded) || ctx.Err() != nil:
		default:
			s.errors.Add(1)
		}
		t := time.NewTimer(every)
		select {
		case <-t.C:
		case <-ectx.Done():
		case <-ctx.Done():
		}
		t.Stop()
	}
}

// probe measures how late a timer of d fires, as the channel driver's
// tick is one.
func (s *memberStats) probe(ctx context.Context, d time.Duration) {
	for ctx.Err() == nil {
		t0 := time.Now()
		if !sleep(ctx, d) {
			return
		}
		late := time.Since(t0) - d
		s.mu.Lock()
		s.late = max(s.late, late)
		s.mu.Unlock()
	}
}

// reports writes a report every reportEvery until ctx ends.
func (s *memberStats) reports(ctx context.Context, stdout io.Writer) {
	enc := json.NewEncoder(stdout)
	tick := time.NewTicker(reportEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := MemberReport{ID: s.id, Calls: s.calls.Load(), Errors: s.errors.Load(), Joins: s.joins.Load(), Faults: map[string]int64{}}
		if mfs, err := s.registry.Gather(); err == nil {
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					switch mf.GetName() {
					case "idc_channel_faults_total":
						for _, l := range m.GetLabel() {
							if l.GetName() == "cause" {
								r.Faults[l.GetValue()] += int64(m.GetCounter().GetValue())
							}
						}
					case "idc_channel_suspected_total":
						r.Suspected += int64(m.GetCounter().GetValue())
					}
				}
			}
		}
		s.mu.Lock()
		r.Epoch, r.Ready = s.epoch, s.epoch != 0 && len(s.answered) == s.peers
		r.Gap, r.Late = s.gap, s.late
		s.gap, s.late = 0, 0
		s.mu.Unlock()
		if err := enc.Encode(r); err != nil {
			return
		}
	}
}
