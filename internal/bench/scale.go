package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors of Scale. A size that broke carries one of the last four in
// ScaleResult.Err (test with errors.Is).
var (
	// ErrScaleOptions: the options are invalid.
	ErrScaleOptions = errors.New("bench: bad scale options")
	// ErrNotFormed: the groups did not all connect within the timeout.
	ErrNotFormed = errors.New("bench: groups not connected within the timeout")
	// ErrMemoryLimit: the process's resident set grew past the limit.
	ErrMemoryLimit = errors.New("bench: memory limit reached")
	// ErrCoordinatorStopped: the coordinator returned (it only does so on
	// an error, e.g. a store that grants its election too long a lease).
	ErrCoordinatorStopped = errors.New("bench: coordinator stopped")
	// ErrStoreFailed: the embedded store reported a fatal error.
	ErrStoreFailed = errors.New("bench: store failed")
)

// Defaults of ScaleOptions.
const (
	DefaultScalePerClient = 50
	DefaultScaleIdle      = 20 * time.Second
	DefaultScaleReps      = 20
	DefaultScaleTimeout   = 10 * time.Minute
	DefaultScaleParallel  = 64
)

// DefaultScaleGroups are the sizes Scale measures by default.
var DefaultScaleGroups = []int{100, 1000, 10000}

// scaleMembers is the size of every group Scale forms.
const scaleMembers = 3

// ScaleOptions configure Scale. The zero value of a field means its
// default; Validate says what is wrong with the rest.
type ScaleOptions struct {
	// Groups are the numbers of groups to measure, each in a fresh store
	// (default DefaultScaleGroups).
	Groups []int
	// PerClient is how many memberships share one etcd client (default
	// 50), as the groups of one domain or the domains of one process may.
	PerClient int
	// Idle is the idle window over which CPU, renewals and spontaneous
	// fences are counted (default 20 s).
	Idle time.Duration
	// Reps is how many epoch changes of one group are timed, alone and
	// beside the idle groups (default 20).
	Reps int
	// Timeout bounds the formation of the groups, and separately the
	// burst (default 10 min): a size that does not connect in time is
	// reported as broken (ErrNotFormed), not waited for.
	Timeout time.Duration
	// Parallel is how many Joins run at once while the groups form
	// (default 64).
	Parallel int
	// BurstParallel bounds the Joins of the burst running at once (0: all
	// at once, the default).
	BurstParallel int
	// MaxRSS stops a size whose process resident set exceeds it
	// (ErrMemoryLimit); 0: no limit.
	MaxRSS int64
	// KeepGoing measures the larger sizes after one broke; by default
	// Scale stops at the first size that broke.
	KeepGoing bool
	// DataDir holds the stores, a directory per size, removed after it
	// (default: a temporary directory).
	DataDir string
	// CPUProfile, if set, is a path prefix: the idle window of each size
	// is profiled to <prefix>-<groups>.pprof.
	CPUProfile string
	// Progress receives progress lines (may be nil).
	Progress io.Writer
	// Logger receives the components' logs (default: discarded). Their
	// warnings and errors are counted either way (ScaleResult.Warnings).
	Logger *slog.Logger
}

// Validate checks o as it is, zeros meaning defaults; errors wrap
// ErrScaleOptions.
func (o ScaleOptions) Validate() error {
	for _, g := range o.Groups {
		if g < 1 {
			return fmt.Errorf("%w: group count %d: want at least 1", ErrScaleOptions, g)
		}
	}
	switch {
	case o.PerClient < 0:
		return fmt.Errorf("%w: memberships per client %d: want at least 1", ErrScaleOptions, o.PerClient)
	case o.Idle < 0:
		return fmt.Errorf("%w: idle window %v: want a positive duration", ErrScaleOptions, o.Idle)
	case o.Reps < 0:
		return fmt.Errorf("%w: reps %d: want at least 1", ErrScaleOptions, o.Reps)
	case o.Timeout < 0:
		return fmt.Errorf("%w: timeout %v: want a positive duration", ErrScaleOptions, o.Timeout)
	case o.Parallel < 0:
		return fmt.Errorf("%w: parallel joins %d: want at least 1", ErrScaleOptions, o.Parallel)
	case o.BurstParallel < 0:
		return fmt.Errorf("%w: parallel joins in the burst %d: want 0 (all at once) or more", ErrScaleOptions, o.BurstParallel)
	case o.MaxRSS < 0:
		return fmt.Errorf("%w: memory limit %d: want 0 (none) or a positive size", ErrScaleOptions, o.MaxRSS)
	}
	return nil
}

