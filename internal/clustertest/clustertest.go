// Package clustertest runs idc across hosts: a 3-member etcd cluster of
// `idc store` processes (each a member and a coordinator candidate) on
// store hosts, and domains (`idc member`) of one group on hosts of their
// own, every host a network namespace (internal/hosts), every process
// started and read with internal/scenario's Proc. The end-to-end tests
// of store failures and partitions, and the cluster figures, use it.
package clustertest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idc-dev/idc/internal/hosts"
	"github.com/idc-dev/idc/internal/scenario"
	"github.com/idc-dev/idc/proto"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Config describes a cluster; zero fields take the defaults documented.
type Config struct {
	// Binary is the idc binary (scenario.BuildTemp); required.
	Binary string
	// Dir holds the members' data dirs; required.
	Dir string
	// Stores is the number of store hosts (default 3).
	Stores int
	// Domains names the group's domains, one host each (default d1, d2,
	// d3).
	Domains []string
	// Group is the group's name (default "g").
	Group string
	// HeartbeatInterval and ElectionTimeout are etcd's raft timing on
	// every member (defaults etcd's, 100ms and 1s).
	HeartbeatInterval, ElectionTimeout time.Duration
	// LeaseTTL is every domain's lease (default 5s, idc's).
	LeaseTTL time.Duration
	// Heartbeat and HeartbeatMisses are the domains' channel heartbeat
	// (defaults 50ms and 40: a peer silent for 2 s is reported). These
	// tests are about the store: idc's 130 ms default would report a
	// domain that a shared machine did not schedule for that long.
	Heartbeat       time.Duration
	HeartbeatMisses int
	// Output receives every process's output (default discards); it
	// must take writes from several goroutines.
	Output io.Writer
	// LogLevel is every process's --log-level (default "warn").
	LogLevel string
	// DomainFlags adds flags to a domain's command line, by its name
	// (fault injection: --clock-rate, say).
	DomainFlags map[string][]string
}

func (c *Config) defaults() error {
	if c.Binary == "" || c.Dir == "" {
		return errors.New("clustertest: Binary and Dir are required")
	}
	c.Stores = cmp.Or(c.Stores, 3)
	if len(c.Domains) == 0 {
		c.Domains = []string{"d1", "d2", "d3"}
	}
	c.Group = cmp.Or(c.Group, "g")
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, 100*time.Millisecond)
	c.ElectionTimeout = cmp.Or(c.ElectionTimeout, time.Second)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, 5*time.Second)
	c.Heartbeat = cmp.Or(c.Heartbeat, 50*time.Millisecond)
	c.HeartbeatMisses = cmp.Or(c.HeartbeatMisses, 40)
	c.LogLevel = cmp.Or(c.LogLevel, "warn")
	if c.Output == nil {
		c.Output = io.Discard
	}
	return nil
}

// Keys is where the cluster's records are (the default prefix).
var Keys = proto.Keys{Prefix: proto.DefaultPrefix}

// Node is a host and the process running on it.
type Node struct {
	// Name is the store member's name (s1, ...) or the domain's ID.
	Name string
	Host *hosts.Host
	argv []string

	mu   sync.Mutex
	proc *scenario.Proc
}

// Proc is the node's current process (nil before it started).
func (n *Node) Proc() *scenario.Proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// ClientURL is a store node's client URL.
func (n *Node) ClientURL() string { return "http://" + n.Host.IP + ":2379" }

// Cluster is a running cluster.
type Cluster struct {
	cfg      Config
	Net      *hosts.Net
	Stores   []*Node
	Domains  []*Node
	Observer *hosts.Host
	// Client reaches every store member from the observer host.
	Client *clientv3.Client
	out    io.Writer
}

// Config returns the configuration, defaults filled in.
func (c *Cluster) Config() Config { return c.cfg }

// Start builds the hosts, starts the store members together and waits
// until each serves and runs its coordinator candidate (StartDomains
// starts the domains). On error it stops what it started.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	nw, err := hosts.New(ctx)
	if err != nil {
		return nil, err
	}
	c = &Cluster{cfg: cfg, Net: nw, out: cfg.Output}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	var peers []string
	for i := range cfg.Stores {
		name := fmt.Sprintf("s%d", i+1)
		h, err := nw.AddHost(ctx, name)
		if err != nil {
			return nil, err
		}
		c.Stores = append(c.Stores, &Node{Name: name, Host: h})
		peers = append(peers, fmt.Sprintf("%s=http://%s:2380", name, h.IP))
	}
	for _, s := range c.Stores {
		s.argv = s.Host.Command(cfg.Binary, "store", "--name", s.Name,
			"--data-dir", filepath.Join(cfg.Dir, s.Name),
			"--initial-cluster", strings.Join(peers, ","), "--initial-cluster-token", filepath.Base(cfg.Dir),
			"--listen-client", s.ClientURL(),
			"--heartbeat-interval", cfg.HeartbeatInterval.String(), "--election-timeout", cfg.ElectionTimeout.String(),
			"--log-level", cfg.LogLevel)
	}
	for _, d := range cfg.Domains {
		h, err := nw.AddHost(ctx, d)
		if err != nil {
			return nil, err
		}
		n := &Node{Name: d, Host: h}
		n.argv = h.Command(cfg.Binary, "member", "--group", cfg.Group, "--id", d,
			"--listen", "tcp://"+h.IP+":0", "--lease-ttl", cfg.LeaseTTL.String(),
			"--heartbeat", cfg.Heartbeat.String(), "--heartbeat-misses", strconv.Itoa(cfg.HeartbeatMisses),
			"--etcd-endpoints", strings.Join(c.Endpoints(), ","), "--log-level", cfg.LogLevel)
		n.argv = append(n.argv, cfg.DomainFlags[d]...)
		c.Domains = append(c.Domains, n)
	}
	if c.Observer, err = nw.AddHost(ctx, "obs"); err != nil {
		return nil, err
	}
	// Every member waits for a majority: start them all, then wait.
	for _, s := range c.Stores {
		if err := c.launch(ctx, s, "starting"); err != nil {
			return nil, err
		}
	}
	for _, s := range c.Stores {
		if err := s.Proc().WaitLine(ctx, "coordinator: candidate"); err != nil {
			return nil, fmt.Errorf("clustertest: %s: %w", s.Name, err)
		}
	}
	if c.Client, err = c.Dial(ctx, c.Endpoints()...); err != nil {
		return nil, err
	}
	return c, nil
}

