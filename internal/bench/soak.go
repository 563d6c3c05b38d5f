package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SoakOptions configure Soak.
type SoakOptions struct {
	// Duration is how long the group churns (required).
	Duration time.Duration
	// Members is the number of domains (default 20). Each has its own
	// store client, as separate processes would, kept across its
	// incarnations.
	Members int
	// Every is the time between two lines of figures (default 1 min).
	Every time.Duration
	// Churn is the mean time between two churn actions (default 1 s;
	// each waits a uniformly random 0.5–1.5 × Churn).
	Churn time.Duration
	// CompactionRetention is the embedded store's (0: its default,
	// store.DefaultCompactionRetention).
	CompactionRetention time.Duration
	// Maintain is the store's defragmentation policy; Client, Endpoint,
	// Logger and Report are set by Soak (nil: store.DefaultMaintainConfig()).
	Maintain *store.MaintainConfig
	// Seed draws the churn (0: a random seed, printed).
	Seed uint64
	// DataDir for the embedded store (default: a temporary directory,
	// removed at the end).
	DataDir string
	// Out receives the lines and the summary (may be nil).
	Out io.Writer
	// Logger receives the components' logs (default: discarded).
	Logger *slog.Logger
}

// SoakSample is one line of figures.
type SoakSample struct {
	Elapsed time.Duration `json:"elapsed_ns"`
	// Epoch is the group's epoch number, State its state; InEpoch counts
	// the domains in it and Live those registered.
	Epoch   uint64      `json:"epoch"`
	State   proto.State `json:"state"`
	InEpoch int         `json:"in_epoch"`
	Live    int         `json:"live"`
	store.DBStatus
	// Keys counts the keys in the store (idc's records, the coordinator
	// election's): what compaction keeps.
	Keys int64 `json:"keys"`
	// Compacted is the revision the store compacted its history to (0:
	// not yet).
	Compacted int64 `json:"compacted"`
	// Goroutines and RSS are this process's, where the store, the
	// coordinator and every member run.
	Goroutines int   `json:"goroutines"`
	RSS        int64 `json:"rss"`
}

// SoakCounts counts what the churn did.
type SoakCounts struct {
	Leaves, Crashes, Faults int64
	// FaultsLate: fault reports that reached the store after a later
	// epoch connected (ErrEpochEnded), not counted by the coordinator.
	FaultsLate int64
	// ActionErrors: leaves and fault reports that failed otherwise.
	ActionErrors int64
	// Idle: churn turns that found no member of a connected epoch to act
	// on (the group was quiescing), so the churn adapts to what the group
	// absorbs.
	Idle int64
	// Joins succeeded; JoinsRefused failed (ErrAlreadyLive while the
	// previous incarnation's record is still live, or another error) and
	// were retried.
	Joins, JoinsRefused int64
	// Evicted: incarnations the coordinator dropped (after a fault report
	// or a quiesce deadline); LeaseExpired: incarnations that fenced
	// themselves because their lease may have lapsed (a stalled store).
	Evicted, LeaseExpired int64
}

// SoakResult holds a run's figures.
type SoakResult struct {
	Seed    uint64       `json:"seed"`
	Samples []SoakSample `json:"samples"`
	Counts  SoakCounts   `json:"counts"`
	// Defrags are the store maintenance's defragmentations.
	Defrags []store.Maintenance `json:"defrags"`
}

// soakGroup is the group the soak's domains join.
const soakGroup = "soak"

// member is what the soak needs of a membership (idc.Join's result).
type member interface {
	ID() string
	Done() <-chan struct{}
	Err() error
	Current() *idc.Epoch
	ReportFault(ctx context.Context, peer string) error
	Leave(ctx context.Context) error
	Close() error
}

type soak struct {
	o   SoakOptions
	log *slog.Logger
	e   *store.Embedded
	cli *clientv3.Client // coordinator, status, maintenance

	mu      sync.Mutex
	start   time.Time // when the churn started; written once, under mu
	slots   []member  // nil: not joined, or taken by a churn action
	res     SoakResult
	outMu   sync.Mutex
	counts  soakCounters
	actions sync.WaitGroup
	// shutdown stops the members, the churn, the coordinator and the
	// maintenance, and waits for them.
	shutdown func()
}