func (o *ScaleOptions) defaults() {
	if len(o.Groups) == 0 {
		o.Groups = slices.Clone(DefaultScaleGroups)
	}
	o.PerClient = cmp0(o.PerClient, DefaultScalePerClient)
	o.Reps = cmp0(o.Reps, DefaultScaleReps)
	o.Parallel = cmp0(o.Parallel, DefaultScaleParallel)
	o.Idle = orDefault(o.Idle, DefaultScaleIdle)
	o.Timeout = orDefault(o.Timeout, DefaultScaleTimeout)
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

func cmp0(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// ScaleResources are this process's resources at one moment.
type ScaleResources struct {
	Goroutines int   `json:"goroutines"`
	FDs        int   `json:"fds"`
	RSS        int64 `json:"rss"`
}

func resources() ScaleResources {
	fds := -1
	if es, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(es)
	}
	return ScaleResources{Goroutines: runtime.NumGoroutine(), FDs: fds, RSS: rss()}
}

// ScaleResult holds the figures of one size. Durations are in
// nanoseconds in JSON.
type ScaleResult struct {
	// Groups idle groups of Members memberships each (3 per group), on
	// Clients store clients (PerClient memberships each).
	Groups      int `json:"groups"`
	Memberships int `json:"memberships"`
	PerClient   int `json:"per_client"`
	Clients     int `json:"clients"`
	// Outcome is "ok"; "degraded: " and what went wrong in a size that
	// completed (the coordinator lost its election, memberships were
	// fenced, renewals failed, groups were lost in the burst, etcd refused
	// requests); or "broke while " the phase and what broke. Err is what
	// broke (wrapping ErrNotFormed, ErrMemoryLimit, ErrCoordinatorStopped,
	// ErrStoreFailed, or another failure), nil otherwise.
	Outcome string `json:"outcome"`
	Err     error  `json:"-"`

	// Formation: from the first Join to every membership of the Groups
	// groups connected, or its group lost (Connected counts the
	// memberships of the groups connected).
	Formation time.Duration `json:"formation_ns"`
	Connected int           `json:"connected"`
	// FormationLost counts the groups lost while forming (a join failed,
	// FormationError says how, or a membership was fenced); they are
	// left out of the burst.
	FormationLost  int    `json:"formation_lost"`
	FormationError string `json:"formation_error,omitempty"`

	// Idle is the idle window's wall time and IdleCPU the process's CPU
	// time (user+sys) in it: the store, the coordinator and every
	// membership run in this process. CPUCores is their ratio, and
	// CPUPer1000 the same per 1000 of the IdleMemberships (those live when
	// the window began, the base group's included).
	IdleMemberships int `json:"idle_memberships"`
	// OtherCores is the CPU every other process of the machine used in
	// the idle window, in cores (from /proc/stat; -1 if unknown), of
	// Cores: what this run competed with.
	OtherCores float64       `json:"other_cores"`
	Cores      int           `json:"cores"`
	Idle       time.Duration `json:"idle_ns"`
	IdleCPU    time.Duration `json:"idle_cpu_ns"`
	CPUCores   float64       `json:"cpu_cores"`
	CPUPer1000 float64       `json:"cpu_cores_per_1000"`
	// Renewals the store's leader answered in the idle window (etcd's
	// etcd_debugging_lease_renewed_total, which also counts the
	// coordinator's election session, about one renewal a second), -1
	// if the metric is missing; RenewalsPerSec is their rate and
	// RenewalsExpected what RenewInterval implies (memberships per
	// second, of the IdleMemberships).
	Renewals         int64   `json:"renewals"`
	RenewalsPerSec   float64 `json:"renewals_per_s"`
	RenewalsExpected float64 `json:"renewals_expected_per_s"`
	// RenewP50, RenewP99 and RenewMax: how long renewals took as the
	// members saw them, from send to the answer handled (the lease's
	// validity minus idc_member_lease_valid_seconds right after the
	// answer), over every membership's last renewal at the start and at
	// the end of the idle window (RenewSamples).
	RenewP50     time.Duration `json:"renew_p50_ns"`
	RenewP99     time.Duration `json:"renew_p99_ns"`
	RenewMax     time.Duration `json:"renew_max_ns"`
	RenewSamples int           `json:"renew_samples"`
	// RenewFailures in the idle window, and over the whole size
	// (idc_member_renew_failures_total).
	RenewFailures      int64 `json:"renew_failures_idle"`
	RenewFailuresTotal int64 `json:"renew_failures_total"`

	// Spontaneous epoch changes in the idle window, when nothing was
	// injected (epoch records written quiescing, seen by a store watch,
	// with the reasons the coordinator gave), and memberships that ended
	// in it (fenced: their Err is set). Both should be 0.
	SpontaneousEpochs  int64    `json:"spontaneous_epochs"`
	SpontaneousReasons []string `json:"spontaneous_reasons,omitempty"`
	Ended              int      `json:"ended"`
	// FencedLease and FencedEvicted count fences over the whole size
	// (idc_member_fenced_total).
	FencedLease   int64 `json:"fenced_lease"`
	FencedEvicted int64 `json:"fenced_evicted"`

	// Single: one group's epoch change (a new domain joins, until every
	// member holds the new connected epoch) with no other group; Loaded:
	// the same group's beside the Groups idle groups. Ratio is the ratio
	// of their medians.
	Single []time.Duration `json:"single_ns"`
	Loaded []time.Duration `json:"loaded_ns"`
	Ratio  float64         `json:"ratio"`

	// Burst: a new domain joins every group at once; from the first Join
	// to every group connected with it (BurstConnected groups) or lost
	// (BurstLost: the join failed, BurstError says how, or a membership
	// was fenced), BurstJoins until the last Join returned; BurstPerSec
	// is BurstConnected/Burst, epoch changes per second.
	Burst          time.Duration `json:"burst_ns"`
	BurstJoins     time.Duration `json:"burst_joins_ns"`
	BurstConnected int           `json:"burst_connected"`
	BurstLost      int           `json:"burst_lost"`
	BurstError     string        `json:"burst_error,omitempty"`
	BurstPerSec    float64       `json:"burst_per_s"`

	// LeaderLosses: times the coordinator's idc_coordinator_leader went
	// from 1 to 0, and Leaderless the time it was 0 after that, in all
	// (sampled every 250 ms). WriteFailures and Relists are its
	// epoch_write_failures_total and relists_total.
	LeaderLosses  int           `json:"leader_losses"`
	Leaderless    time.Duration `json:"leaderless_ns"`
	WriteFailures int64         `json:"coordinator_write_failures"`
	Relists       int64         `json:"coordinator_relists"`
	// WatchResyncs: times the harness's own epoch watch failed and was
	// restarted from the current revision (events in between were lost).
	WatchResyncs int `json:"watch_resyncs"`
	// Warnings counts the components' warnings and errors by message;
	// WarningSamples holds a few distinct ones with their error;
	// TooManyRequests counts those where etcd refused a request as too
	// many.
	Warnings        map[string]int `json:"warnings,omitempty"`
	WarningSamples  []string       `json:"warning_samples,omitempty"`
	TooManyRequests int            `json:"too_many_requests"`

	// This process's resources before the size, once formed, after the
	// idle window, at the peak of formation and after the shutdown.
	Before   ScaleResources `json:"before"`
	Formed   ScaleResources `json:"formed"`
	AfterIdl ScaleResources `json:"after_idle"`
	After    ScaleResources `json:"after"`
	PeakRSS  int64          `json:"peak_rss"`
}

// Broke reports whether the size broke.
func (r ScaleResult) Broke() bool { return r.Err != nil }

// problems lists what went wrong in a size that did not break.
func (r ScaleResult) problems() []string {
	var p []string
	add := func(ok bool, format string, args ...any) {
		if !ok {
			p = append(p, fmt.Sprintf(format, args...))
		}
	}
	add(r.FormationLost == 0, "formation: %d groups lost", r.FormationLost)
	add(r.LeaderLosses == 0, "the coordinator lost its election %d× (%v without a leader)", r.LeaderLosses, r.Leaderless.Round(time.Second))
	add(r.SpontaneousEpochs == 0 && r.Ended == 0, "idle: %d spontaneous epoch changes, %d memberships ended", r.SpontaneousEpochs, r.Ended)
	add(r.FencedLease == 0 && r.FencedEvicted == 0, "%d memberships fenced (lease) and %d evicted", r.FencedLease, r.FencedEvicted)
	add(r.RenewFailuresTotal == 0, "%d renewals failed", r.RenewFailuresTotal)
	add(r.BurstLost == 0, "burst: %d groups lost", r.BurstLost)
	add(r.TooManyRequests == 0, "etcd refused %d requests as too many", r.TooManyRequests)
	add(r.WatchResyncs == 0, "the epoch watch failed %d× (events lost)", r.WatchResyncs)
	return p
}

// Scale measures how idc scales out in one process: for each size in
// o.Groups, on a fresh embedded store with one coordinator, it forms that
// many groups of 3 memberships (no channels, PerClient memberships per
// store client) and measures the formation time, the process's CPU and
// the store's lease renewals over an idle window, the renewals' latency,
// spontaneous fences, one group's epoch change beside the idle groups
// against the same alone (measured first, in the same store), and a burst
// of one join in every group. A size that breaks (does not form within
// o.Timeout, runs out of memory, loses its coordinator or store) is
// reported as such in its result; Scale then stops unless o.KeepGoing.
// It returns an error only for invalid options or when ctx ends, with the
// results so far.
func Scale(ctx context.Context, o ScaleOptions) ([]ScaleResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.defaults()
	base := o.DataDir
	if base == "" {
		d, err := os.MkdirTemp("", "idc-scale-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		base = d
	}
	var out []ScaleResult
	for i, g := range o.Groups {
		o.say("== %d groups × %d memberships (%d of %d sizes)", g, scaleMembers, i+1, len(o.Groups))
		res := scaleSize(ctx, o, g, filepath.Join(base, fmt.Sprintf("size-%d", g)))
		out = append(out, res)
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		if res.Broke() {
			o.say("== %d groups broke: %s", g, res.Outcome)
			if !o.KeepGoing && i+1 < len(o.Groups) {
				o.say("== stopping: the larger sizes %v would break too (--keep-going measures them anyway)", o.Groups[i+1:])
				break
			}
		}
	}
	return out, nil
}

func (o ScaleOptions) say(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// scaleRun is one size's state.
type scaleRun struct {
	o     ScaleOptions
	g     int
	start time.Time
	res   *ScaleResult
	phase atomic.Pointer[string]

	e        *store.Embedded
	ctl      *clientv3.Client // the coordinator's
	wcli     *clientv3.Client // the epoch watch's
	run      context.Context  // ends when the size breaks or ctx ends
	stop     context.CancelCauseFunc
	bg       sync.WaitGroup // coordinator, monitors, watch
	stopCoor context.CancelFunc
	coorDone chan struct{}

	memberReg *prometheus.Registry
	coordReg  *prometheus.Registry
	logs      *logCounter
	watch     *epochWatch

	clientsMu sync.Mutex
	clients   []*clientv3.Client

	// slots holds the G groups' memberships, 3 per group, in group order;
	// extra the base group's, the timed joiners' and the burst's.
	slots   []atomic.Pointer[idc.Membership]
	formed  []int // the groups connected at the end of the formation
	extraMu sync.Mutex
	extra   []*idc.Membership
	nextIdx atomic.Int64 // membership index, for the client it uses

	stopping atomic.Bool // the shutdown began
}

func (r *scaleRun) say(format string, args ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, "[%6.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
	}
}

func (r *scaleRun) setPhase(p string) { r.phase.Store(&p) }

func scaleSize(ctx context.Context, o ScaleOptions, g int, dir string) ScaleResult {
	res := ScaleResult{Groups: g, Memberships: g * scaleMembers, PerClient: o.PerClient, Before: resources(), Outcome: "ok"}
	r := &scaleRun{o: o, g: g, start: time.Now(), res: &res, slots: make([]atomic.Pointer[idc.Membership], g*scaleMembers)}
	r.setPhase("start")
	r.run, r.stop = context.WithCancelCause(ctx)
	err := r.measure(ctx, dir)
	if err != nil {
		if c := context.Cause(r.run); c != nil && !errors.Is(c, context.Canceled) {
			err = c // what broke, rather than the step that noticed it
		}
		res.Err = err
		res.Outcome = fmt.Sprintf("broke while %s: %v", *r.phase.Load(), err)
		r.say("%s", res.Outcome)
	}
	r.shutdown(dir)
	res.After = resources()
	res.Clients = len(r.clients)
	if !res.Broke() {
		if p := res.problems(); len(p) > 0 {
			res.Outcome = "degraded: " + strings.Join(p, "; ")
			r.say("%s", res.Outcome)
		}
	}
	r.say("shut down: goroutines %d (before %d), fds %d (before %d), rss %s",
		res.After.Goroutines, res.Before.Goroutines, res.After.FDs, res.Before.FDs, mib(res.After.RSS))
	return res
}

// measure runs the phases of one size; the first error ends it.
func (r *scaleRun) measure(ctx context.Context, dir string) error {
	if err := r.setup(ctx, dir); err != nil {
		return err
	}
	// One group alone, in the same store, before the others exist.
	r.setPhase("timing one group alone")
	baseMembers, err := r.joinBase()
	if err != nil {
		return err
	}
	tr := newEpochs()
	for _, d := range baseMembers {
		tr.follow(r.run, d)
	}
	if err := tr.wait(r.run, baseMembers, scaleMembers); err != nil {
		return err
	}
	r.say("timing %d epoch changes of one group alone", r.o.Reps)
	if r.res.Single, err = r.changes(tr, baseMembers, "a"); err != nil {
		return err
	}
	r.say("one group alone: p50 %v", Median(r.res.Single).Round(time.Microsecond))

	r.setPhase("forming the groups")
	if err := r.form(); err != nil {
		return err
	}
	r.res.Formed = resources()
	r.say("formed: %d groups in %v (%.0f memberships/s); goroutines %d, fds %d, rss %s", r.g,
		r.res.Formation.Round(time.Millisecond), float64(r.res.Memberships)/r.res.Formation.Seconds(),
		r.res.Formed.Goroutines, r.res.Formed.FDs, mib(r.res.Formed.RSS))

	r.setPhase("idle")
	if err := r.idle(); err != nil {
		return err
	}
	r.res.AfterIdl = resources()

	r.setPhase("timing one group beside the idle groups")
	r.say("timing %d epoch changes of one group beside %d idle groups", r.o.Reps, r.g)
	if r.res.Loaded, err = r.changes(tr, baseMembers, "b"); err != nil {
		return err
	}
	r.res.Ratio = float64(Median(r.res.Loaded)) / float64(Median(r.res.Single))
	r.say("beside %d idle groups: p50 %v, %.2f× alone", r.g, Median(r.res.Loaded).Round(time.Microsecond), r.res.Ratio)

	r.setPhase("burst")
	return r.burst()
}

// setup starts the store, the coordinator, its monitors and the watch.
func (r *scaleRun) setup(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	r.logs = newLogCounter(r.o.Logger.Handler())
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0",
		Logger: slog.New(r.logs.handler("store")),
	})
	if err != nil {
		return err
	}
	r.e = e
	if r.ctl, err = r.dial(); err != nil {
		return err
	}
	r.memberReg = prometheus.NewRegistry()
	r.coordReg = prometheus.NewRegistry()

	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.stopCoor, r.coorDone = cancel, make(chan struct{})
	ccfg := coordinator.DefaultConfig()
	ccfg.Client, ccfg.Logger = r.ctl, slog.New(r.logs.handler("coordinator"))
	ccfg.Metrics = keepRegisterer{r.coordReg, keepCoordinatorMetric}
	go func() {
		defer close(r.coorDone)
		err := coordinator.Run(cctx, ccfg)
		if cctx.Err() == nil {
			r.stop(fmt.Errorf("%w: %v", ErrCoordinatorStopped, err))
		}
	}()
	r.bg.Go(func() {
		select {
		case err := <-e.Err():
			r.stop(fmt.Errorf("%w: %v", ErrStoreFailed, err))
		case <-r.run.Done():
		}
	})
	r.bg.Go(r.monitor)

	// The watch on a client of its own, so that what it receives does not
	// delay the coordinator's requests.
	if r.wcli, err = r.dial(); err != nil {
		return err
	}
	r.watch = &epochWatch{}
	if err := r.watch.start(r.run, &r.bg, r.wcli, proto.Keys{}); err != nil {
		return err
	}
	// Wait for the coordinator to lead.
	wctx, wcancel := context.WithTimeout(r.run, time.Minute)
	defer wcancel()
	for gaugeValue(r.coordReg, "idc_coordinator_leader") != 1 {
		if !sleep(wctx, 20*time.Millisecond) {
			return fmt.Errorf("bench: the coordinator was not elected: %w", context.Cause(wctx))
		}
	}
	r.say("store and coordinator ready in %v", time.Since(r.start).Round(time.Millisecond))
	return nil
}

