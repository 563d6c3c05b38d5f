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
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/idc-dev/idc/clock"
	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Config configures a coordinator candidate. Start from DefaultConfig and
// set Client: Run takes every field as given, so an explicit zero is never
// mistaken for "unset".
type Config struct {
	// Client is the store client (required).
	Client *clientv3.Client
	// ElectionClient is the client the election runs on: the candidate's
	// lease, its renewals and its key (nil: Run dials one of its own to
	// Client's endpoints with store.Dial, and closes it when it returns;
	// pass one if Client needs dial options store.Dial does not set). A
	// connection of its own keeps the renewals of the election from
	// queueing behind the leader's requests and watch, which grow with the
	// number of groups.
	ElectionClient *clientv3.Client
	// Keys is the key layout (DefaultConfig: prefix "/idc").
	Keys proto.Keys
	// Mode is how departed members are handled in every group
	// (DefaultConfig: lease). Fence acknowledgements come from resource
	// guards; a fence-mode group with no resource waits leases out.
	Mode proto.Mode
	// QuiesceTimeout is how long survivors have to acknowledge quiesce
	// before they are dropped in a further epoch (DefaultConfig: 10 s).
	QuiesceTimeout time.Duration
	// Rho is the clock-rate drift bound ρ (DefaultConfig: 0.01) and
	// LeaseMargin the safety margin (DefaultConfig: 500 ms): a departed
	// member counts as stopped TTL·(1+ρ)+LeaseMargin after its lease was
	// seen gone. Use at least the values the members use.
	Rho         float64
	LeaseMargin time.Duration
	// Damping holds back domains that keep departing (DefaultConfig: 3
	// departures within 1 min hold a domain's next incarnation back for
	// 15 s; Drops 0 or less: no damping).
	Damping core.Damping
	// Name identifies this candidate in the election ("": host:pid).
	Name string
	// ElectionTTL is the TTL of the election session, which bounds how long
	// a crashed coordinator holds the election (DefaultConfig: 5 s; etcd's
	// minimum at its default timings is 2 s). A store that grants a longer
	// one is refused. The candidate renews every ElectionTTL/10 and gives
	// each renewal until its term would end (CandidateConfig.Rho), so it
	// holds the election through a store stall or latency of up to
	// ElectionTTL·(0.8−ρ): 3.95 s at the default, longer than members at
	// idc's defaults hold their leases through (a 5 s lease, valid 4.7 s
	// from a renewal's send, renewed a second after the last answer: a
	// stall of 3.7 s, a steady latency of 1.85 s). Under load the election
	// is so not the first thing to break, and losing it would be costly:
	// the successor lists and updates every group. The price is failover:
	// a crashed coordinator's successor takes over up to 5 s later, as long
	// as a crashed member takes to be noticed at idc's defaults. With 2 s,
	// a stall of 1.58 s would end the term (1.1 s when renewals were each
	// given TTL/3), and the election was lost under load at 4000 groups.
	ElectionTTL time.Duration
	// NoElection runs without an election: every candidate acts at once.
	// Safe (every write is a compare-and-swap) but wasteful; for tests that
	// show exactly that.
	NoElection bool
	// OpTimeout bounds each store operation (DefaultConfig: 5 s).
	OpTimeout time.Duration
	// WatchCheck is the watchdog interval of the coordinator's watch
	// (DefaultConfig: 2 s): a watch that delivers nothing, not even a
	// requested progress notification, is replaced within 2·WatchCheck.
	WatchCheck time.Duration
	// MaxTxnOps is the most operations one cleanup transaction carries
	// (DefaultConfig: 128, etcd's --max-txn-ops).
	MaxTxnOps int
	// Logger receives the coordinator's logs (nil: slog.Default()).
	Logger *slog.Logger
	// Metrics, if set, registers the coordinator's Prometheus metrics
	// (idc_coordinator_*).
	Metrics prometheus.Registerer
}

// Defaults of DefaultConfig.
const (
	DefaultQuiesceTimeout = 10 * time.Second
	DefaultRho            = 0.01
	DefaultLeaseMargin    = 500 * time.Millisecond
	DefaultElectionTTL    = 5 * time.Second
	DefaultOpTimeout      = 5 * time.Second
	DefaultWatchCheck     = 2 * time.Second
	DefaultMaxTxnOps      = 128
)

// ErrConfig is wrapped by configuration errors (proto.ErrConfig).
var ErrConfig = proto.ErrConfig