// StartDomains starts every domain, one by one, each once the one before
// is connected.
func (c *Cluster) StartDomains(ctx context.Context) error {
	for _, d := range c.Domains {
		if err := c.StartDomain(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// launch starts n's process and waits for a line containing ready.
func (c *Cluster) launch(ctx context.Context, n *Node, ready string) error {
	p, err := scenario.Launch(ctx, n.Name, n.argv, c.out, ready)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
	return nil
}

// Endpoints are the store members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, s := range c.Stores {
		out = append(out, s.ClientURL())
	}
	return out
}

// Dial returns an etcd client of endpoints from the observer host.
func (c *Cluster) Dial(ctx context.Context, endpoints ...string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: 5 * time.Second,
		// etcd's servers take a ping every 5 s at most (and none on an
		// idle connection: hence no PermitWithoutStream).
		DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(c.Observer.Dial)},
		Logger:      zap.NewNop(), Context: context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("clustertest: dial %v: %w", endpoints, err)
	}
	return cli, nil
}

// StartDomain starts (or restarts) domain d and waits for its first
// connected epoch.
func (c *Cluster) StartDomain(ctx context.Context, d *Node) error {
	return c.launch(ctx, d, "connected")
}

// StartStore starts (or restarts, on its data dir) store member s and
// waits until it serves and runs its coordinator candidate.
func (c *Cluster) StartStore(ctx context.Context, s *Node) error {
	return c.launch(ctx, s, "coordinator: candidate")
}

// Store returns the store node called name.
func (c *Cluster) Store(name string) *Node {
	for _, s := range c.Stores {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Domain returns the domain node called name.
func (c *Cluster) Domain(name string) *Node {
	for _, d := range c.Domains {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Leader returns the store member that is etcd's leader, as the members
// that answer say (an error if none names one within ctx).
func (c *Cluster) Leader(ctx context.Context) (*Node, error) {
	var last error
	for {
		for _, s := range c.Stores {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			lead, err := c.leaderSays(sctx, s)
			cancel()
			if err == nil {
				return lead, nil
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("clustertest: no member names a leader: %w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// leaderSays asks member s which member leads.
func (c *Cluster) leaderSays(ctx context.Context, s *Node) (*Node, error) {
	cli, err := c.Dial(ctx, s.ClientURL())
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	st, err := cli.Status(ctx, s.ClientURL())
	if err != nil {
		return nil, fmt.Errorf("%s: status: %w", s.Name, err)
	}
	if st.Leader == 0 {
		return nil, fmt.Errorf("%s: no leader", s.Name)
	}
	ml, err := cli.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return nil, fmt.Errorf("%s: member list: %w", s.Name, err)
	}
	for _, m := range ml.Members {
		if m.ID == st.Leader {
			if n := c.Store(m.Name); n != nil {
				return n, nil
			}
		}
	}
	return nil, fmt.Errorf("%s: leader %x is no member it lists", s.Name, st.Leader)
}

// MoveLeader makes store member to etcd's leader.
func (c *Cluster) MoveLeader(ctx context.Context, to *Node) error {
	for {
		lead, err := c.Leader(ctx)
		if err != nil {
			return err
		}
		if lead == to {
			return nil
		}
		ml, err := c.Client.MemberList(ctx)
		if err != nil {
			return err
		}
		var id uint64
		for _, m := range ml.Members {
			if m.Name == to.Name {
				id = m.ID
			}
		}
		cli, err := c.Dial(ctx, lead.ClientURL())
		if err != nil {
			return err
		}
		_, err = cli.MoveLeader(ctx, id)
		cli.Close()
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("clustertest: move leader to %s: %w", to.Name, err)
		}
	}
}

// ActiveCoordinator returns the store member whose coordinator candidate
// is elected: the candidate key of lowest create revision.
func (c *Cluster) ActiveCoordinator(ctx context.Context) (*Node, error) {
	resp, err := c.Client.Get(ctx, Keys.Election(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, errors.New("clustertest: no coordinator candidate")
	}
	name := string(resp.Kvs[0].Value)
	if s := c.Store(name); s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("clustertest: the elected candidate %q is no store member", name)
}

// Other returns a store member that is none of not.
func (c *Cluster) Other(not ...*Node) *Node {
	for _, s := range c.Stores {
		if !slices.Contains(not, s) {
			return s
		}
	}
	return nil
}

// Close kills every process (domains first) and deletes the hosts.
func (c *Cluster) Close() error {
	if c.Client != nil {
		c.Client.Close()
	}
	for _, n := range append(slices.Clone(c.Domains), c.Stores...) {
		if p := n.Proc(); p != nil {
			p.Stop(5 * time.Second)
		}
	}
	err := c.Net.Close()
	for _, s := range c.Stores {
		os.RemoveAll(filepath.Join(c.cfg.Dir, s.Name)) // ~128 MB of WAL each
	}
	return err
}