type soakCounters struct {
	leaves, crashes, faults, faultsLate, actionErrors, idle, joins, joinsRefused, evicted, leaseExpired atomic.Int64
}

func (c *soakCounters) snapshot() SoakCounts {
	return SoakCounts{
		Leaves: c.leaves.Load(), Crashes: c.crashes.Load(), Faults: c.faults.Load(),
		FaultsLate: c.faultsLate.Load(), ActionErrors: c.actionErrors.Load(), Idle: c.idle.Load(),
		Joins: c.joins.Load(), JoinsRefused: c.joinsRefused.Load(),
		Evicted: c.evicted.Load(), LeaseExpired: c.leaseExpired.Load(),
	}
}

func (s *soak) printf(format string, args ...any) {
	if s.o.Out == nil {
		return
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	fmt.Fprintf(s.o.Out, format, args...)
}

// Soak runs an embedded store (with its auto-compaction and the
// defragmentation policy of `idc store`), a coordinator and o.Members
// domains in one group, and churns the group for o.Duration: domains
// leave gracefully, crash (Close) or report a fault against a peer (the
// coordinator drops one of the two, which fences itself); each rejoins
// with a new incarnation after a short pause. Every o.Every it prints the
// group's epoch, the store's database size, size in use, revision and
// compacted revision, and this process's goroutines and RSS; at the end a
// summary. If ctx ends first it stops, prints the summary so far and
// returns ctx's error with the result.
func Soak(ctx context.Context, o SoakOptions) (SoakResult, error) {
	if o.Duration <= 0 {
		return SoakResult{}, fmt.Errorf("bench: soak duration %v must be positive", o.Duration)
	}
	if o.Members == 0 {
		o.Members = 20
	}
	if o.Members < 2 {
		return SoakResult{}, fmt.Errorf("bench: soak needs at least 2 members, got %d", o.Members)
	}
	if o.Every == 0 {
		o.Every = time.Minute
	}
	if o.Churn == 0 {
		o.Churn = time.Second
	}
	if o.Every < 0 || o.Churn < 0 {
		return SoakResult{}, fmt.Errorf("bench: soak intervals must be positive (every %v, churn %v)", o.Every, o.Churn)
	}
	if o.Seed == 0 {
		o.Seed = rand.Uint64()
	}
	s := &soak{o: o, log: o.Logger, slots: make([]member, o.Members)}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s.res.Seed = o.Seed
	mcfg := store.DefaultMaintainConfig()
	if o.Maintain != nil {
		mcfg = *o.Maintain
	}

	dir := o.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "idc-soak-")
		if err != nil {
			return s.res, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0",
		CompactionRetention: o.CompactionRetention, Logger: s.log,
	})
	if err != nil {
		return s.res, err
	}
	defer e.Close()
	s.e = e
	dial := func() (*clientv3.Client, error) {
		return store.Dial(ctx, store.DialConfig{Endpoints: e.Endpoints, Logger: s.log})
	}
	if s.cli, err = dial(); err != nil {
		return s.res, err
	}
	defer s.cli.Close()

	// Everything below stops when run ends: on error, ctx's end or the
	// end of the soak; shutdown stops it and waits for it.
	run, stop := context.WithCancelCause(ctx)
	var bg, members sync.WaitGroup
	s.shutdown = func() {
		stop(nil)
		members.Wait() // each closes its membership
		bg.Wait()      // the churn, the coordinator, the maintenance
		s.actions.Wait()
	}
	defer s.shutdown()

	mcfg.Client, mcfg.Endpoint, mcfg.Logger = s.cli, e.Endpoints[0], s.log
	mcfg.Report = func(m store.Maintenance, err error) {
		if err != nil {
			s.printf("# %v store maintenance failed: %v\n", s.elapsed(), err)
			return
		}
		if m.Defragmented {
			s.mu.Lock()
			s.res.Defrags = append(s.res.Defrags, m)
			s.mu.Unlock()
			s.printf("# %v defragmented the store: %s → %s (%s in use), blocked %v\n", s.elapsed(),
				mib(m.Before.Size), mib(m.After.Size), mib(m.After.InUse), m.Took.Round(time.Millisecond))
		}
		if m.TooBig {
			s.printf("# %v store fragmented but too much in use to defragment briefly: %s of %s\n", s.elapsed(), mib(m.Before.InUse), mib(m.Before.Size))
		}
	}
	if err := mcfg.Validate(); err != nil {
		return s.res, err
	}
	bg.Go(func() { _ = store.Maintain(run, mcfg) })

	coordinate(run, stop, &bg, e, s.cli, s.log)

	s.printf("soak: %d members in group %q for %v, a churn action every %v on average, figures every %v, seed %d\n",
		o.Members, soakGroup, o.Duration, o.Churn, o.Every, o.Seed)
	s.printf("store: embedded etcd at %s, compaction retention %v; defragmentation checked every %v (in use below %.0f%%, file at least %s)\n",
		e.Endpoints[0], orDefault(o.CompactionRetention, store.DefaultCompactionRetention), mcfg.Interval, mcfg.InUseBelow*100, mib(mcfg.MinSize))

	// The members: one goroutine per domain, each joining again after its
	// incarnation stops.
	for i := range o.Members {
		cli, err := dial()
		if err != nil {
			return s.res, err
		}
		members.Go(func() {
			defer cli.Close()
			s.runSlot(run, i, cli, rand.New(rand.NewPCG(o.Seed, uint64(i)+1)))
		})
	}
	if err := s.waitAll(run); err != nil {
		return s.finish(ctx, err)
	}

	s.mu.Lock()
	s.start = time.Now()
	s.mu.Unlock()
	s.printf("%8s  %6s  %-10s  %7s  %4s  %7s  %7s  %5s  %8s  %9s  %10s  %7s\n",
		"elapsed", "epoch", "state", "members", "live", "db KiB", "in use", "keys", "revision", "compacted", "goroutines", "rss MiB")
	s.sample(run)
	bg.Go(func() { s.churn(run, rand.New(rand.NewPCG(o.Seed, 0))) })
	end := time.NewTimer(o.Duration)
	defer end.Stop()
	tick := time.NewTicker(o.Every)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-run.Done():
			done = true
		case <-end.C:
			done = true
		case <-tick.C:
			s.sample(run)
		}
	}
	var cause error
	if run.Err() != nil {
		cause = context.Cause(run)
	}
	return s.finish(ctx, cause)
}

