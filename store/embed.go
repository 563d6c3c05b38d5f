// Package store connects idc to its store, etcd: it starts an embedded
// single-node etcd server and dials clients with retries that honour the
// caller's context.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/idc-dev/idc/proto"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EmbedConfig configures an embedded single-node etcd server.
type EmbedConfig struct {
	// DataDir is where etcd keeps its data (required). etcd preallocates
	// ~128 MB of WAL there.
	DataDir string
	// ClientURL is where clients connect (default http://127.0.0.1:2379).
	// Port 0 picks a free port; read Endpoints after start.
	ClientURL string
	// PeerURL is the raft peer address (default http://127.0.0.1:2380;
	// port 0 picks a free one).
	PeerURL string
	// Name is the member name (default "idc").
	Name string
	// TickMs and ElectionMs are etcd's heartbeat and election timing
	// (defaults 100 and 1000, etcd's own). Note etcd's minimum lease TTL is
	// ceil(1.5·ElectionMs).
	TickMs, ElectionMs uint
	// CompactionRetention is how much key history the server keeps. Every
	// write leaves the key's old value behind as a revision, and an epoch
	// change at 20 members leaves about 10 KB; without compaction that
	// history grows until etcd's space quota stops every write (NOSPACE).
	// With etcd's periodic auto-compaction, every CompactionRetention (or
	// every hour, if that is shorter) the server discards the revisions
	// older than CompactionRetention, so it holds between one and two
	// retentions of history, or retention plus an hour beyond an hour
	// (the first compaction, one retention after the start, reaches back
	// only to the start).
	//
	// History serves only watchers that resume after a short break;
	// idc's watchers (members, coordinator, inspect) re-list and re-watch
	// when their revision has been compacted, and a member cut off for
	// longer than its lease (5 s by default) is fenced anyway. 0 means
	// DefaultCompactionRetention (1 minute); otherwise at least
	// MinCompactionRetention. Compaction frees space inside the database
	// file without shrinking it: see Maintain for defragmentation.
	CompactionRetention time.Duration
	// Logger receives the server's start and stop (default slog.Default()).
	Logger *slog.Logger
}

// Auto-compaction of EmbedConfig.
const (
	// DefaultCompactionRetention keeps one to two minutes of history:
	// long enough for any watcher to resume across a reconnection
	// (idc's watch checks and gRPC keep-alive notice a dead stream within
	// seconds), short enough that the history of a busy store stays a few
	// megabytes.
	DefaultCompactionRetention = time.Minute
	// MinCompactionRetention is the shortest retention StartEmbedded
	// accepts: etcd's compactor wakes every tenth of it.
	MinCompactionRetention = time.Second
)

// ErrEmbed is wrapped by errors starting the embedded server.
var ErrEmbed = errors.New("idc: embedded etcd")

// Embedded is a running embedded etcd server.
type Embedded struct {
	etcd *embed.Etcd
	// Endpoints are the client URLs to dial.
	Endpoints []string
}

func parseURL(what, s, def string) (url.URL, error) {
	if s == "" {
		s = def
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" && u.Scheme != "unix" {
		return url.URL{}, fmt.Errorf("%w: bad %s %q", ErrEmbed, what, s)
	}
	return *u, nil
}

// StartEmbedded starts an embedded etcd and waits until it serves clients
// or ctx ends.
func StartEmbedded(ctx context.Context, c EmbedConfig) (*Embedded, error) {
	if c.DataDir == "" {
		return nil, fmt.Errorf("%w: data dir is required", ErrEmbed)
	}
	if c.Name == "" {
		c.Name = "idc"
	}
	switch r := c.CompactionRetention; {
	case r == 0:
		c.CompactionRetention = DefaultCompactionRetention
	case r < MinCompactionRetention:
		return nil, fmt.Errorf("%w: %w: compaction retention %v: want 0 (default %v) or at least %v", ErrEmbed, proto.ErrConfig, r, DefaultCompactionRetention, MinCompactionRetention)
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	cu, err := parseURL("client URL", c.ClientURL, "http://127.0.0.1:2379")
	if err != nil {
		return nil, err
	}
	pu, err := parseURL("peer URL", c.PeerURL, "http://127.0.0.1:2380")
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(c.Name)
	if c.TickMs > 0 {
		cfg.TickMs = c.TickMs
	}
	if c.ElectionMs > 0 {
		cfg.ElectionMs = c.ElectionMs
	}
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = c.CompactionRetention.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	start := time.Now()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: start in %s: %w", ErrEmbed, c.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("%w: %w", ErrEmbed, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("%w: not ready: %w", ErrEmbed, ctx.Err())
	}
	eps := make([]string, 0, len(e.Clients))
	for _, l := range e.Clients {
		eps = append(eps, cu.Scheme+"://"+l.Addr().String())
	}
	if cu.Scheme == "unix" {
		eps = []string{cu.String()}
	}
	log.Info("embedded etcd ready", "endpoints", eps, "data_dir", c.DataDir, "compaction_retention", c.CompactionRetention, "took", time.Since(start).Round(time.Millisecond))
	return &Embedded{etcd: e, Endpoints: eps}, nil
}

// Close stops the server.
func (e *Embedded) Close() { e.etcd.Close() }

// CompactRevision returns the revision up to which the server has
// compacted its history (every older revision is gone), or 0 if it has
// not compacted yet. Status over the client API does not report it.
func (e *Embedded) CompactRevision() int64 {
	return max(e.etcd.Server.KV().FirstRev(), 0)
}

// Err delivers a fatal server error.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }
