// Package coordinator runs idc's group coordinator against etcd: it wins an
// etcd election among the candidates, keeps a view of every group's keys
// from a watch, feeds it to one pure state machine per group
// (core/coordinator) and carries out the writes and revocations those
// machines decide.
//
// Correctness never depends on there being a single coordinator: every
// epoch write is a compare-and-swap (G1). The election only keeps the
// candidates from doing the same work twice; while elected, writes are
// further conditioned on still holding the election key.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Config configures a coordinator candidate. Zero fields take the defaults
// documented on each.
type Config struct {
	// Client is the store client (required).
	Client *clientv3.Client
	// Keys is the key layout (default prefix "/idc").
	Keys proto.Keys
	// Mode is how departed members are handled in every group (default
	// lease). Fence acknowledgements come from resource guards.
	Mode proto.Mode
	// QuiesceTimeout is how long survivors have to acknowledge quiesce
	// before they are dropped in a further epoch (default 10 s).
	QuiesceTimeout time.Duration
	// Rho is the clock-rate drift bound ρ (default 0.01) and LeaseMargin
	// the safety margin (default 500 ms): a departed member counts as
	// stopped TTL·(1+ρ)+LeaseMargin after its lease was seen gone. Use at
	// least the values the members use.
	Rho         float64
	LeaseMargin time.Duration
	// Damping holds back domains that keep departing (core/coordinator
	// Damping: by default 3 departures within 1 min hold a domain's next
	// incarnation back for 15 s).
	Damping core.Damping
	// Name identifies this candidate in the election (default host:pid).
	Name string
	// ElectionTTL is the TTL of the election session, which bounds how long
	// a crashed coordinator holds the election (default 2 s, etcd's minimum
	// at its default timings).
	ElectionTTL time.Duration
	// NoElection runs without an election: every candidate acts at once.
	// Safe (every write is a compare-and-swap) but wasteful; for tests that
	// show exactly that.
	NoElection bool
	// OpTimeout bounds each store operation (default 5 s).
	OpTimeout time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Metrics, if set, registers the coordinator's Prometheus metrics
	// (idc_coordinator_*).
	Metrics prometheus.Registerer
}

// Defaults of Config.
const (
	DefaultQuiesceTimeout = 10 * time.Second
	DefaultRho            = 0.01
	DefaultLeaseMargin    = 500 * time.Millisecond
	DefaultElectionTTL    = 2 * time.Second
	DefaultOpTimeout      = 5 * time.Second
)

// ErrConfig is wrapped by configuration errors.
var ErrConfig = errors.New("idc: invalid coordinator config")

func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = proto.ModeLease
	}
	if c.QuiesceTimeout == 0 {
		c.QuiesceTimeout = DefaultQuiesceTimeout
	}
	if c.Rho == 0 {
		c.Rho = DefaultRho
	}
	if c.LeaseMargin == 0 {
		c.LeaseMargin = DefaultLeaseMargin
	}
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s:%d", h, os.Getpid())
	}
	if c.ElectionTTL == 0 {
		c.ElectionTTL = DefaultElectionTTL
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if c.Client == nil {
		return fmt.Errorf("%w: no store client", ErrConfig)
	}
	if c.ElectionTTL < time.Second || c.ElectionTTL%time.Second != 0 {
		return fmt.Errorf("%w: election TTL %v must be whole seconds, at least 1 s", ErrConfig, c.ElectionTTL)
	}
	return c.machineConfig("g").Validate()
}

func (c Config) machineConfig(group string) core.Config {
	return core.Config{
		Group: group, Mode: c.Mode, QuiesceTimeout: c.QuiesceTimeout,
		Rho: c.Rho, Margin: c.LeaseMargin, Damping: c.Damping,
	}.WithDefaults()
}

// Run campaigns for the coordinator role and, while elected, coordinates
// every group under the key prefix. It returns when ctx ends (with nil) or
// on a configuration error.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger.With("coordinator", cfg.Name)
	start := time.Now()
	met := newMetrics(cfg.Metrics)
	for ctx.Err() == nil {
		var err error
		if cfg.NoElection {
			err = (&leader{cfg: cfg, log: log, start: start, met: met}).run(ctx)
		} else {
			err = campaign(ctx, cfg, log, start, met)
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("coordinator restarting", "err", err)
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
			}
		}
	}
	return nil
}

// campaign waits to be elected, then leads until the election session ends.
func campaign(ctx context.Context, cfg Config, log *slog.Logger, start time.Time, met *metrics) error {
	sess, err := concurrency.NewSession(cfg.Client, concurrency.WithTTL(int(cfg.ElectionTTL/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, cfg.Keys.Election())
	if err := el.Campaign(ctx, cfg.Name); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	log.Info("elected coordinator", "key", el.Key(), "rev", el.Rev())
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			log.Warn("election session lost; stepping down")
			cancel()
		case <-lctx.Done():
		}
	}()
	l := &leader{cfg: cfg, log: log, start: start, met: met,
		guard: []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())}}
	err = l.run(lctx)
	if ctx.Err() == nil {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = el.Resign(rctx)
		rcancel()
	}
	return err
}

// leader coordinates every group while elected.
type leader struct {
	cfg    Config
	log    *slog.Logger
	start  time.Time
	guard  []clientv3.Cmp // extra compares on every write: still elected
	groups map[string]*group
	met    *metrics
}

type group struct {
	view core.View
	m    *core.Machine
	// quiescing is the last epoch this coordinator wrote quiescing, and
	// quiescedAt when (for the epoch change metric).
	quiescing  uint64
	quiescedAt time.Time
}

func (l *leader) now() time.Duration { return time.Since(l.start) }

