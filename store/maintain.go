package store

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/idc-dev/idc/proto"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaintainConfig configures Maintain, which applies a DefragPolicy to one
// etcd member. Start from DefaultMaintainConfig and set Client and
// Endpoint: Maintain takes every field as given.
type MaintainConfig struct {
	// Client reaches the member (required).
	Client *clientv3.Client
	// Endpoint is the member's client URL (required): Status and
	// Defragment act on one member, not on the cluster.
	Endpoint string
	DefragPolicy
	// Logger receives every defragmentation (info: sizes before and
	// after, how long the member was blocked), skipped ones that would
	// exceed MaxInUse (warn) and failures (warn); nil: slog.Default().
	Logger *slog.Logger
	// Report, if set, receives the result of every check of Maintain.
	Report func(Maintenance, error)
}

// DefragPolicy says when to defragment an etcd member.
//
// Compaction (EmbedConfig.CompactionRetention) frees the pages of old
// revisions inside the member's bbolt file, and later writes reuse them,
// but the file never shrinks: after a burst it stays at its high-water
// mark, and that size counts against etcd's space quota. Defragmenting
// rewrites the file with only the pages in use. While it runs the member
// answers nothing (no read, write, watch notification or lease renewal
// that waits for the apply), so the policy defragments only when it frees
// much (InUseBelow), when the file is big enough to matter (MinSize), and
// when the copy is small enough to be brief (MaxInUse).
type DefragPolicy struct {
	// Interval is the time between checks (default: 5 min),
	// the cadence of etcd's own revision compactor. The first check is
	// one Interval after the start.
	Interval time.Duration
	// InUseBelow: defragment when the fraction of the file in use
	// (DbSizeInUse / DbSize) is below it (default: 0.5, so a
	// defragmentation at least halves the file). In (0, 1].
	InUseBelow float64
	// MinSize: and when the file is at least this many bytes
	// (default: 64 MiB, 3 % of etcd's default 2 GiB quota):
	// below it a defragmentation would stall the member for little gain.
	MinSize int64
	// MaxInUse: never defragment a member with more bytes in use than this
	// (default: 64 MiB); warn instead. The stall grows with
	// the bytes copied (125 MB in use took 0.7–2.6 s on a 2-core machine),
	// and a stall of a few seconds fences every member: their lease
	// renewals wait for it. 0 means no limit.
	MaxInUse int64
	// Timeout bounds each Status and Defragment call
	// (default: 1 min). A defragmentation the client stops
	// waiting for still completes in the member.
	Timeout time.Duration
}

// Defaults of DefaultDefragPolicy.
const (
	DefaultMaintainInterval = 5 * time.Minute
	DefaultDefragInUseBelow = 0.5
	DefaultDefragMinSize    = 64 << 20
	DefaultDefragMaxInUse   = 64 << 20
	DefaultMaintainTimeout  = time.Minute
)

// DefaultMaintainConfig returns a MaintainConfig with every default set
// (DefaultDefragPolicy); set Client and Endpoint.
func DefaultMaintainConfig() MaintainConfig {
	return MaintainConfig{DefragPolicy: DefaultDefragPolicy()}
}

// DefaultDefragPolicy returns the policy of DefaultMaintainConfig.
func DefaultDefragPolicy() DefragPolicy {
	return DefragPolicy{
		Interval:   DefaultMaintainInterval,
		InUseBelow: DefaultDefragInUseBelow,
		MinSize:    DefaultDefragMinSize,
		MaxInUse:   DefaultDefragMaxInUse,
		Timeout:    DefaultMaintainTimeout,
	}
}

func badMaintain(format string, args ...any) error {
	return fmt.Errorf("%w: maintenance: %s", proto.ErrConfig, fmt.Sprintf(format, args...))
}

// Validate checks c as it is (nothing is defaulted); errors wrap
// proto.ErrConfig, or ErrEndpoint for a malformed endpoint.
func (c MaintainConfig) Validate() error {
	switch {
	case c.Client == nil:
		return badMaintain("a client is required")
	case c.Endpoint == "":
		return badMaintain("the member's endpoint is required")
	}
	if err := c.DefragPolicy.Validate(); err != nil {
		return err
	}
	return CheckEndpoint(c.Endpoint)
}

// Validate checks p as it is (nothing is defaulted); errors wrap
// proto.ErrConfig.
func (p DefragPolicy) Validate() error {
	switch {
	case p.Interval <= 0:
		return badMaintain("interval %v must be positive", p.Interval)
	case !(p.InUseBelow > 0 && p.InUseBelow <= 1): // also refuses NaN
		return badMaintain("in-use fraction %v: want more than 0, at most 1", p.InUseBelow)
	case p.MinSize < 0:
		return badMaintain("minimum size %d must not be negative", p.MinSize)
	case p.MaxInUse < 0:
		return badMaintain("maximum in use %d must not be negative (0: no limit)", p.MaxInUse)
	case p.Timeout <= 0:
		return badMaintain("timeout %v must be positive", p.Timeout)
	}
	return nil
}