func (r *scaleRun) dial() (*clientv3.Client, error) {
	return store.Dial(r.run, store.DialConfig{Endpoints: r.e.Endpoints, Logger: slog.New(r.logs.handler("client"))})
}

// client returns the store client of membership index i, dialling it if
// needed.
func (r *scaleRun) client(i int) (*clientv3.Client, error) {
	k := i / r.o.PerClient
	r.clientsMu.Lock()
	defer r.clientsMu.Unlock()
	for len(r.clients) <= k {
		cli, err := r.dial()
		if err != nil {
			return nil, err
		}
		r.clients = append(r.clients, cli)
	}
	return r.clients[k], nil
}

// join joins domain id to group in ctx, on the client of the next
// membership index.
func (r *scaleRun) join(ctx context.Context, group, id string) (*idc.Membership, error) {
	cli, err := r.client(int(r.nextIdx.Add(1) - 1))
	if err != nil {
		return nil, err
	}
	cfg := idc.DefaultConfig()
	cfg.Group, cfg.ID, cfg.Client = group, id, cli
	cfg.Logger = slog.New(r.logs.handler("member"))
	cfg.Metrics = keepRegisterer{r.memberReg, keepMemberMetric}
	// No channels: the store's side of scale. Channels are measured by
	// idc bench channel.
	cfg.Listen = ""
	return idc.Join(ctx, cfg)
}