// finish prints the last line, stops everything and prints the summary.
func (s *soak) finish(ctx context.Context, err error) (SoakResult, error) {
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	if !s.start.IsZero() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		// The last line, unless a tick just printed it.
		if last := s.last(); last == nil || time.Since(s.start)-last.Elapsed > 100*time.Millisecond {
			s.sample(sctx)
		}
		cancel()
	}
	s.shutdown()
	s.mu.Lock()
	s.res.Counts = s.counts.snapshot()
	res := s.res
	s.mu.Unlock()
	s.summary(res, err)
	return res, err
}

// elapsed is the time since the churn started, for the maintenance's
// lines (another goroutine).
func (s *soak) elapsed() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.start.IsZero() {
		return 0
	}
	return time.Since(s.start).Round(time.Second)
}

func (s *soak) last() *SoakSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.res.Samples) == 0 {
		return nil
	}
	return &s.res.Samples[len(s.res.Samples)-1]
}

// runSlot keeps domain i in the group until ctx ends: it joins, waits
// until the incarnation stops (left, crashed or fenced), pauses and joins
// again with a new incarnation.
func (s *soak) runSlot(ctx context.Context, i int, cli *clientv3.Client, rng *rand.Rand) {
	id := fmt.Sprintf("m%02d", i)
	for ctx.Err() == nil {
		cfg := idc.DefaultConfig()
		cfg.Group, cfg.ID, cfg.Client, cfg.Logger = soakGroup, id, cli, s.log
		cfg.Listen = "" // the store under churn, as measured before channels existed
		m, err := idc.Join(ctx, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.counts.joinsRefused.Add(1)
			s.log.Debug("soak: join refused", "domain", id, "err", err)
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		s.counts.joins.Add(1)
		s.setSlot(i, m)
		select {
		case <-m.Done():
		case <-ctx.Done():
		}
		s.takeSlot(i, m)
		err = m.Err()
		_ = m.Close()
		switch {
		case errors.Is(err, idc.ErrEvicted):
			s.counts.evicted.Add(1)
		case errors.Is(err, idc.ErrLeaseExpired):
			s.counts.leaseExpired.Add(1)
			s.log.Warn("soak: a member's lease may have lapsed", "domain", id)
		}
		sleep(ctx, time.Duration(200+rng.IntN(1800))*time.Millisecond)
	}
}

func (s *soak) setSlot(i int, m member) {
	s.mu.Lock()
	s.slots[i] = m
	s.mu.Unlock()
}

// takeSlot empties slot i if it still holds m.
func (s *soak) takeSlot(i int, m member) {
	s.mu.Lock()
	if s.slots[i] == m {
		s.slots[i] = nil
	}
	s.mu.Unlock()
}

// pick takes a random connected member out of its slot i (so no other
// action picks it), or returns nil if none is connected.
func (s *soak) pick(rng *rand.Rand) (int, member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ok []int
	for i, m := range s.slots {
		if m != nil && m.Current() != nil {
			ok = append(ok, i)
		}
	}
	if len(ok) == 0 {
		return 0, nil
	}
	i := ok[rng.IntN(len(ok))]
	m := s.slots[i]
	s.slots[i] = nil
	return i, m
}

// putBack returns m to its slot i, unless it stopped (its domain then
// joins again).
func (s *soak) putBack(i int, m member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots[i] == nil && m.Err() == nil {
		s.slots[i] = m
	}
}

// churn takes a random action every 0.5–1.5 × Churn until ctx ends.
func (s *soak) churn(ctx context.Context, rng *rand.Rand) {
	for {
		d := time.Duration((0.5 + rng.Float64()) * float64(s.o.Churn))
		if !sleep(ctx, d) {
			return
		}
		kind := rng.IntN(3)
		i, m := s.pick(rng)
		if m == nil {
			s.counts.idle.Add(1)
			continue
		}
		var peer string
		if kind == 2 {
			var peers []idc.Member
			if ep := m.Current(); ep != nil {
				peers = ep.Peers()
			}
			if len(peers) == 0 {
				s.putBack(i, m)
				continue
			}
			peer = peers[rng.IntN(len(peers))].ID
		}
		s.actions.Go(func() {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			switch kind {
			case 0:
				s.counts.leaves.Add(1)
				if err := m.Leave(actx); err != nil && ctx.Err() == nil {
					s.counts.actionErrors.Add(1)
					s.log.Warn("soak: leave failed", "domain", m.ID(), "err", err)
				}
			case 1:
				s.counts.crashes.Add(1)
				_ = m.Close()
			case 2:
				s.counts.faults.Add(1)
				err := m.ReportFault(actx, peer)
				switch {
				case errors.Is(err, idc.ErrEpochEnded):
					s.counts.faultsLate.Add(1)
				case err != nil && ctx.Err() == nil:
					s.counts.actionErrors.Add(1)
					s.log.Warn("soak: fault report failed", "domain", m.ID(), "peer", peer, "err", err)
				}
				// The reporter stays a candidate for later actions.
				s.putBack(i, m)
			}
		})
	}
}

// waitAll waits until every domain is in the group's connected epoch.
func (s *soak) waitAll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		g, err := s.group(ctx)
		if err == nil && g.State == proto.Connected && g.Epoch > 0 && inEpoch(g) == s.o.Members {
			return nil
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return fmt.Errorf("bench: soak: %d members not connected: %w", s.o.Members, context.Cause(ctx))
		}
	}
}

