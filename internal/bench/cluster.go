package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/internal/scenario"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ClusterOptions configure ClusterFigures.
type ClusterOptions struct {
	// Binary is the idc binary that runs the stores (required): each
	// store is an `idc store` process, a member of a 3-member cluster on
	// loopback, or the single node.
	Binary string
	// Members is the group's size before each timed change (default 3).
	Members int
	// Reps is how many epoch changes to time on each store (default 10).
	Reps int
	// Kills is how many times the cluster's leader is killed (default 5).
	Kills int
	// HeartbeatInterval and ElectionTimeout are every store's raft timing
	// (defaults etcd's: 100ms and 1s).
	HeartbeatInterval, ElectionTimeout time.Duration
	// Dir holds the stores' data (default: a temporary directory).
	Dir string
	// Progress receives a line per phase (may be nil).
	Progress io.Writer
}

// ClusterResult holds the figures of ClusterFigures.
type ClusterResult struct {
	// Single and Cluster are EpochChange's figures on a single node and
	// on the 3-member cluster, measured in the same run.
	Single  Result `json:"single"`
	Cluster Result `json:"cluster"`
	// Stall: after each kill of the cluster's leader (SIGKILL), the time
	// until a write is acknowledged again; writes go one after another
	// through every member, each given half an election timeout before
	// it is sent again.
	Stall []time.Duration `json:"stall_ns"`
	// KillEpoch: an epoch change triggered at each kill (a domain joins):
	// from the kill to every member connected.
	KillEpoch []time.Duration `json:"kill_epoch_ns"`
	// ElectionTimeout is the stores' raft election timeout.
	ElectionTimeout time.Duration `json:"election_timeout_ns"`
}

// storeProc is an `idc store` process of the bench.
type storeProc struct {
	name, client string
	argv         []string
	p            *scenario.Proc
}

