package idc

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Config configures one domain's membership in one group. Zero fields take
// the defaults documented on each; Join validates the result.
type Config struct {
	// Group is the group to join (required): letters, digits, '.', '_', '-'.
	Group string
	// ID is the domain's stable ID (required), same alphabet as Group.
	ID string
	// Incarnation identifies this start of the domain (default: random).
	// Two live memberships never share (ID, Incarnation); after a fence,
	// rejoin with a new one.
	Incarnation uint64
	// Endpoints are the store's client URLs (default
	// ["http://127.0.0.1:2379"]), used when Client is nil.
	Endpoints []string
	// Client is an existing store client to share, e.g. between the groups
	// of one domain. Join does not close it.
	Client *clientv3.Client
	// Prefix is the store key prefix (default "/idc").
	Prefix string
	// LeaseTTL is the membership lease's time to live (default 5 s). It
	// must be whole seconds and at least MinLeaseTTL: etcd silently raises
	// shorter TTLs to its minimum (2 s at its default timings), which would
	// make the member's own deadline wrong.
	LeaseTTL time.Duration
	// Rho bounds clock-rate drift between domains (default 0.01): the
	// member counts its lease valid for LeaseTTL·(1−ρ) − LeaseMargin after
	// sending the renewal the store answered.
	Rho float64
	// LeaseMargin is the member's extra safety allowance (default 250 ms).
	LeaseMargin time.Duration
	// RenewInterval is how often the lease is renewed (default LeaseTTL/5).
	// Failed renewals are retried at a fifth of it.
	RenewInterval time.Duration
	// Priority breaks ties when two members report each other: the higher
	// stays (default 0).
	Priority int
	// OpTimeout bounds each store operation (default 5 s).
	OpTimeout time.Duration
	// WatchCheck is how often the epoch watch is checked (default 2 s):
	// each check asks the store for a progress notification, and a watch
	// that delivered nothing since the previous check is replaced. A
	// silently hung watch is so noticed within 2·WatchCheck, well inside
	// the coordinator's default quiesce deadline (10 s).
	WatchCheck time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Metrics, if set, registers the membership's Prometheus metrics
	// (idc_member_*, labelled group and domain). Domains of one process
	// may share a registry.
	Metrics prometheus.Registerer
}

// Defaults and limits of Config.
const (
	DefaultLeaseTTL    = 5 * time.Second
	MinLeaseTTL        = 2 * time.Second
	DefaultRho         = 0.01
	DefaultLeaseMargin = 250 * time.Millisecond
	DefaultOpTimeout   = 5 * time.Second
	DefaultWatchCheck  = 2 * time.Second
)

// DefaultEndpoints is where Join looks for the store by default.
var DefaultEndpoints = []string{"http://127.0.0.1:2379"}

func (c Config) withDefaults() Config {
	if len(c.Endpoints) == 0 && c.Client == nil {
		c.Endpoints = DefaultEndpoints
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.Rho == 0 {
		c.Rho = DefaultRho
	}
	if c.LeaseMargin == 0 {
		c.LeaseMargin = DefaultLeaseMargin
	}
	if c.RenewInterval == 0 {
		c.RenewInterval = c.LeaseTTL / 5
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	if c.WatchCheck == 0 {
		c.WatchCheck = DefaultWatchCheck
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) lease() lease.Config {
	return lease.Config{TTL: c.LeaseTTL, Rho: c.Rho, Margin: c.LeaseMargin}
}

// validate checks a config after defaults.
func (c Config) validate() error {
	if err := proto.CheckName("group", c.Group); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := proto.CheckName("domain ID", c.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	switch {
	case c.LeaseTTL < MinLeaseTTL:
		return fmt.Errorf("%w: lease TTL %v is below the store's minimum %v (etcd would silently raise it)", ErrConfig, c.LeaseTTL, MinLeaseTTL)
	case c.LeaseTTL%time.Second != 0:
		return fmt.Errorf("%w: lease TTL %v is not whole seconds (etcd grants whole seconds)", ErrConfig, c.LeaseTTL)
	case c.RenewInterval <= 0 || c.RenewInterval >= c.lease().Valid():
		return fmt.Errorf("%w: renew interval %v must be positive and below the lease validity %v", ErrConfig, c.RenewInterval, c.lease().Valid())
	case c.OpTimeout <= 0:
		return fmt.Errorf("%w: op timeout %v must be positive", ErrConfig, c.OpTimeout)
	case c.WatchCheck <= 0:
		return fmt.Errorf("%w: watch check %v must be positive", ErrConfig, c.WatchCheck)
	}
	if err := c.lease().Validate(); err != nil {
		return err // wraps ErrConfig
	}
	return nil
}
