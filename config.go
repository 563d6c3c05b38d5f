package idc

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Config configures one domain's membership in one group. Start from
// DefaultConfig and set Group and ID (and Endpoints or Client): Join takes
// every field as given, so an explicit zero is never mistaken for "unset"
// (a drift bound ρ of 0 is a drift bound of 0).
type Config struct {
	// Group is the group to join (required): letters, digits, '.', '_', '-'.
	Group string
	// ID is the domain's stable ID (required), same alphabet as Group.
	ID string
	// Incarnation identifies this start of the domain; 0 draws a random
	// one. Two live memberships never share (ID, Incarnation); after a
	// fence, rejoin with a new one.
	Incarnation uint64
	// Endpoints are the store's client URLs (DefaultConfig:
	// ["http://127.0.0.1:2379"]), used when Client is nil.
	Endpoints []string
	// Client is an existing store client to share, e.g. between the groups
	// of one domain; if set, Endpoints are not used. Join does not close it.
	Client *clientv3.Client
	// Prefix is the store key prefix (DefaultConfig: "/idc").
	Prefix string
	// LeaseTTL is the membership lease's time to live (DefaultConfig: 5 s).
	// It must be whole seconds and at least MinLeaseTTL: etcd silently
	// raises shorter TTLs to its minimum (2 s at its default timings), which
	// would make the member's own deadline wrong.
	LeaseTTL time.Duration
	// Rho bounds clock-rate drift between domains (DefaultConfig: 0.01):
	// the member counts its lease valid for LeaseTTL·(1−ρ) − LeaseMargin
	// after sending the renewal the store answered.
	Rho float64
	// LeaseMargin is the member's extra safety allowance (DefaultConfig:
	// 250 ms).
	LeaseMargin time.Duration
	// RenewInterval is how often the lease is renewed (DefaultConfig: 1 s,
	// a fifth of the TTL); failed renewals are retried at a fifth of it. It
	// must be below the lease's validity.
	RenewInterval time.Duration
	// Priority breaks ties when two members report each other: the higher
	// stays.
	Priority int
	// OpTimeout bounds each store operation (DefaultConfig: 5 s).
	OpTimeout time.Duration
	// WatchCheck is how often the epoch watch is checked (DefaultConfig:
	// 2 s): each check asks the store for a progress notification, and a
	// watch that delivered nothing since the previous check is replaced. A
	// silently hung watch is so noticed within 2·WatchCheck, well inside
	// the coordinator's default quiesce deadline (10 s).
	WatchCheck time.Duration
	// Logger receives the membership's logs (nil: slog.Default()).
	Logger *slog.Logger
	// Metrics, if set, registers the membership's Prometheus metrics
	// (idc_member_*, labelled group and domain). Domains of one process
	// may share a registry.
	Metrics prometheus.Registerer
}

// Defaults of DefaultConfig, and limits.
const (
	DefaultLeaseTTL      = 5 * time.Second
	MinLeaseTTL          = 2 * time.Second
	DefaultRho           = 0.01
	DefaultLeaseMargin   = 250 * time.Millisecond
	DefaultRenewInterval = time.Second
	DefaultOpTimeout     = 5 * time.Second
	DefaultWatchCheck    = 2 * time.Second
)

// DefaultEndpoints is where DefaultConfig looks for the store.
var DefaultEndpoints = []string{"http://127.0.0.1:2379"}

// DefaultConfig returns a Config with every default set. Set Group and ID
// (and Endpoints or Client) and change what you need.
func DefaultConfig() Config {
	return Config{
		Endpoints:     append([]string(nil), DefaultEndpoints...),
		Prefix:        proto.DefaultPrefix,
		LeaseTTL:      DefaultLeaseTTL,
		Rho:           DefaultRho,
		LeaseMargin:   DefaultLeaseMargin,
		RenewInterval: DefaultRenewInterval,
		OpTimeout:     DefaultOpTimeout,
		WatchCheck:    DefaultWatchCheck,
	}
}

func (c Config) lease() lease.Config {
	return lease.Config{TTL: c.LeaseTTL, Rho: c.Rho, Margin: c.LeaseMargin}
}

// Validate checks c as it is (nothing is defaulted); errors wrap ErrConfig
// and say what to change.
func (c Config) Validate() error {
	if err := proto.CheckName("group", c.Group); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := proto.CheckName("domain ID", c.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if c.Client == nil {
		if len(c.Endpoints) == 0 {
			return fmt.Errorf("%w: no store endpoints and no client (start from idc.DefaultConfig())", ErrConfig)
		}
		for _, ep := range c.Endpoints {
			if err := store.CheckEndpoint(ep); err != nil {
				return fmt.Errorf("%w: %w", ErrConfig, err)
			}
		}
	}
	switch {
	case !strings.HasPrefix(c.Prefix, "/"):
		return fmt.Errorf("%w: key prefix %q must start with '/' (DefaultConfig: %q)", ErrConfig, c.Prefix, proto.DefaultPrefix)
	case c.LeaseTTL < MinLeaseTTL:
		return fmt.Errorf("%w: lease TTL %v is below the store's minimum %v (etcd would silently raise it)", ErrConfig, c.LeaseTTL, MinLeaseTTL)
	case c.LeaseTTL%time.Second != 0:
		return fmt.Errorf("%w: lease TTL %v is not whole seconds (etcd grants whole seconds)", ErrConfig, c.LeaseTTL)
	}
	if err := c.lease().Validate(); err != nil {
		return err // wraps ErrConfig: ρ, margin, validity
	}
	switch {
	case c.RenewInterval <= 0 || c.RenewInterval >= c.lease().Valid():
		return fmt.Errorf("%w: renew interval %v must be positive and below the lease validity %v", ErrConfig, c.RenewInterval, c.lease().Valid())
	case c.OpTimeout <= 0:
		return fmt.Errorf("%w: op timeout %v must be positive", ErrConfig, c.OpTimeout)
	case c.WatchCheck <= 0:
		return fmt.Errorf("%w: watch check %v must be positive", ErrConfig, c.WatchCheck)
	}
	return nil
}