// joinExtra joins a membership that is not one of the G groups'.
func (r *scaleRun) joinExtra(ctx context.Context, group, id string) (*idc.Membership, error) {
	d, err := r.join(ctx, group, id)
	if err == nil {
		r.extraMu.Lock()
		r.extra = append(r.extra, d)
		r.extraMu.Unlock()
	}
	return d, err
}

const scaleBase = "base"

func (r *scaleRun) joinBase() ([]*idc.Membership, error) {
	var ds []*idc.Membership
	for i := range scaleMembers {
		d, err := r.joinExtra(r.run, scaleBase, fmt.Sprintf("m%d", i))
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	return ds, nil
}

// changes times r.o.Reps epoch changes of the base group: a new domain
// (prefix and the rep's number) joins, until every member holds the new
// connected epoch; it then leaves, untimed.
func (r *scaleRun) changes(tr *epochs, ds []*idc.Membership, prefix string) ([]time.Duration, error) {
	var out []time.Duration
	for rep := range r.o.Reps {
		start := time.Now()
		d, err := r.joinExtra(r.run, scaleBase, fmt.Sprintf("%s%03d", prefix, rep))
		if err != nil {
			return out, err
		}
		tr.follow(r.run, d)
		if err := tr.wait(r.run, append(slices.Clone(ds), d), scaleMembers+1); err != nil {
			return out, err
		}
		out = append(out, time.Since(start))
		if err := d.Leave(r.run); err != nil {
			return out, err
		}
		if err := tr.wait(r.run, ds, scaleMembers); err != nil {
			return out, err
		}
	}
	return out, nil
}

func groupName(i int) string { return fmt.Sprintf("g%05d", i) }

// connected reports whether every membership of ds holds one connected
// epoch of n members.
func connected(ds []*idc.Membership, n int) bool {
	var num uint64
	for _, d := range ds {
		if d == nil {
			return false
		}
		ep := d.Current()
		if ep == nil || ep.Context().Err() != nil || len(ep.Members()) != n || num != 0 && ep.Number() != num {
			return false
		}
		num = ep.Number()
	}
	return true
}

func (r *scaleRun) group(i int) []*idc.Membership {
	ds := make([]*idc.Membership, scaleMembers)
	for j := range ds {
		ds[j] = r.slots[i*scaleMembers+j].Load()
	}
	return ds
}

// form joins the G groups' memberships, o.Parallel at a time, and waits
// until every group is connected, within o.Timeout. A group whose join
// failed or whose membership ended (fenced) is lost: it is counted and
// left out of the burst, and the others are waited for. The size broke
// if they are not all connected or lost in time, or none connected.
func (r *scaleRun) form() error {
	ctx, cancel := context.WithTimeoutCause(r.run, r.o.Timeout, ErrNotFormed)
	defer cancel()
	r.say("forming %d groups (%d memberships, %d joins at a time, %d per client)", r.g, r.res.Memberships, r.o.Parallel, r.o.PerClient)
	start := time.Now()
	var (
		next, joined atomic.Int64
		failed       = make([]atomic.Bool, r.g)
		jerrs        joinErrors
		wg           sync.WaitGroup
	)
	for range min(r.o.Parallel, len(r.slots)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(r.slots) || ctx.Err() != nil {
					return
				}
				d, err := r.join(ctx, groupName(i/scaleMembers), fmt.Sprintf("m%d", i%scaleMembers))
				if err != nil {
					failed[i/scaleMembers].Store(true)
					jerrs.add(fmt.Errorf("join %s/m%d: %w", groupName(i/scaleMembers), i%scaleMembers, err))
					continue
				}
				r.slots[i].Store(d)
				joined.Add(1)
			}
		})
	}
	defer wg.Wait()
	formed, lost, err := r.await(ctx, allGroups(r.g), r.group, func(i int) bool { return failed[i].Load() }, scaleMembers, 100*time.Millisecond,
		func(done, lost int) {
			rs := resources()
			r.say("forming: %d/%d joined, %d/%d groups connected, %d lost; goroutines %d, fds %d, rss %s",
				joined.Load(), len(r.slots), done, r.g, lost, rs.Goroutines, rs.FDs, mib(rs.RSS))
		})
	r.formed = formed
	r.res.Connected = len(formed) * scaleMembers
	r.res.FormationLost = lost
	r.res.FormationError = strings.TrimPrefix(jerrs.String(), "; ")
	switch {
	case err != nil && errors.Is(err, ErrNotFormed):
		return fmt.Errorf("%w (%v): %d of %d memberships joined, %d of %d groups connected, %d lost%s",
			ErrNotFormed, r.o.Timeout, joined.Load(), len(r.slots), len(formed), r.g, lost, jerrs.String())
	case err != nil:
		return err
	case len(formed) == 0:
		return fmt.Errorf("%w: all %d groups lost (a join failed or a membership was fenced)%s", ErrNotFormed, r.g, jerrs.String())
	}
	r.res.Formation = time.Since(start)
	if lost > 0 {
		r.say("formation: %d of %d groups lost (a join failed or a membership was fenced)%s", lost, r.g, jerrs.String())
	}
	return nil
}