func (s *soak) group(ctx context.Context) (inspect.Group, error) {
	gs, err := inspect.Status(ctx, s.cli, proto.Keys{}, soakGroup)
	if err != nil {
		return inspect.Group{}, err
	}
	return gs[0], nil
}

func inEpoch(g inspect.Group) int {
	n := 0
	for _, d := range g.Domains {
		switch d.Role {
		case inspect.RoleMember, inspect.RoleSurvivor, inspect.RoleJoiner:
			n++
		}
	}
	return n
}

// sample takes and prints one line of figures.
func (s *soak) sample(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	x := SoakSample{Elapsed: time.Since(s.start), Compacted: s.e.CompactRevision(), Goroutines: runtime.NumGoroutine(), RSS: rss()}
	st, err := store.ReadDBStatus(ctx, s.cli, s.e.Endpoints[0])
	if err != nil {
		s.printf("# %v store status: %v\n", s.elapsed(), err)
		return
	}
	x.DBStatus = st
	if r, err := s.cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly()); err == nil {
		x.Keys = r.Count
	}
	if g, err := s.group(ctx); err == nil {
		x.Epoch, x.State, x.InEpoch = g.Epoch, g.State, inEpoch(g)
		for _, d := range g.Domains {
			if d.Live {
				x.Live++
			}
		}
	}
	s.mu.Lock()
	s.res.Samples = append(s.res.Samples, x)
	s.mu.Unlock()
	s.printf("%8v  %6d  %-10s  %4d/%-2d  %4d  %7d  %7d  %5d  %8d  %9d  %10d  %7.1f\n",
		x.Elapsed.Round(time.Second), x.Epoch, x.State, x.InEpoch, s.o.Members, x.Live,
		x.Size>>10, x.InUse>>10, x.Keys, x.Revision, x.Compacted, x.Goroutines, float64(x.RSS)/(1<<20))
}

