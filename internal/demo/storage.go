// Package demo is `idc demo`: the storage scenario the design exists for
// (DESIGN §8), run for real and judged. It starts the embedded store, the
// storage, two driver domains and the multipath disk as processes of the
// idc binary, writes and reads through the disk while the nemesis injects
// a schedule of faults, then judges the run with the checker and reports
// epochs, faults, failover times, stale requests refused or landed and the
// verdict, with a timeline page. RunBasic is the older epoch-only demo.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/internal/checker"
	"github.com/idc-dev/idc/internal/nemesis"
	"github.com/idc-dev/idc/internal/scenario"
	"github.com/idc-dev/idc/nbd"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/storage"
	"github.com/idc-dev/idc/store"
)

// Modes of the demo: the group's mode, and in lease mode a storage that
// checks no token (lease mode alone is meant for resources that cannot).
const (
	ModeFence = "fence"
	ModeLease = "lease"
	ModeBoth  = "both"
)

// ErrConfig is wrapped by the errors of a Config that does not hold: the
// project's configuration error (idc.ErrConfig).
var ErrConfig = proto.ErrConfig

// ErrVerdict is returned (wrapped) when the checker rejects a run.
var ErrVerdict = errors.New("demo: the checker rejected the run")

// Config configures Run.
type Config struct {
	// Binary is the idc binary the domains run as; required (idc demo
	// passes itself).
	Binary string
	// Out receives the progress and the report; default discards.
	Out io.Writer
	// Mode is ModeFence (default), ModeLease or ModeBoth.
	Mode string
	// Seed draws the first schedule; schedule i has seed Seed+i.
	Seed uint64
	// Schedule, if set, is the schedule of every run (nemesis.Parse),
	// instead of one drawn from the seed.
	Schedule string
	// Steps is the number of faults of a drawn schedule (default 3).
	Steps int
	// Schedules is how many schedules to run (default 1); with Duration,
	// schedules run until it has passed (at least one).
	Schedules int
	Duration  time.Duration
	// Dir receives a timeline page per schedule (and, with Keep, each
	// run's files); default a new directory under the system's temporary
	// one.
	Dir string
	// Keep keeps each run's files (store, storage file, apply log).
	Keep bool
	// Verbose sends every process's output to Out, prefixed by its name.
	Verbose bool
	// Brief prints one line per schedule instead of its progress and
	// report, and the whole report of a schedule the checker rejects (for
	// long runs).
	Brief bool
	// CheckTimeout bounds the linearizability check (default 1 min; a
	// timeout fails the run).
	CheckTimeout time.Duration
}

func (c *Config) defaults() error {
	if c.Binary == "" {
		return fmt.Errorf("%w: no idc binary", ErrConfig)
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Mode == "" {
		c.Mode = ModeFence
	}
	if c.Steps == 0 {
		c.Steps = 3
	}
	if c.Schedules == 0 {
		c.Schedules = 1
	}
	if c.CheckTimeout == 0 {
		c.CheckTimeout = time.Minute
	}
	switch {
	case c.Mode != ModeFence && c.Mode != ModeLease && c.Mode != ModeBoth:
		return fmt.Errorf("%w: mode %q (want fence, lease or both)", ErrConfig, c.Mode)
	case c.Steps < 1:
		return fmt.Errorf("%w: %d steps (want at least 1)", ErrConfig, c.Steps)
	case c.Schedules < 1:
		return fmt.Errorf("%w: %d schedules (want at least 1)", ErrConfig, c.Schedules)
	case c.Duration < 0:
		return fmt.Errorf("%w: duration %v", ErrConfig, c.Duration)
	}
	if c.Schedule != "" {
		if _, err := nemesis.Parse(c.Schedule); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	return nil
}

// Summary is what Run did.
type Summary struct {
	Results []Result
	Passed  int
	Dir     string // where the timelines are
}

// Run runs the configured schedules, printing progress and a report for
// each, and returns the summary; its error wraps ErrVerdict if the
// checker rejected a run.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	var sum Summary
	if err := cfg.defaults(); err != nil {
		return sum, err
	}
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "idc-demo-")
		if err != nil {
			return sum, err
		}
		cfg.Dir = d
	} else if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return sum, err
	}
	sum.Dir = cfg.Dir
	start := time.Now()
	for i := 0; ; i++ {
		if cfg.Duration > 0 {
			if i > 0 && time.Since(start) >= cfg.Duration {
				break
			}
		} else if i >= cfg.Schedules {
			break
		}
		res, err := runOne(ctx, cfg, cfg.Seed+uint64(i))
		if err != nil {
			return sum, fmt.Errorf("demo: seed %d: %w", cfg.Seed+uint64(i), err)
		}
		sum.Results = append(sum.Results, res)
		if res.Verdict.OK {
			sum.Passed++
		}
		if cfg.Brief && res.Verdict.OK {
			res.printLine(cfg.Out)
		} else {
			res.print(cfg.Out)
		}
	}
	if len(sum.Results) > 1 {
		fmt.Fprintf(cfg.Out, "\n%d of %d schedules passed the checker (mode %s, seeds %d to %d, %v)\n",
			sum.Passed, len(sum.Results), cfg.Mode, cfg.Seed, cfg.Seed+uint64(len(sum.Results)-1), time.Since(start).Round(time.Second))
		sum.printTotals(cfg.Out)
	}
	if sum.Passed < len(sum.Results) {
		return sum, fmt.Errorf("%w: %d of %d schedules", ErrVerdict, len(sum.Results)-sum.Passed, len(sum.Results))
	}
	return sum, nil
}