func allGroups(n int) []int {
	gs := make([]int, n)
	for i := range gs {
		gs[i] = i
	}
	return gs
}

// await polls until each group of groups is connected with n members
// (members(i)) or lost (failed(i), or one of its memberships ended), or
// ctx ends (with its cause); it returns the groups connected, in order,
// and how many were lost. progress is called every 5 s. It polls every
// every, or less often if a poll itself takes long: the harness's CPU
// stays under a twentieth of a core, so that at 30,000 memberships it does
// not starve what it measures.
func (r *scaleRun) await(ctx context.Context, groups []int, members func(int) []*idc.Membership, failed func(int) bool, n int, every time.Duration, progress func(done, lost int)) (done []int, lost int, err error) {
	pending := slices.Clone(groups)
	defer func() { slices.Sort(done) }()
	lastSay := time.Now()
	for {
		t0 := time.Now()
		pending = slices.DeleteFunc(pending, func(i int) bool {
			ds := members(i)
			switch {
			case connected(ds, n):
				done = append(done, i)
				return true
			case failed(i) || slices.ContainsFunc(ds, func(d *idc.Membership) bool { return d != nil && d.Err() != nil }):
				lost++
				return true
			}
			return false
		})
		if len(pending) == 0 {
			return done, lost, nil
		}
		if time.Since(lastSay) >= 5*time.Second {
			lastSay = time.Now()
			progress(len(done), lost)
		}
		if !sleep(ctx, max(every, 20*time.Since(t0))) {
			return done, lost, context.Cause(ctx)
		}
	}
}

// joinErrors keeps the first join error and counts them.
type joinErrors struct {
	mu    sync.Mutex
	n     int
	first error
}

func (j *joinErrors) add(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.n == 0 {
		j.first = err
	}
	j.n++
}

// String is "" without errors, else a clause for a message.
func (j *joinErrors) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.n == 0 {
		return ""
	}
	return fmt.Sprintf("; %d joins failed, the first: %v", j.n, j.first)
}