func (o ClusterOptions) say(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// ClusterFigures measures the epoch change on a 3-member etcd cluster
// beside the same on a single node, in one run, and the stall a kill of
// the cluster's leader causes. The stores are processes on loopback; the
// domains run in this process, each with its own client of every member.
func ClusterFigures(ctx context.Context, o ClusterOptions) (ClusterResult, error) {
	if o.Binary == "" {
		return ClusterResult{}, errors.New("bench: the idc binary is required")
	}
	o.Members = max(o.Members, 1)
	if o.Reps <= 0 {
		o.Reps = 10
	}
	if o.Kills <= 0 {
		o.Kills = 5
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 100 * time.Millisecond
	}
	if o.ElectionTimeout <= 0 {
		o.ElectionTimeout = time.Second
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "idc-bench-cluster-")
		if err != nil {
			return ClusterResult{}, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	res := ClusterResult{ElectionTimeout: o.ElectionTimeout}
	timing := []string{"--heartbeat-interval", o.HeartbeatInterval.String(), "--election-timeout", o.ElectionTimeout.String(), "--log-level", "error"}

	ports, err := freePorts(8)
	if err != nil {
		return res, err
	}
	// The single node.
	single := &storeProc{name: "single", client: fmt.Sprintf("http://127.0.0.1:%d", ports[0])}
	single.argv = append([]string{o.Binary, "store", "--data-dir", filepath.Join(o.Dir, "single"),
		"--listen-client", single.client, "--listen-peer", fmt.Sprintf("http://127.0.0.1:%d", ports[1])}, timing...)
	// The cluster.
	var cluster []*storeProc
	var peers []string
	for i := range 3 {
		s := &storeProc{name: fmt.Sprintf("s%d", i+1), client: fmt.Sprintf("http://127.0.0.1:%d", ports[2+2*i])}
		peers = append(peers, fmt.Sprintf("%s=http://127.0.0.1:%d", s.name, ports[3+2*i]))
		cluster = append(cluster, s)
	}
	for _, s := range cluster {
		s.argv = append([]string{o.Binary, "store", "--name", s.name, "--data-dir", filepath.Join(o.Dir, s.name),
			"--initial-cluster", strings.Join(peers, ","), "--listen-client", s.client}, timing...)
	}
	out := io.Discard // the stores' output is not shown (io.Discard is safe for concurrent use)
	defer func() {
		for _, s := range append([]*storeProc{single}, cluster...) {
			if s.p != nil {
				s.p.Stop(5 * time.Second)
			}
		}
	}()
	start := func(s *storeProc, ready string) error {
		p, err := scenario.Launch(ctx, s.name, s.argv, out, ready)
		s.p = p
		return err
	}

	o.say("single node: starting idc store")
	if err := start(single, "coordinator: candidate"); err != nil {
		return res, err
	}
	eo := Options{Members: o.Members, Reps: o.Reps, Progress: o.Progress}
	eo.Endpoints = []string{single.client}
	if res.Single, err = EpochChange(ctx, eo); err != nil {
		return res, fmt.Errorf("bench: single node: %w", err)
	}
	single.p.Stop(5 * time.Second)
	single.p = nil

	o.say("3-member cluster: starting three idc store --initial-cluster")
	for _, s := range cluster {
		if err := start(s, "starting"); err != nil {
			return res, err
		}
	}
	var endpoints []string
	for _, s := range cluster {
		if err := s.p.WaitLine(ctx, "coordinator: candidate"); err != nil {
			return res, err
		}
		endpoints = append(endpoints, s.client)
	}
	eo.Endpoints = endpoints
	if res.Cluster, err = EpochChange(ctx, eo); err != nil {
		return res, fmt.Errorf("bench: cluster: %w", err)
	}

	o.say("leader killed %d times: the write stall, and an epoch change triggered at the kill", o.Kills)
	res.Stall, res.KillEpoch, err = leaderKills(ctx, o, cluster, endpoints, start)
	return res, err
}

// leaderKills kills the cluster's leader o.Kills times, each time with a
// domain joining the group at once, and restarts it on its data dir.
func leaderKills(ctx context.Context, o ClusterOptions, cluster []*storeProc, endpoints []string, start func(*storeProc, string) error) (stalls, epochs []time.Duration, err error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var clients []*clientv3.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	dial := func() (*clientv3.Client, error) {
		c, err := store.Dial(ctx, store.DialConfig{Endpoints: endpoints, Logger: quiet})
		if err == nil {
			clients = append(clients, c)
		}
		return c, err
	}
	tr := newEpochs()
	join := func(id string) (*idc.Membership, error) {
		cli, err := dial()
		if err != nil {
			return nil, err
		}
		cfg := idc.DefaultConfig()
		cfg.Group, cfg.ID, cfg.Client, cfg.Logger, cfg.Listen = "kill", id, cli, quiet, ""
		d, err := idc.Join(ctx, cfg)
		if err == nil {
			tr.follow(ctx, d)
		}
		return d, err
	}
	var ds []*idc.Membership
	defer func() {
		for _, d := range ds {
			d.Close()
		}
	}()
	for i := range o.Members {
		d, err := join(fmt.Sprintf("m%03d", i))
		if err != nil {
			return nil, nil, err
		}
		ds = append(ds, d)
	}
	if err := tr.wait(ctx, ds, o.Members); err != nil {
		return nil, nil, err
	}
	wcli, err := dial()
	if err != nil {
		return nil, nil, err
	}
	for k := range o.Kills {
		// The leader on another member than the active coordinator's, so
		// the kill costs the store's election alone (the coordinator's
		// takeover is its election TTL; idc bench epoch does not cover it).
		lead, err := leaderApart(ctx, wcli, cluster)
		if err != nil {
			return stalls, epochs, err
		}
		// A writer, one write after another, each sent again after half
		// an election timeout.
		wctx, stopWriter := context.WithCancel(ctx)
		type ack struct{ sent, at time.Time }
		acks := make(chan ack, 1024)
		var wg sync.WaitGroup
		wg.Go(func() {
			defer close(acks)
			for i := 0; wctx.Err() == nil; i++ {
				octx, cancel := context.WithTimeout(wctx, o.ElectionTimeout/2)
				sent := time.Now()
				_, err := wcli.Put(octx, "/bench/stall", fmt.Sprint(i))
				cancel()
				if err == nil {
					acks <- ack{sent, time.Now()}
				}
			}
		})
		time.Sleep(100 * time.Millisecond) // writes flowing
		killed := time.Now()
		lead.p.Kill()
		d, err := join(fmt.Sprintf("k%03d", k))
		if err != nil {
			stopWriter()
			wg.Wait()
			return stalls, epochs, err
		}
		all := append(append([]*idc.Membership(nil), ds...), d)
		err = tr.wait(ctx, all, o.Members+1)
		joined := time.Now()
		var stall time.Duration
		for a := range acks {
			if a.sent.After(killed) { // a write sent before may have been committed before
				stall = a.at.Sub(killed)
				break
			}
		}
		stopWriter()
		for range acks {
		}
		wg.Wait()
		if err != nil {
			return stalls, epochs, err
		}
		if stall == 0 {
			return stalls, epochs, errors.New("bench: no write acknowledged after the leader's kill")
		}
		stalls, epochs = append(stalls, stall), append(epochs, joined.Sub(killed))
		o.say("  kill %d: leader %s; writes again after %v, epoch change %v", k+1, lead.name, stall.Round(time.Millisecond), joined.Sub(killed).Round(time.Millisecond))
		if err := d.Leave(ctx); err != nil {
			return stalls, epochs, err
		}
		d.Close()
		if err := start(lead, "coordinator: candidate"); err != nil {
			return stalls, epochs, err
		}
		if err := tr.wait(ctx, ds, o.Members); err != nil {
			return stalls, epochs, err
		}
		time.Sleep(o.ElectionTimeout) // the restarted member caught up
	}
	return stalls, epochs, nil
}

// leaderApart makes a member other than the active coordinator's the
// cluster's leader, and returns it once every member agrees.
func leaderApart(ctx context.Context, cli *clientv3.Client, cluster []*storeProc) (*storeProc, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		lead, ids, err := clusterLeader(ctx, cli, cluster)
		if err != nil {
			return nil, err
		}
		resp, err := cli.Get(ctx, proto.Keys{Prefix: proto.DefaultPrefix}.Election(), clientv3.WithPrefix(),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
		if err != nil {
			return nil, err
		}
		if len(resp.Kvs) == 0 || string(resp.Kvs[0].Value) != lead.name {
			return lead, nil
		}
		to := cluster[0]
		if to == lead {
			to = cluster[1]
		}
		one, err := store.Dial(ctx, store.DialConfig{Endpoints: []string{lead.client}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return nil, err
		}
		_, err = one.MoveLeader(ctx, ids[to])
		one.Close()
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("bench: move the leader to %s: %w", to.name, err)
		}
	}
}

// clusterLeader returns the store process every member names as the
// cluster's leader, and the members' IDs.
func clusterLeader(ctx context.Context, cli *clientv3.Client, cluster []*storeProc) (*storeProc, map[*storeProc]uint64, error) {
	for {
		ids := map[*storeProc]uint64{}
		leaders := map[uint64]bool{}
		for _, s := range cluster {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := cli.Status(sctx, s.client)
			cancel()
			if err != nil {
				break
			}
			ids[s], leaders[st.Leader] = st.Header.MemberId, true
		}
		if len(ids) == len(cluster) && len(leaders) == 1 {
			for _, s := range cluster {
				if leaders[ids[s]] {
					return s, ids, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, nil, errors.New("bench: the cluster's members do not agree on a leader")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePorts returns n TCP ports free on loopback a moment ago (a cluster
// needs its ports fixed before its members start).
func freePorts(n int) ([]int, error) {
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