// summary prints what the run did and how the store's size moved.
func (s *soak) summary(r SoakResult, err error) {
	c := r.Counts
	s.printf("\nsummary")
	if err != nil {
		s.printf(" (stopped early: %v)", err)
	}
	s.printf(":\n")
	if len(r.Samples) == 0 {
		return
	}
	first, last := r.Samples[0], r.Samples[len(r.Samples)-1]
	mins := last.Elapsed.Minutes()
	s.printf("  %v, %d members, seed %d\n", last.Elapsed.Round(time.Second), s.o.Members, r.Seed)
	s.printf("  churn: %d leaves, %d crashes, %d fault reports (%d too late to count), %d turns idle (no connected member); %d joins (%d refused and retried); %d evicted, %d fenced by their lease; %d actions failed\n",
		c.Leaves, c.Crashes, c.Faults, c.FaultsLate, c.Idle, c.Joins, c.JoinsRefused, c.Evicted, c.LeaseExpired, c.ActionErrors)
	if mins > 0 {
		s.printf("  epochs: %d → %d (%.1f a minute); revisions: %d → %d (%.0f a minute)\n",
			first.Epoch, last.Epoch, float64(last.Epoch-first.Epoch)/mins, first.Revision, last.Revision, float64(last.Revision-first.Revision)/mins)
	}
	var maxSize, maxRSS int64
	for _, x := range r.Samples {
		maxSize, maxRSS = max(maxSize, x.Size), max(maxRSS, x.RSS)
	}
	s.printf("  db size: %s at the start, %s at the end, %s at most\n", mib(first.Size), mib(last.Size), mib(maxSize))
	if i := firstCompacted(r.Samples); i >= 0 {
		lo, hi := r.Samples[i].Size, r.Samples[i].Size
		for _, x := range r.Samples[i:] {
			lo, hi = min(lo, x.Size), max(hi, x.Size)
		}
		s.printf("  after the first compaction of the run's history (seen at %v): db size between %s and %s, %+d KiB from then to the end\n",
			r.Samples[i].Elapsed.Round(time.Second), mib(lo), mib(hi), (last.Size-r.Samples[i].Size)>>10)
	} else {
		s.printf("  no compaction of the run's history seen\n")
	}
	s.printf("  defragmentations: %d\n", len(r.Defrags))
	s.printf("  goroutines: %d at the start, %d at the end; rss: %s at the start, %s at the end, %s at most\n",
		first.Goroutines, last.Goroutines, mib(first.RSS), mib(last.RSS), mib(maxRSS))
}

// firstCompacted returns the index of the first sample that saw a
// compaction reach into the run's history (past the revision of the first
// sample: the store's first compaction reaches back only to its own
// start), or -1.
func firstCompacted(xs []SoakSample) int {
	for i, x := range xs {
		if len(xs) > 0 && x.Compacted > xs[0].Revision {
			return i
		}
	}
	return -1
}

// rss returns this process's resident set size in bytes, or 0 where
// /proc/self/status cannot tell.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) == 3 && string(f[0]) == "VmRSS:" && string(f[2]) == "kB" {
			kb, err := strconv.ParseInt(string(f[1]), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// mib formats a size in bytes for people.
func mib(b int64) string {
	if b < 10<<20 {
		return fmt.Sprintf("%d KiB", b>>10)
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