// idle counts CPU, renewals and spontaneous fences over the idle window.
func (r *scaleRun) idle() error {
	r.say("idle for %v", r.o.Idle)
	valid := leaseValidity()
	lat := renewLatencies(r.memberReg, valid)
	failed0 := counterSum(r.memberReg, "idc_member_renew_failures_total")
	renewed0 := counterSum(prometheus.DefaultGatherer, "etcd_debugging_lease_renewed_total")
	ended0 := r.ended()
	live := 0
	for i := range r.slots {
		if d := r.slots[i].Load(); d != nil && d.Err() == nil {
			live++
		}
	}
	var prof *os.File
	if r.o.CPUProfile != "" {
		f, err := os.Create(fmt.Sprintf("%s-%d.pprof", r.o.CPUProfile, r.g))
		switch {
		case err != nil:
			r.say("no idle profile: %v", err)
		case pprof.StartCPUProfile(f) != nil:
			r.say("no idle profile: a CPU profile is already running")
			f.Close()
		default:
			prof = f
		}
	}
	quiescing0 := r.watch.record(true)
	cpu0, t0, busy0 := cpuTime(), time.Now(), machineBusy()
	ok := sleep(r.run, r.o.Idle)
	cpu1, t1, busy1 := cpuTime(), time.Now(), machineBusy()
	quiescing1 := r.watch.record(false)
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
	if !ok {
		return context.Cause(r.run)
	}
	res := r.res
	res.Idle, res.IdleCPU = t1.Sub(t0), cpu1-cpu0
	res.CPUCores = res.IdleCPU.Seconds() / res.Idle.Seconds()
	res.OtherCores = -1
	if busy0 >= 0 && busy1 >= 0 {
		res.OtherCores = max(0, (busy1-busy0-res.IdleCPU).Seconds()/res.Idle.Seconds())
	}
	res.Cores = runtime.NumCPU()
	res.IdleMemberships = live + scaleMembers
	res.CPUPer1000 = res.CPUCores * 1000 / float64(res.IdleMemberships)
	renewed1 := counterSum(prometheus.DefaultGatherer, "etcd_debugging_lease_renewed_total")
	res.Renewals = -1
	if renewed0 >= 0 && renewed1 >= 0 {
		res.Renewals = int64(renewed1 - renewed0)
		res.RenewalsPerSec = float64(res.Renewals) / res.Idle.Seconds()
	}
	// Every live membership of the groups, plus the base group's.
	res.RenewalsExpected = float64(res.IdleMemberships) / idc.DefaultRenewInterval.Seconds()
	res.RenewFailures = int64(max(0, counterSum(r.memberReg, "idc_member_renew_failures_total")) - max(0, failed0))
	lat = append(lat, renewLatencies(r.memberReg, valid)...)
	res.RenewSamples = len(lat)
	res.RenewP50, res.RenewP99 = Percentile(lat, 50), Percentile(lat, 99)
	if len(lat) > 0 {
		res.RenewMax = slices.Max(lat)
	}
	res.SpontaneousEpochs = quiescing1 - quiescing0
	res.SpontaneousReasons = r.watch.reasons()
	res.Ended = r.ended() - ended0
	r.say("idle: %.1f%% of a core (%.2f%% per 1000 memberships; other processes %.2f of %d cores), %.0f renewals/s (expected %.0f), renewal p50 %v p99 %v, %d failed; %d spontaneous epoch changes, %d memberships ended",
		res.CPUCores*100, res.CPUPer1000*100, res.OtherCores, res.Cores, res.RenewalsPerSec, res.RenewalsExpected,
		res.RenewP50.Round(time.Microsecond), res.RenewP99.Round(time.Microsecond), res.RenewFailures, res.SpontaneousEpochs, res.Ended)
	return nil
}

// ended counts the G groups' memberships that have stopped.
func (r *scaleRun) ended() int {
	n := 0
	for i := range r.slots {
		if d := r.slots[i].Load(); d != nil && d.Err() != nil {
			n++
		}
	}
	return n
}

// burst joins a new domain to every group at once and waits until every
// group is connected with it, within o.Timeout. Groups lost on the way
// (the join failed or a membership was fenced) are counted, not waited
// for.
func (r *scaleRun) burst() error {
	ctx, cancel := context.WithTimeoutCause(r.run, r.o.Timeout, ErrNotFormed)
	defer cancel()
	groups := r.formed // not those lost while forming
	par := r.o.BurstParallel
	if par == 0 || par > len(groups) {
		par = len(groups)
		r.say("burst: a new domain joins each of the %d groups at once", len(groups))
	} else {
		r.say("burst: a new domain joins each of the %d groups, %d joins at a time", len(groups), par)
	}
	sem := make(chan struct{}, par)
	var (
		joiners  = make([]atomic.Pointer[idc.Membership], r.g)
		failed   = make([]atomic.Bool, r.g)
		jerrs    joinErrors
		wg       sync.WaitGroup
		lastJoin atomic.Int64
	)
	start := time.Now()
	for _, i := range groups {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				failed[i].Store(true)
				return
			}
			d, err := r.joinExtra(ctx, groupName(i), "n")
			if err != nil {
				failed[i].Store(true)
				jerrs.add(fmt.Errorf("join %s/n: %w", groupName(i), err))
				return
			}
			joiners[i].Store(d)
			for {
				at, now := lastJoin.Load(), int64(time.Since(start))
				if now <= at || lastJoin.CompareAndSwap(at, now) {
					break
				}
			}
		})
	}
	defer wg.Wait()
	changed, lost, err := r.await(ctx, groups, func(i int) []*idc.Membership { return append(r.group(i), joiners[i].Load()) },
		func(i int) bool { return failed[i].Load() }, scaleMembers+1, 10*time.Millisecond,
		func(done, lost int) {
			r.say("burst: %d/%d groups connected with the new domain, %d lost", done, len(groups), lost)
		})
	r.res.Burst = time.Since(start)
	done := len(changed)
	r.res.BurstConnected, r.res.BurstLost = done, lost
	if err != nil {
		r.res.Burst = 0
		if errors.Is(err, ErrNotFormed) {
			err = fmt.Errorf("%w (%v): burst: %d of %d groups connected with the new domain, %d lost%s", ErrNotFormed, r.o.Timeout, done, len(groups), lost, jerrs.String())
		}
		return err
	}
	wg.Wait()
	r.res.BurstJoins = time.Duration(lastJoin.Load())
	r.res.BurstPerSec = float64(done) / r.res.Burst.Seconds()
	r.res.BurstError = strings.TrimPrefix(jerrs.String(), "; ")
	r.say("burst: %d groups changed in %v (%.0f changes/s; the last Join returned after %v), %d lost%s",
		done, r.res.Burst.Round(time.Millisecond), r.res.BurstPerSec, r.res.BurstJoins.Round(time.Millisecond), lost, jerrs.String())
	return nil
}

