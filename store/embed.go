// Package store connects idc to its store, etcd: it starts an embedded
// etcd server (a single node, or one member of a cluster) and dials
// clients with retries that honour the caller's context.
package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/idc-dev/idc/proto"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EmbedConfig configures an embedded etcd server: a single node by
// default, or one member of a cluster (Cluster). Zero fields take the
// defaults documented; Validate says what is wrong with the rest.
type EmbedConfig struct {
	// DataDir is where etcd keeps its data (required). etcd preallocates
	// ~128 MB of WAL there. A member restarted on its data dir rejoins its
	// cluster from it: Cluster and ClusterState only bootstrap.
	DataDir string
	// ClientURL is where the server listens for clients (default
	// http://127.0.0.1:2379). Port 0 picks a free port (single node
	// only); read Endpoints after start.
	ClientURL string
	// AdvertiseClientURL is the client URL the member tells others
	// (clients that sync their endpoints, the other members): default
	// ClientURL. A cluster member listening on an unspecified address
	// (0.0.0.0, [::]) must advertise one clients can dial.
	AdvertiseClientURL string
	// PeerURL is where the server listens for raft traffic from the other
	// members (default: this member's URL in Cluster, or
	// http://127.0.0.1:2380 for a single node, where port 0 picks a free
	// one).
	PeerURL string
	// AdvertisePeerURL is the peer URL the member tells the others:
	// default its URL in Cluster (or PeerURL for a single node). With
	// Cluster it must be that URL.
	AdvertisePeerURL string
	// Name is the member name (default "idc"); with Cluster, one of its
	// names.
	Name string
	// Cluster lists every member of the initial cluster, this one
	// included (etcd's --initial-cluster; ParseCluster reads its form).
	// Empty means a single-node cluster of this member alone. Only the
	// first start on an empty DataDir reads it.
	Cluster []Peer
	// ClusterState is ClusterNew (default: the members of Cluster start
	// together) or ClusterExisting (the member joins a running cluster
	// that already lists it).
	ClusterState ClusterState
	// ClusterToken tells clusters apart at bootstrap (etcd's
	// --initial-cluster-token; default etcd's, "etcd-cluster"): the
	// members of one cluster give the same token, and a member never
	// joins a cluster bootstrapped with another. Only with Cluster.
	ClusterToken string
	// TickMs and ElectionMs are etcd's heartbeat and election timing
	// (defaults 100 and 1000, etcd's own; ElectionMs at least 5·TickMs).
	// Every member of a cluster should have the same. A leader that is
	// lost is replaced within 2·ElectionMs (etcd randomises each
	// member's timeout in [ElectionMs, 2·ElectionMs)). Note etcd's
	// minimum lease TTL is ceil(1.5·ElectionMs).
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
	etcd  *embed.Etcd
	close sync.Once
	// Endpoints are the client URLs to dial: the advertised client URL
	// if one was given, else the address the server listens on.
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

// defaults fills in c's defaults that do not depend on the cluster.
func (c *EmbedConfig) defaults() {
	if c.Name == "" {
		c.Name = "idc"
	}
	if c.CompactionRetention == 0 {
		c.CompactionRetention = DefaultCompactionRetention
	}
}

// Validate checks c as StartEmbedded would take it, its zero fields
// defaulted: errors wrap ErrEmbed, and proto.ErrConfig for settings that
// can never work (a malformed cluster, a name missing from it, a
// retention too short).
func (c EmbedConfig) Validate() error {
	_, _, _, err := c.resolve()
	return err
}

// resolve validates c and returns it with its defaults, and the URLs to
// listen on and advertise.
func (c EmbedConfig) resolve() (EmbedConfig, urls, bool, error) {
	c.defaults()
	if c.DataDir == "" {
		return c, urls{}, false, fmt.Errorf("%w: data dir is required", ErrEmbed)
	}
	if r := c.CompactionRetention; r < MinCompactionRetention {
		return c, urls{}, false, fmt.Errorf("%w: %w: compaction retention %v: want 0 (default %v) or at least %v", ErrEmbed, proto.ErrConfig, r, DefaultCompactionRetention, MinCompactionRetention)
	}
	tick, election := cmp.Or(c.TickMs, 100), cmp.Or(c.ElectionMs, 1000)
	if election < 5*tick {
		return c, urls{}, false, fmt.Errorf("%w: %w: election timeout %d ms: want at least 5 heartbeat intervals of %d ms", ErrEmbed, proto.ErrConfig, election, tick)
	}
	own, err := c.validateCluster()
	if err != nil {
		return c, urls{}, false, err
	}
	cluster := len(c.Cluster) > 0
	var u urls
	defPeer := "http://127.0.0.1:2380"
	if cluster {
		defPeer = own
	}
	if u.client, err = parseURL("client URL", c.ClientURL, "http://127.0.0.1:2379"); err != nil {
		return c, urls{}, false, err
	}
	if u.advClient, err = parseURL("advertised client URL", c.AdvertiseClientURL, u.client.String()); err != nil {
		return c, urls{}, false, err
	}
	if u.peer, err = parseURL("peer URL", c.PeerURL, defPeer); err != nil {
		return c, urls{}, false, err
	}
	if u.advPeer, err = parseURL("advertised peer URL", own, u.peer.String()); err != nil {
		return c, urls{}, false, err
	}
	if cluster {
		if ip := net.ParseIP(u.advClient.Hostname()); ip != nil && ip.IsUnspecified() {
			return c, urls{}, false, fmt.Errorf("%w: %w: client URL %s listens everywhere: give an advertised client URL the other hosts can dial", ErrEmbed, proto.ErrConfig, u.client.String())
		}
		if u.peer.Port() == "0" {
			return c, urls{}, false, fmt.Errorf("%w: %w: peer URL %s: a cluster member needs a fixed port", ErrEmbed, proto.ErrConfig, u.peer.String())
		}
	}
	return c, u, cluster, nil
}

// urls are the URLs a member listens on and advertises.
type urls struct{ client, advClient, peer, advPeer url.URL }

// StartEmbedded starts an embedded etcd and waits until it serves clients
// or ctx ends. A cluster member serves clients only once a majority of
// its cluster is up and has elected a leader: until then it waits.
func StartEmbedded(ctx context.Context, c EmbedConfig) (*Embedded, error) {
	c, u, cluster, err := c.resolve()
	if err != nil {
		return nil, err
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	cfg.ListenClientUrls = []url.URL{u.client}
	cfg.AdvertiseClientUrls = []url.URL{u.advClient}
	cfg.ListenPeerUrls = []url.URL{u.peer}
	cfg.AdvertisePeerUrls = []url.URL{u.advPeer}
	cfg.InitialCluster = cfg.InitialClusterFromName(c.Name)
	if cluster {
		cfg.InitialCluster = FormatCluster(c.Cluster)
		cfg.ClusterState = string(ClusterNew)
		if c.ClusterState != "" {
			cfg.ClusterState = string(c.ClusterState)
		}
		if c.ClusterToken != "" {
			cfg.InitialClusterToken = c.ClusterToken
		}
	}
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
		eps = append(eps, u.client.Scheme+"://"+l.Addr().String())
	}
	if u.client.Scheme == "unix" {
		eps = []string{u.client.String()}
	}
	if c.AdvertiseClientURL != "" {
		eps = []string{u.advClient.String()}
	}
	log.Info("embedded etcd ready", "name", c.Name, "endpoints", eps, "data_dir", c.DataDir, "cluster", cfg.InitialCluster, "compaction_retention", c.CompactionRetention, "took", time.Since(start).Round(time.Millisecond))
	return &Embedded{etcd: e, Endpoints: eps}, nil
}

// Close stops the server (a cluster's leader hands its leadership over
// first); calling it again does nothing.
func (e *Embedded) Close() { e.close.Do(e.etcd.Close) }

// CompactRevision returns the revision up to which the server has
// compacted its history (every older revision is gone), or 0 if it has
// not compacted yet. Status over the client API does not report it.
func (e *Embedded) CompactRevision() int64 {
	return max(e.etcd.Server.KV().FirstRev(), 0)
}

// Err delivers a fatal server error.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }
