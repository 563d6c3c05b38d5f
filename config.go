package idc

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/internal/channel"
	"github.com/idc-dev/idc/network"
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
	// must be below the lease's validity. A renewal waits for its answer as
	// long as the lease is valid; the memberships sharing a Client renew
	// over one long-lived keep-alive stream (store.Renewer).
	RenewInterval time.Duration
	// Priority breaks ties when two members report each other: the higher
	// stays.
	Priority int
	// Clock is the clock the membership measures its lease and timers on
	// (nil: clock.System(), CLOCK_BOOTTIME). Leases assume it runs within
	// 1±Rho of real time; fault injection passes a drifting one
	// (clock.Scaled).
	Clock clock.Clock
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
	// (idc_member_* and idc_channel_*, labelled group and domain). Domains
	// of one process may share a registry.
	Metrics prometheus.Registerer

	// Listen is where the membership accepts channels from its peers,
	// "tcp://host:port" or "unix:///path" (DefaultConfig:
	// "tcp://127.0.0.1:0", a free port on loopback; set a reachable
	// address for peers on other hosts). "" turns channels off: the
	// membership neither accepts nor opens any.
	Listen string
	// Advertise is the address peers dial, if not the listener's (for a
	// listener on 0.0.0.0, say). Optional.
	Advertise string
	// Heartbeat and HeartbeatMisses (DefaultConfig: 20 ms and 6): a
	// channel that has sent nothing for half the heartbeat sends one; a
	// peer silent for Heartbeat·HeartbeatMisses is reported lost, so a
	// silent peer is reported within Heartbeat·(HeartbeatMisses+½), 130 ms
	// by default (10 ms more if this process itself was starved: a late
	// heartbeat tick is not taken for the peer's silence). On a machine
	// whose cores are saturated, stalls of a few hundred milliseconds do
	// happen: see docs/BENCHMARKS.md, "Channel fault detection", for
	// the false suspicions measured and more lenient settings.
	Heartbeat       time.Duration
	HeartbeatMisses int
	// ChannelWindow is how many messages and calls a peer may send before
	// this member has taken them (DefaultConfig: 64): a slow receiver
	// slows its senders, and at most ChannelWindow·MaxMessage bytes per
	// peer wait here.
	ChannelWindow int
	// MaxMessage is the largest message, request or response (DefaultConfig:
	// 1 MiB).
	MaxMessage int
	// ChannelSetupTimeout is how long a channel of a connected epoch may
	// take to open before its peer is reported lost (DefaultConfig: 5 s).
	ChannelSetupTimeout time.Duration
	// Handler serves the calls peers make (Epoch.Call). Each call runs in
	// its own goroutine as an operation of its epoch, with the epoch's
	// context; an AsyncHandler's are started on the channel's goroutine
	// instead, and answered when it replies. Nil: calls fail at the
	// caller with ErrRemote.
	Handler Handler
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

	DefaultListen              = "tcp://127.0.0.1:0"
	DefaultHeartbeat           = 20 * time.Millisecond
	DefaultHeartbeatMisses     = 6
	DefaultChannelWindow       = 64
	DefaultMaxMessage          = 1 << 20
	DefaultChannelSetupTimeout = 5 * time.Second
	// channelDialTimeout bounds a dial and channelHandshakeTimeout a
	// handshake (and how long a peer holds one for an epoch it has not
	// connected yet).
	channelDialTimeout      = time.Second
	channelHandshakeTimeout = time.Second
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

		Listen:              DefaultListen,
		Heartbeat:           DefaultHeartbeat,
		HeartbeatMisses:     DefaultHeartbeatMisses,
		ChannelWindow:       DefaultChannelWindow,
		MaxMessage:          DefaultMaxMessage,
		ChannelSetupTimeout: DefaultChannelSetupTimeout,
	}
}

// channels returns the channel configuration, or nil if channels are off.
func (c Config) channels() *channel.Config {
	if c.Listen == "" {
		return nil
	}
	return &channel.Config{
		Network: network.OS{}, Listen: c.Listen, Advertise: c.Advertise,
		Heartbeat: c.Heartbeat, Misses: c.HeartbeatMisses, Window: c.ChannelWindow, MaxMessage: c.MaxMessage,
		DialTimeout: channelDialTimeout, HandshakeTimeout: channelHandshakeTimeout, SetupTimeout: c.ChannelSetupTimeout,
		Metrics: c.Metrics,
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
	if cc := c.channels(); cc != nil {
		// What the channel driver checks, but for its own.
		cc.Clock, cc.Logger = clock.System(), slog.Default()
		if err := cc.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// clock returns the membership's clock.
func (c Config) clock() clock.Clock {
	if c.Clock == nil {
		return clock.System()
	}
	return c.Clock
}