// monitor watches the coordinator's leadership and the memory limit
// until the size ends, and keeps the peak RSS.
func (r *scaleRun) monitor() {
	was, last := false, time.Now()
	for sleep(r.run, 250*time.Millisecond) && !r.stopping.Load() {
		lead := gaugeValue(r.coordReg, "idc_coordinator_leader") == 1
		now := time.Now()
		if !lead && r.res.LeaderLosses > 0 {
			r.res.Leaderless += now.Sub(last)
		}
		last = now
		if was && !lead {
			r.res.LeaderLosses++
			r.say("the coordinator lost its election (%d times so far)", r.res.LeaderLosses)
		}
		if !was && lead && r.res.LeaderLosses > 0 {
			r.say("the coordinator leads again, after %v without a leader in all", r.res.Leaderless.Round(time.Millisecond))
		}
		was = lead
		m := rss()
		r.res.PeakRSS = max(r.res.PeakRSS, m)
		if r.o.MaxRSS > 0 && m > r.o.MaxRSS {
			r.stop(fmt.Errorf("%w: rss %s over %s", ErrMemoryLimit, mib(m), mib(r.o.MaxRSS)))
			return
		}
	}
}

// shutdown stops everything of the size: the coordinator first, so that
// closing the memberships causes no epoch changes, then the memberships,
// the clients, the monitors and the store; it removes dir and waits
// (briefly) for the goroutines to end.
func (r *scaleRun) shutdown(dir string) {
	r.setPhase("shutting down")
	// What the shutdown itself causes (the coordinator stepping down,
	// members closing) is not counted.
	r.stopping.Store(true)
	if r.logs != nil {
		r.logs.frozen.Store(true)
	}
	r.collectCounts()
	if r.stopCoor != nil {
		r.stopCoor()
		<-r.coorDone
	}
	var ds []*idc.Membership
	for i := range r.slots {
		if d := r.slots[i].Load(); d != nil {
			ds = append(ds, d)
		}
	}
	r.extraMu.Lock()
	ds = append(ds, r.extra...)
	r.extraMu.Unlock()
	if len(ds) > 0 {
		r.say("closing %d memberships", len(ds))
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(r.o.Parallel, len(ds)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(ds); i = int(next.Add(1) - 1) {
				ds[i].Close()
			}
		})
	}
	wg.Wait()
	r.clientsMu.Lock()
	for _, c := range r.clients {
		c.Close()
	}
	r.clientsMu.Unlock()
	r.stop(context.Canceled)
	r.bg.Wait()
	for _, c := range []*clientv3.Client{r.ctl, r.wcli} {
		if c != nil {
			c.Close()
		}
	}
	if r.e != nil {
		r.e.Close()
	}
	if err := os.RemoveAll(dir); err != nil {
		r.say("could not remove %s: %v", dir, err)
	}
	// Goroutines end shortly after their membership or client closed.
	for i := 0; i < 50 && runtime.NumGoroutine() > r.res.Before.Goroutines+20; i++ {
		time.Sleep(100 * time.Millisecond)
	}
}

// collectCounts reads the counters kept across the size, before the
// shutdown.
func (r *scaleRun) collectCounts() {
	res := r.res
	// A counter family with no sample yet is absent: 0.
	count := func(g prometheus.Gatherer, name string, labels ...string) int64 {
		return int64(max(0, counterSum(g, name, labels...)))
	}
	if r.memberReg != nil {
		res.RenewFailuresTotal = count(r.memberReg, "idc_member_renew_failures_total")
		res.FencedLease = count(r.memberReg, "idc_member_fenced_total", "reason", "lease")
		res.FencedEvicted = count(r.memberReg, "idc_member_fenced_total", "reason", "evicted")
	}
	if r.coordReg != nil {
		res.WriteFailures = count(r.coordReg, "idc_coordinator_epoch_write_failures_total")
		res.Relists = count(r.coordReg, "idc_coordinator_relists_total")
	}
	if r.watch != nil {
		res.WatchResyncs = r.watch.resyncs()
	}
	if r.logs != nil {
		res.Warnings, res.WarningSamples, res.TooManyRequests = r.logs.snapshot()
	}
}

// leaseValidity is how long a membership counts its lease valid after
// sending a renewal that was answered, with DefaultConfig's lease:
// LeaseTTL·(1−ρ) − LeaseMargin (idc.Config's documentation).
func leaseValidity() time.Duration {
	c := idc.DefaultConfig()
	return time.Duration(float64(c.LeaseTTL)*(1-c.Rho)) - c.LeaseMargin
}

// renewLatencies derives, for every membership, how long its last
// answered renewal took: the validity minus idc_member_lease_valid_seconds,
// which is set right after the answer is handled. Memberships that have
// not renewed yet (gauge 0) are left out.
func renewLatencies(g prometheus.Gatherer, valid time.Duration) []time.Duration {
	var out []time.Duration
	for _, m := range metrics(g, "idc_member_lease_valid_seconds") {
		if v := m.GetGauge().GetValue(); v > 0 {
			out = append(out, max(0, valid-time.Duration(v*float64(time.Second))))
		}
	}
	return out
}

// metrics returns the samples of the family name in g.
func metrics(g prometheus.Gatherer, name string) []*dto.Metric {
	fams, _ := g.Gather() // a partial result is still worth reading
	for _, f := range fams {
		if f.GetName() == name {
			return f.GetMetric()
		}
	}
	return nil
}

// counterSum sums the counter name over the samples with the given label
// pairs; -1 if g has no such family.
func counterSum(g prometheus.Gatherer, name string, labels ...string) float64 {
	ms := metrics(g, name)
	if ms == nil {
		return -1
	}
	var sum float64
outer:
	for _, m := range ms {
		for i := 0; i+1 < len(labels); i += 2 {
			if !hasLabel(m, labels[i], labels[i+1]) {
				continue outer
			}
		}
		sum += m.GetCounter().GetValue()
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k {
			return l.GetValue() == v
		}
	}
	return false
}