// FaultResult is one fault of a run, with its failover figures.
type FaultResult struct {
	Kind   nemesis.Kind
	Target string
	At     time.Time // injected
	Healed time.Time
	// Gap is the longest time without an acknowledged write from the
	// fault to the next one's injection (or the run's end); ToFence the
	// time from the fault to the first fence that held at the storage
	// after it (zero if none did: a fault that changed nothing, or an
	// unguarded storage).
	Gap, ToFence time.Duration
}

// Result is one schedule's run.
type Result struct {
	Seed     uint64
	Mode     string
	Schedule nemesis.Schedule
	Start    time.Time
	End      time.Time
	Faults   []FaultResult
	Events   []nemesis.Event
	Epochs   []epochSeen
	// Refused counts the disk's requests of ended epochs the guard
	// refused; Landed the writes of ended epochs applied after a later
	// epoch took over (the checker's Stale).
	Refused, Landed int
	Verdict         checker.Verdict
	Timeline        string // the page's path
	// Linearizability is the path of porcupine's page of the blocks that
	// are not linearizable, if any.
	Linearizability string
}

// epochSeen is an epoch as the demo's watch saw it.
type epochSeen struct {
	Number               uint64
	Members              []string
	Reason               string
	Quiescing, Connected time.Time
}

// progress prints timestamped lines.
type progress struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func (p *progress) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "[%6.2fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// runOne runs one schedule on a fresh scenario.
func runOne(ctx context.Context, cfg Config, seed uint64) (Result, error) {
	res := Result{Seed: seed, Mode: cfg.Mode}
	sc := scenario.Config{Binary: cfg.Binary, Mode: cfg.Mode, Proxied: []string{"driver-a", "driver-b"},
		// The nemesis faults a driver every few seconds on purpose: the
		// coordinator's flap damping would hold it back 15 s after its
		// third departure in a minute; here, for a second.
		Extra: map[string][]string{"coordinator": {"--flap-hold", "1s"}},
		// Coordinators as processes of their own, for crash-coordinator.
		Coordinators: 2}
	if cfg.Mode == ModeLease {
		sc.Unguarded = true
	}
	if cfg.Schedule != "" {
		res.Schedule, _ = nemesis.Parse(cfg.Schedule)
	} else {
		res.Schedule = nemesis.Generate(seed, cfg.Steps, 2*time.Second)
	}
	dir, err := os.MkdirTemp(cfg.Dir, fmt.Sprintf("run-%d-%s-", seed, cfg.Mode))
	if err != nil {
		return res, err
	}
	if !cfg.Keep {
		defer os.RemoveAll(dir)
	}
	sc.Dir = dir
	out := cfg.Out
	if cfg.Brief {
		out = io.Discard
	}
	p := &progress{out: out, start: time.Now()}
	if cfg.Verbose {
		sc.Output = cfg.Out
	}
	fmt.Fprintf(out, "\n== idc demo: seed %d, mode %s%s, schedule %s\n", seed, cfg.Mode, unguardedNote(sc.Unguarded), res.Schedule)
	p.say("starting the store, two coordinators, the storage, driver-a, driver-b and the disk as processes")
	s, err := scenario.Start(ctx, sc)
	if err != nil {
		return res, err
	}
	defer s.Close()
	res.Start = time.Now()

	// The epochs, from the store.
	cli, err := store.Dial(ctx, store.DialConfig{Endpoints: []string{s.Endpoint}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return res, err
	}
	defer cli.Close()
	var (
		emu    sync.Mutex
		epochs = map[uint64]*epochSeen{}
	)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go inspect.Watch(wctx, cli, proto.Keys{Prefix: proto.DefaultPrefix}, []string{s.Config().Group}, func(e inspect.Event) error {
		if e.Epoch == nil {
			return nil
		}
		r := e.Epoch
		emu.Lock()
		ep := epochs[r.Number]
		if ep == nil {
			ep = &epochSeen{Number: r.Number}
			epochs[r.Number] = ep
		}
		ep.Members, ep.Reason = proto.IDs(r.Members), r.Reason
		switch r.State {
		case proto.Quiescing:
			ep.Quiescing = e.Time
		case proto.Connected:
			ep.Connected = e.Time
		}
		emu.Unlock()
		p.say("epoch %d %s: %s (%s)", r.Number, r.State, strings.Join(proto.IDs(r.Members), ", "), r.Reason)
		return nil
	})

	c, err := nbd.DialURI(ctx, s.NBD, nbd.ClientConfig{})
	if err != nil {
		return res, err
	}
	defer c.Close()
	w := &scenario.Workload{Client: c, Blocks: 64, Reads: 20, Seed: seed}
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := make(chan error, 1)
	go func() { loadDone <- w.Run(lctx) }()
	p.say("the client writes unique payloads to 64 blocks and reads them back through the disk (NBD)")
	for w.Count() < 200 {
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return res, err
		}
	}
	res.Events, err = nemesis.Run(ctx, nemesis.Config{Scenario: s, Workload: w, Log: func(e nemesis.Event) {
		p.say("nemesis: %v", e)
	}}, res.Schedule)
	if err != nil {
		return res, err
	}
	stopLoad()
	loadErr := <-loadDone
	res.End = time.Now()
	p.say("schedule done: %d writes acknowledged; reading every block back", w.Count())
	final, err := w.Final(ctx, func(ctx context.Context, b []byte, off uint64) error { return c.ReadAt(ctx, b, off) })
	if err != nil {
		return res, err
	}
	stopWatch()
	s.Close() // the apply log is flushed
	applied, err := readApplyLog(s.ApplyLog)
	if err != nil {
		return res, err
	}
	emu.Lock()
	for _, ep := range epochs {
		res.Epochs = append(res.Epochs, *ep)
	}
	emu.Unlock()
	slices.SortFunc(res.Epochs, func(a, b epochSeen) int { return int(a.Number) - int(b.Number) })
	connected := checker.FirstApplies(applied)
	for _, ep := range res.Epochs {
		if !ep.Connected.IsZero() && (connected[ep.Number].IsZero() || ep.Connected.Before(connected[ep.Number])) {
			connected[ep.Number] = ep.Connected
		}
	}
	p.say("checking %d operations and the storage's apply log (%d lines)", len(w.History()), len(applied))
	hist := checker.History{Ops: w.History(), Applied: applied, Connected: connected, Final: final}
	res.Verdict = checker.Check(hist, cfg.CheckTimeout)
	if blocks := res.Verdict.NonLinearizable; len(blocks) > 0 && res.Verdict.Invalid == nil {
		res.Linearizability = filepath.Join(cfg.Dir, fmt.Sprintf("linearizability-%d-%s.html", seed, cfg.Mode))
		if err := writeVisualization(res.Linearizability, hist, blocks, cfg.CheckTimeout); err != nil {
			return res, err
		}
	}
	if loadErr != nil {
		res.Verdict.OK = false
		res.Verdict.Reason = strings.TrimPrefix(res.Verdict.Reason+"; ", "; ") + "the client saw errors: " + loadErr.Error()
	}
	res.Landed = len(res.Verdict.Stale)
	for _, a := range applied {
		if a.Op == "refused" && a.Domain == "disk" && (a.Reason == "stale" || a.Reason == "aborted") {
			res.Refused++
		}
	}
	res.Faults = faultResults(res.Events, w.Acks(), applied, res.End)
	res.Timeline = filepath.Join(cfg.Dir, fmt.Sprintf("timeline-%d-%s.html", seed, cfg.Mode))
	if err := writeTimeline(res.Timeline, &res, w.Acks(), applied, s.Proc("disk").TimedLines()); err != nil {
		return res, err
	}
	return res, nil
}