// DBStatus is what one etcd member reports of its database.
type DBStatus struct {
	// Size is the database file's size in bytes (DbSize).
	Size int64 `json:"db_size"`
	// InUse is the part of it holding data (DbSizeInUse); the rest is
	// free pages that writes reuse and defragmentation gives back.
	InUse int64 `json:"db_in_use"`
	// Revision is the store's current revision.
	Revision int64 `json:"revision"`
	// Quota is the member's space quota (DbSizeQuota): at it etcd raises
	// NOSPACE and refuses writes.
	Quota int64 `json:"quota"`
}

// ReadDBStatus asks the member at endpoint for the status of its database.
func ReadDBStatus(ctx context.Context, cli *clientv3.Client, endpoint string) (DBStatus, error) {
	r, err := cli.Status(ctx, endpoint)
	if err != nil {
		return DBStatus{}, fmt.Errorf("%w: status of %s: %w", ErrUnavailable, endpoint, err)
	}
	s := DBStatus{Size: r.DbSize, InUse: r.DbSizeInUse, Quota: r.DbSizeQuota}
	if r.Header != nil {
		s.Revision = r.Header.Revision
	}
	return s, nil
}

// Maintenance is the result of one check.
type Maintenance struct {
	// Before is the status the decision was taken on.
	Before DBStatus
	// Defragmented reports whether the member was defragmented; After
	// and Took are set only then.
	Defragmented bool
	// After is the status after the defragmentation.
	After DBStatus
	// Took is how long the defragmentation blocked the member (as the
	// client saw it).
	Took time.Duration
	// TooBig reports a member that should be defragmented but has more
	// than MaxInUse bytes in use.
	TooBig bool
}

// ShouldDefrag reports whether the policy defragments a member in status
// s (MaxInUse aside).
func (p DefragPolicy) ShouldDefrag(s DBStatus) bool {
	return s.Size > 0 && s.Size >= p.MinSize && float64(s.InUse) < p.InUseBelow*float64(s.Size)
}

// MaintainOnce checks the member once and defragments it if the policy
// says so.
func MaintainOnce(ctx context.Context, c MaintainConfig) (Maintenance, error) {
	if err := c.Validate(); err != nil {
		return Maintenance{}, err
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	var m Maintenance
	sctx, cancel := context.WithTimeout(ctx, c.Timeout)
	before, err := ReadDBStatus(sctx, c.Client, c.Endpoint)
	cancel()
	if err != nil {
		return m, err
	}
	m.Before = before
	if !c.ShouldDefrag(before) {
		log.Debug("store maintenance: no defragmentation needed", "endpoint", c.Endpoint, "db_size", before.Size, "db_in_use", before.InUse)
		return m, nil
	}
	if c.MaxInUse > 0 && before.InUse > c.MaxInUse {
		m.TooBig = true
		log.Warn("store maintenance: not defragmenting, too much in use for a brief stall; defragment when the member may stop answering",
			"endpoint", c.Endpoint, "db_size", before.Size, "db_in_use", before.InUse, "max_in_use", c.MaxInUse)
		return m, nil
	}
	log.Info("store maintenance: defragmenting; the member answers nothing until done",
		"endpoint", c.Endpoint, "db_size", before.Size, "db_in_use", before.InUse)
	dctx, cancel := context.WithTimeout(ctx, c.Timeout)
	start := time.Now()
	_, err = c.Client.Defragment(dctx, c.Endpoint)
	took := time.Since(start)
	cancel()
	if err != nil {
		return m, fmt.Errorf("%w: defragment %s after %v: %w", ErrUnavailable, c.Endpoint, took.Round(time.Millisecond), err)
	}
	m.Defragmented, m.Took = true, took
	sctx, cancel = context.WithTimeout(ctx, c.Timeout)
	m.After, err = ReadDBStatus(sctx, c.Client, c.Endpoint)
	cancel()
	if err != nil {
		return m, err
	}
	log.Info("store maintenance: defragmented", "endpoint", c.Endpoint,
		"db_size_before", before.Size, "db_size_after", m.After.Size, "db_in_use", m.After.InUse,
		"blocked", took.Round(time.Millisecond))
	return m, nil
}

// Maintain checks the member every c.Interval, defragmenting it when the
// policy says so (MaintainOnce), until ctx ends; then it returns nil. A
// failed check is logged and retried at the next interval. It returns an
// invalid configuration's error at once.
func Maintain(ctx context.Context, c MaintainConfig) error {
	if err := c.Validate(); err != nil {
		return err
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		m, err := MaintainOnce(ctx, c)
		if err != nil && ctx.Err() == nil {
			log.Warn("store maintenance: check failed; retrying at the next interval", "endpoint", c.Endpoint, "err", err, "next", c.Interval)
		}
		if c.Report != nil && ctx.Err() == nil {
			c.Report(m, err)
		}
	}
}