// gaugeValue is the first sample of gauge name in g (0 if none).
func gaugeValue(g prometheus.Gatherer, name string) float64 {
	if ms := metrics(g, name); len(ms) > 0 {
		return ms[0].GetGauge().GetValue()
	}
	return 0
}

// machineBusy is the CPU time all processes of the machine have used
// since boot (user, nice, system, irq, softirq and steal of /proc/stat,
// at USER_HZ 100), or -1 where it cannot tell.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system (idle iowait) irq softirq steal
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return -1
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// cpuTime is this process's CPU time, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// keepMemberMetric selects the membership metrics the harness reads, so
// that gathering them at 30,000 memberships stays cheap.
func keepMemberMetric(name string) bool {
	for _, p := range []string{"idc_member_lease", "idc_member_renew", "idc_member_fenced"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// keepCoordinatorMetric selects the coordinator metrics the harness reads
// (the per-group ones would make the monitor's gathering at 10,000 groups
// cost what it measures).
func keepCoordinatorMetric(name string) bool {
	switch name {
	case "idc_coordinator_leader", "idc_coordinator_epoch_write_failures_total", "idc_coordinator_relists_total":
		return true
	}
	return false
}

// keepRegisterer registers with reg only the collectors whose metric
// names keep selects; the others are accepted and not registered (they
// work, nobody reads them).
type keepRegisterer struct {
	reg  *prometheus.Registry
	keep func(string) bool
}

var fqName = regexp.MustCompile(`fqName: "([^"]*)"`)

func (k keepRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	want := false
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil || k.keep(m[1]) {
			want = true
		}
	}
	if !want {
		return nil
	}
	return k.reg.Register(c)
}

func (k keepRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := k.Register(c); err != nil {
			panic(err)
		}
	}
}

func (k keepRegisterer) Unregister(c prometheus.Collector) bool { return k.reg.Unregister(c) }

// epochWatch counts the epoch records written in the store (a raw watch
// on every group's keys), and keeps the reasons of those written
// quiescing while recording.
type epochWatch struct {
	mu        sync.Mutex
	quiescing int64
	recording bool
	why       []string
	resync    int
}

func (w *epochWatch) start(ctx context.Context, bg *sync.WaitGroup, cli *clientv3.Client, keys proto.Keys) error {
	open := func() clientv3.WatchChan {
		return cli.Watch(clientv3.WithRequireLeader(ctx), keys.Groups(), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	}
	wch := open()
	select { // established before anything is written
	case <-wch:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	bg.Go(func() {
		for ctx.Err() == nil {
			for wr := range wch {
				if wr.Err() != nil {
					break
				}
				w.events(keys, wr.Events)
			}
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			w.resync++
			w.mu.Unlock()
			sleep(ctx, 100*time.Millisecond)
			wch = open()
		}
	})
	return nil
}

func (w *epochWatch) events(keys proto.Keys, evs []*clientv3.Event) {
	for _, ev := range evs {
		if ev.Type != clientv3.EventTypePut {
			continue
		}
		p, ok := keys.Parse(string(ev.Kv.Key))
		if !ok || p.Kind != proto.KindEpoch {
			continue
		}
		rec, err := proto.DecodeEpoch(ev.Kv.Value)
		if err != nil || rec.State != proto.Quiescing {
			continue
		}
		w.mu.Lock()
		w.quiescing++
		if w.recording && len(w.why) < 20 {
			w.why = append(w.why, fmt.Sprintf("%s epoch %d: %s", p.Group, rec.Number, rec.Reason))
		}
		w.mu.Unlock()
	}
}

// record starts or stops recording reasons and returns the epochs
// written quiescing so far.
func (w *epochWatch) record(on bool) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recording = on
	return w.quiescing
}

func (w *epochWatch) reasons() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.why)
}

func (w *epochWatch) resyncs() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.resync
}

// logCounter counts the warnings and errors of the components' loggers
// by message, keeps a few distinct ones with their error, and passes
// every record on to next.
type logCounter struct {
	next    slog.Handler
	mu      sync.Mutex
	counts  map[string]int
	samples []string
	seen    map[string]bool
	tooMany int
	frozen  atomic.Bool // stop counting
}

func newLogCounter(next slog.Handler) *logCounter {
	return &logCounter{next: next, counts: map[string]int{}, seen: map[string]bool{}}
}

func (c *logCounter) handler(component string) slog.Handler {
	return &countHandler{c: c, component: component, next: c.next}
}

func (c *logCounter) snapshot() (map[string]int, []string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.counts))
	for k, v := range c.counts {
		m[k] = v
	}
	return m, slices.Clone(c.samples), c.tooMany
}

type countHandler struct {
	c         *logCounter
	component string
	next      slog.Handler
}

func (h *countHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *countHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn && !h.c.frozen.Load() {
		var errText string
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" || a.Key == "error" {
				errText = a.Value.String()
				return false
			}
			return true
		})
		key := h.component + ": " + rec.Message
		sample := key
		if errText != "" {
			sample += ": " + errText
		}
		if len(sample) > 300 {
			sample = sample[:300] + "…"
		}
		h.c.mu.Lock()
		h.c.counts[key]++
		if strings.Contains(strings.ToLower(errText), "too many requests") {
			h.c.tooMany++
		}
		if !h.c.seen[sample] && len(h.c.samples) < 10 {
			h.c.seen[sample] = true
			h.c.samples = append(h.c.samples, sample)
		}
		h.c.mu.Unlock()
	}
	if h.next.Enabled(ctx, rec.Level) {
		return h.next.Handle(ctx, rec)
	}
	return nil
}

func (h *countHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &countHandler{c: h.c, component: h.component, next: h.next.WithAttrs(as)}
}

func (h *countHandler) WithGroup(name string) slog.Handler {
	return &countHandler{c: h.c, component: h.component, next: h.next.WithGroup(name)}
}