// writeVisualization writes porcupine's page of the given blocks.
func writeVisualization(path string, h checker.History, blocks []int, timeout time.Duration) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := checker.Visualize(h, blocks, timeout, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func unguardedNote(unguarded bool) string {
	if unguarded {
		return " (the storage checks no token)"
	}
	return ""
}

// faultResults pairs each fault's injection with its healing and
// measures its failover.
func faultResults(events []nemesis.Event, acks []scenario.Ack, applied []storage.Applied, end time.Time) []FaultResult {
	var out []FaultResult
	for _, e := range events {
		switch e.Phase {
		case nemesis.Injected:
			out = append(out, FaultResult{Kind: e.Kind, Target: e.Target, At: e.At})
		case nemesis.Healed:
			if len(out) > 0 {
				out[len(out)-1].Healed = e.At
			}
		}
	}
	for i := range out {
		until := end
		if i+1 < len(out) {
			until = out[i+1].At
		}
		f := &out[i]
		f.Gap = gapWithin(acks, f.At, until)
		for _, a := range applied {
			if t := time.Unix(0, a.At); a.Op == "fence" && t.After(f.At) && t.Before(until) {
				f.ToFence = t.Sub(f.At)
				break
			}
		}
	}
	return out
}

// gapWithin is the longest time without an acknowledgement that ends in
// (from, until]; acks in order of their times.
func gapWithin(acks []scenario.Ack, from, until time.Time) time.Duration {
	var gap time.Duration
	for i := 1; i < len(acks); i++ {
		at := acks[i].At
		if !at.After(from) || at.After(until) {
			continue
		}
		gap = max(gap, at.Sub(acks[i-1].At))
	}
	return gap
}

func readApplyLog(path string) ([]storage.Applied, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return checker.ReadApplyLog(f)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