// DefaultConfig returns a Config with every default set; set Client.
func DefaultConfig() Config {
	return Config{
		Keys: proto.Keys{Prefix: proto.DefaultPrefix}, Mode: proto.ModeLease,
		QuiesceTimeout: DefaultQuiesceTimeout, Rho: DefaultRho, LeaseMargin: DefaultLeaseMargin,
		Damping:     core.Damping{Drops: core.DefaultFlapDrops, Window: core.DefaultFlapWindow, Hold: core.DefaultFlapHold},
		ElectionTTL: DefaultElectionTTL, OpTimeout: DefaultOpTimeout, WatchCheck: DefaultWatchCheck,
		MaxTxnOps: DefaultMaxTxnOps,
	}
}

// Validate checks the settings of c as they are (nothing is defaulted);
// errors wrap ErrConfig and say what to change. Run also needs a Client.
func (c Config) Validate() error {
	switch {
	case c.ElectionTTL < time.Second || c.ElectionTTL%time.Second != 0:
		return fmt.Errorf("%w: election TTL %v must be whole seconds, at least 1 s", ErrConfig, c.ElectionTTL)
	case c.OpTimeout <= 0:
		return fmt.Errorf("%w: op timeout %v must be positive", ErrConfig, c.OpTimeout)
	case c.WatchCheck <= 0:
		return fmt.Errorf("%w: watch check %v must be positive", ErrConfig, c.WatchCheck)
	case c.MaxTxnOps < 4:
		return fmt.Errorf("%w: max txn ops %d must be at least 4", ErrConfig, c.MaxTxnOps)
	case c.Damping.Drops > 0 && (c.Damping.Window <= 0 || c.Damping.Hold <= 0):
		return fmt.Errorf("%w: flap window %v and hold %v must be positive when damping (%d drops)", ErrConfig, c.Damping.Window, c.Damping.Hold, c.Damping.Drops)
	}
	return c.machineConfig("g").Validate()
}

func (c Config) machineConfig(group string) core.Config {
	d := c.Damping
	if d.Drops <= 0 {
		d = core.Damping{Drops: -1, Window: time.Minute, Hold: time.Minute} // off
	}
	return core.Config{
		Group: group, Mode: c.Mode, QuiesceTimeout: c.QuiesceTimeout,
		Rho: c.Rho, Margin: c.LeaseMargin, Damping: d, Policy: core.DropSuspect{},
	}
}

// Run campaigns for the coordinator role (a Candidate) and, while elected,
// coordinates every group under the key prefix (a Leader), on the etcd
// client. It returns when ctx ends (with nil) or on a configuration error
// (wrapping ErrConfig), including a store that grants the election a
// longer lease than ElectionTTL.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Client == nil {
		return fmt.Errorf("%w: no store client", ErrConfig)
	}
	if cfg.Name == "" {
		h, _ := os.Hostname()
		cfg.Name = fmt.Sprintf("%s:%d", h, os.Getpid())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	st := store.NewEtcd(cfg.Client)
	defer st.Close()
	var est store.Store = st
	if !cfg.NoElection {
		ecli := cfg.ElectionClient
		if ecli == nil {
			var err error
			ecli, err = store.Dial(ctx, store.DialConfig{Endpoints: cfg.Client.Endpoints(), Logger: cfg.Logger})
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("coordinator: election client: %w", err)
			}
			defer ecli.Close()
		}
		e := store.NewEtcd(ecli)
		defer e.Close()
		est = e
	}
	lc := LeaderConfig{
		Store: st, Clock: clock.System(), Keys: cfg.Keys, Machine: cfg.machineConfig(""),
		OpTimeout: cfg.OpTimeout, WatchCheck: cfg.WatchCheck, MaxTxnOps: cfg.MaxTxnOps,
		Logger: cfg.Logger.With("coordinator", cfg.Name), Metrics: newMetrics(cfg.Metrics),
	}
	if cfg.NoElection {
		l := StartLeader(lc)
		<-ctx.Done()
		l.Stop()
		return nil
	}
	c := StartCandidate(CandidateConfig{Leader: lc, Store: est, Name: cfg.Name, TTL: cfg.ElectionTTL, Rho: cfg.Rho})
	select {
	case <-ctx.Done():
		c.Stop()
		// Give the election lease back before the clients close, so that
		// a standby need not wait it out.
		t := time.NewTimer(cfg.OpTimeout)
		defer t.Stop()
		select {
		case <-c.released:
		case <-t.C:
		}
		return nil
	case <-c.Done():
		return c.Err()
	}
}
