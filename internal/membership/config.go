// Package membership is the member driver: one domain's membership in one
// group, around the pure machine of core/member. It grants and renews the
// membership's lease, registers the member record, watches the group's
// epoch record (with a watchdog for a hung watch), writes quiesce
// acknowledgements, fault reports and the leave marker, and fences the
// membership when its lease may have lapsed.
//
// The driver is event-driven: it reaches the store and time only through
// store.Store and clock.Clock, whose callbacks it serialises under one
// lock, and it never blocks. So the same code runs on etcd (package idc
// wraps it in a blocking API) and under the deterministic simulator (package
// sim), which is how the simulator checks the driver itself.
package membership

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/internal/channel"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a driver. Every field is required unless its comment
// gives a default; package idc fills them from its own Config.
type Config struct {
	Group, ID   string
	Incarnation uint64
	Priority    int
	// Lease is the lease timing: TTL as granted, ρ and the member margin.
	Lease lease.Config
	// RenewInterval is how often the lease is renewed; failed renewals are
	// retried at a fifth of it. A renewal waits for its answer as long as
	// the lease is valid by the member's reckoning.
	RenewInterval time.Duration
	// OpTimeout bounds each store request.
	OpTimeout time.Duration
	// WatchCheck is how often the epoch watch is checked: each check asks
	// the store for a progress notification, and a watch that delivered
	// nothing since the previous check is declared hung and replaced. A
	// hung watch is so noticed within 2·WatchCheck.
	WatchCheck time.Duration
	Keys       proto.Keys
	Store      store.Store
	Clock      clock.Clock
	Logger     *slog.Logger
	// Metrics, if set, registers the membership's metrics (idc_member_*).
	Metrics prometheus.Registerer
	// OnChange, if set, is called after every change of the membership's
	// state (connected, disconnected, fenced, left), without the driver's
	// lock held.
	OnChange func()
	// Channels, if set, gives the membership channels to its peers
	// (package internal/channel): Start listens, registers the address in
	// the member record, and opens and closes the channels of each epoch.
	// Its Group, ID, Incarnation, Clock and Logger are set from this
	// Config.
	Channels *channel.Config
}

// Validate checks what package idc does not already check.
func (c Config) Validate() error {
	switch {
	case c.Store == nil || c.Clock == nil:
		return fmt.Errorf("%w: membership needs a store and a clock", proto.ErrConfig)
	case c.RenewInterval <= 0 || c.OpTimeout <= 0 || c.WatchCheck <= 0:
		return fmt.Errorf("%w: renew interval %v, op timeout %v and watch check %v must be positive", proto.ErrConfig, c.RenewInterval, c.OpTimeout, c.WatchCheck)
	case c.Logger == nil:
		return fmt.Errorf("%w: no logger", proto.ErrConfig)
	}
	return c.Lease.Validate()
}