// errRelist asks run to list everything afresh (the watch was compacted).
var errRelist = errors.New("watch lost its place; relisting")

func (l *leader) run(ctx context.Context) error {
	l.met.leader.Set(1)
	defer l.met.leader.Set(0)
	for {
		err := l.listAndWatch(ctx)
		if !errors.Is(err, errRelist) {
			return err
		}
		l.log.Info("relisting", "reason", err)
	}
}

func (l *leader) listAndWatch(ctx context.Context) error {
	keys := l.cfg.Keys
	gctx, cancel := context.WithTimeout(ctx, l.cfg.OpTimeout)
	resp, err := l.cfg.Client.Get(gctx, keys.Groups(), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("list groups: %w", err)
	}
	l.groups = map[string]*group{}
	touched := map[string]bool{}
	for _, kv := range resp.Kvs {
		if g := l.apply(kv, false); g != "" {
			touched[g] = true
		}
	}
	for g := range touched {
		l.update(ctx, g)
	}
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	wch := l.cfg.Client.Watch(wctx, keys.Groups(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		l.arm(timer)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-wch:
			if !ok {
				return errRelist
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("%w: %v", errRelist, err)
			}
			touched := map[string]bool{}
			for _, ev := range wr.Events {
				if g := l.apply(ev.Kv, ev.Type == clientv3.EventTypeDelete); g != "" {
					touched[g] = true
				}
			}
			for g := range touched {
				l.update(ctx, g)
			}
		case <-timer.C:
			now := l.now()
			for name, g := range l.groups {
				if d, ok := g.m.NextDeadline(); ok && d <= now {
					g.m.Tick(now)
					l.exec(ctx, name, g)
				}
			}
		}
	}
}

// arm sets timer to the earliest deadline of any group.
func (l *leader) arm(timer *time.Timer) {
	next := time.Hour
	now := l.now()
	for _, g := range l.groups {
		if d, ok := g.m.NextDeadline(); ok {
			next = min(next, max(d-now, 0))
		}
	}
	timer.Reset(next)
}

// apply folds a key change into its group's view and returns the group.
func (l *leader) apply(kv *mvccpb.KeyValue, del bool) string {
	p, ok := l.cfg.Keys.Parse(string(kv.Key))
	if !ok {
		return ""
	}
	g := l.groups[p.Group]
	if g == nil {
		if proto.CheckName("group", p.Group) != nil {
			return ""
		}
		g = &group{view: core.NewView(p.Group), m: core.New(l.cfg.machineConfig(p.Group))}
		l.groups[p.Group] = g
	}
	g.view.Apply(p, kv.Value, kv.ModRevision, del)
	return p.Group
}

func (l *leader) update(ctx context.Context, name string) {
	g := l.groups[name]
	g.m.Update(g.view, l.now())
	l.exec(ctx, name, g)
}

// exec carries out the machine's actions until it has none left.
func (l *leader) exec(ctx context.Context, name string, g *group) {
	for acts := g.m.Ready(); len(acts) > 0; acts = g.m.Ready() {
		for _, a := range acts {
			switch a := a.(type) {
			case core.WriteEpoch:
				if err := l.write(ctx, name, a); err != nil {
					l.log.Debug("epoch write not applied", "group", name, "epoch", a.Record.Number, "err", err)
					l.met.conflicts.WithLabelValues(name).Inc()
					g.m.WriteFailed(l.now())
					continue
				}
				var quiescedAt time.Time
				switch {
				case a.Record.State == proto.Quiescing:
					g.quiescing, g.quiescedAt = a.Record.Number, time.Now()
				case g.quiescing == a.Record.Number:
					quiescedAt = g.quiescedAt
				}
				l.met.written(a.Record, quiescedAt)
			case core.Revoke:
				l.revoke(ctx, g, a.Member)
			}
		}
	}
}

// errConflict means a compare failed: another writer moved first.
var errConflict = errors.New("compare failed")

func (l *leader) write(ctx context.Context, name string, a core.WriteEpoch) error {
	keys := l.cfg.Keys
	val := proto.EncodeEpoch(a.Record)
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(keys.Epoch(name)), "=", a.ExpectRevision)}, l.guard...)
	ops := []clientv3.Op{clientv3.OpPut(keys.Epoch(name), string(val))}
	if c := a.Cleanup; c != nil {
		for _, pfx := range []string{keys.Acks(name), keys.Faults(name), keys.FenceAcks(name)} {
			ops = append(ops, clientv3.OpDelete(pfx, clientv3.WithRange(pfx+proto.EpochKey(c.Before))))
		}
		for _, id := range c.Left {
			ops = append(ops, clientv3.OpDelete(keys.Left(name, id)))
		}
	}
	wctx, cancel := context.WithTimeout(ctx, l.cfg.OpTimeout)
	defer cancel()
	resp, err := l.cfg.Client.Txn(wctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errConflict
	}
	l.log.Info("epoch", "group", name, "number", a.Record.Number, "state", a.Record.State,
		"members", proto.IDs(a.Record.Members), "reason", a.Record.Reason)
	return nil
}

func (l *leader) revoke(ctx context.Context, g *group, m proto.Member) {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.OpTimeout)
	defer cancel()
	_, err := l.cfg.Client.Revoke(rctx, clientv3.LeaseID(m.Lease))
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		l.log.Warn("revoke failed; will retry", "member", m.ID, "lease", m.Lease, "err", err)
		g.m.RevokeFailed(m.Ref(), l.now())
		return
	}
	l.log.Info("revoked departed member's lease", "group", g.view.Group, "member", m.ID, "incarnation", m.Incarnation)
	l.met.revokes.WithLabelValues(g.view.Group).Inc()
	g.m.Revoked(m.Ref(), l.now())
}
