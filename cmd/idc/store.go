package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/idc-dev/idc/coordinator"
	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newStoreCmd(g *globals) *cobra.Command {
	var (
		dataDir, clientURL, peerURL, mode, name, metricsAddr string
		cl                                                   clusterOptions
		noCoord                                              bool
		quiesce, margin, flapWindow, flapHold, electionTTL   time.Duration
		flapDrops                                            int
		rho                                                  float64
		retention                                            time.Duration
		defrag                                               = store.DefaultDefragPolicy()
		defragMinMiB, defragMaxInUseMiB                      int64
	)
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Run the store (embedded etcd) and the group coordinator",
		Long: `Runs an embedded etcd and a group coordinator candidate against it.

Three ways to run it:

  single node (default)  an embedded single-node etcd in --data-dir, its
                         clients at --listen-client.
  cluster member         with --initial-cluster, one member of an etcd
                         cluster of several hosts: run one 'idc store' per
                         host, each with the same --initial-cluster and
                         --initial-cluster-token and its own --name. The
                         members wait for a majority of the cluster, then
                         serve. A member restarted on its --data-dir
                         rejoins from it (the --initial-* flags only
                         bootstrap). Domains list every member's client URL
                         in their --etcd-endpoints.
  coordinator only       with --etcd-endpoints, no etcd is started: the
                         coordinator runs against an existing etcd.

Several 'idc store' processes may run against one store, and in cluster
mode every member runs a coordinator candidate against its own member (so
one cut off with its member steps down): an etcd election picks the active
coordinator, and every epoch write is a compare-and-swap, so correctness
never depends on there being just one. See docs/CLUSTER.md for what each
failure does.`,
		Example: `  idc store --data-dir /var/lib/idc
  # on host 10.0.0.1 (and likewise s2 on 10.0.0.2, s3 on 10.0.0.3):
  idc store --name s1 --data-dir /var/lib/idc \
      --initial-cluster s1=http://10.0.0.1:2380,s2=http://10.0.0.2:2380,s3=http://10.0.0.3:2380 \
      --initial-cluster-token prod-idc --listen-client http://10.0.0.1:2379
  # a further coordinator candidate only, against that cluster:
  idc store --etcd-endpoints http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := g.logger()
			if !proto.Mode(mode).Valid() {
				return fmt.Errorf("%w: --mode %q: want lease, fence or both", proto.ErrConfig, mode)
			}
			// Every flag is taken as given: a zero is a zero (and a zero
			// timeout an error), never a quiet default.
			ccfg := coordinator.DefaultConfig()
			ccfg.Keys, ccfg.Mode = proto.Keys{Prefix: g.prefix}, proto.Mode(mode)
			ccfg.QuiesceTimeout, ccfg.Rho, ccfg.LeaseMargin, ccfg.Name = quiesce, rho, margin, name
			ccfg.Logger = log
			ccfg.Damping = core.Damping{Drops: flapDrops, Window: flapWindow, Hold: flapHold}
			ccfg.ElectionTTL = electionTTL
			if err := ccfg.Validate(); err != nil {
				return err
			}
			embedded := !cmd.Flags().Changed("etcd-endpoints")
			ecfg, err := cl.embedConfig(cmd.Flags(), name, dataDir, clientURL, peerURL, retention, log)
			if err != nil {
				return err
			}
			if !embedded && cl.cluster != "" {
				return fmt.Errorf("%w: --etcd-endpoints runs no etcd, --initial-cluster starts a member: give one of them", proto.ErrConfig)
			}
			if embedded {
				if retention < store.MinCompactionRetention {
					return fmt.Errorf("%w: --compaction-retention %v: want at least %v", proto.ErrConfig, retention, store.MinCompactionRetention)
				}
				if defragMinMiB > 1<<30 || defragMaxInUseMiB > 1<<30 {
					return fmt.Errorf("%w: --defrag-min-mib %d, --defrag-max-in-use-mib %d: want at most %d", proto.ErrConfig, defragMinMiB, defragMaxInUseMiB, 1<<30)
				}
				defrag.MinSize, defrag.MaxInUse = defragMinMiB<<20, defragMaxInUseMiB<<20
				if err := defrag.Validate(); err != nil {
					return err
				}
				if err := ecfg.Validate(); err != nil {
					return err
				}
			}
			endpoints := g.endpoints
			if embedded {
				// A single node is ready at once; a cluster member waits
				// for a majority of its cluster, as long as that takes.
				wait := time.Minute
				if len(ecfg.Cluster) > 0 {
					wait = math.MaxInt64
					fmt.Fprintf(cmd.OutOrStdout(), "store: etcd member %s of cluster %s starting (data in %s); it serves once a majority is up\n", ecfg.Name, store.FormatCluster(ecfg.Cluster), dataDir)
				}
				sctx, cancel := context.WithTimeout(ctx, wait)
				e, err := store.StartEmbedded(sctx, ecfg)
				cancel()
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				defer e.Close()
				endpoints = e.Endpoints
				if len(ecfg.Cluster) > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "store: etcd member %s serving %v in cluster %s\n", ecfg.Name, e.Endpoints, store.FormatCluster(ecfg.Cluster))
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "store: embedded etcd serving %v (data in %s)\n", e.Endpoints, dataDir)
				}
				go func() {
					if err := <-e.Err(); err != nil {
						log.Error("embedded etcd failed", "err", err)
					}
				}()
				// Defragmentation of the embedded member; it stops before
				// the store does.
				dctx, cancel := context.WithTimeout(ctx, time.Minute)
				mcli, err := store.Dial(dctx, store.DialConfig{Endpoints: e.Endpoints, Logger: log})
				cancel()
				if err != nil {
					return err
				}
				defer mcli.Close()
				mcfg := store.DefaultMaintainConfig()
				mcfg.Client, mcfg.Endpoint, mcfg.DefragPolicy, mcfg.Logger = mcli, e.Endpoints[0], defrag, log
				mctx, stopMaintain := context.WithCancel(ctx)
				maintained := make(chan error, 1)
				go func() { maintained <- store.Maintain(mctx, mcfg) }()
				defer func() { stopMaintain(); <-maintained }()
			}
			if noCoord {
				<-ctx.Done()
				return nil
			}
			g.endpoints = endpoints
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			if metricsAddr != "" {
				stopMetrics, err := serveMetrics(metricsAddr, reg, log)
				if err != nil {
					return err
				}
				defer stopMetrics()
				fmt.Fprintf(cmd.OutOrStdout(), "store: metrics at http://%s/metrics\n", metricsAddr)
			}
			cli, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer cli.Close()
			ccfg.Client, ccfg.Metrics = cli, reg
			if ccfg.Name == "" && len(ecfg.Cluster) > 0 {
				ccfg.Name = ecfg.Name
			}
			if ccfg.Name == "" {
				h, _ := os.Hostname()
				ccfg.Name = fmt.Sprintf("%s:%d", h, os.Getpid()) // coordinator's own default, known here to be printed
			}
			fmt.Fprintf(cmd.OutOrStdout(), "coordinator: candidate %s for groups in %v\n", ccfg.Name, endpoints)
			err = coordinator.Run(ctx, ccfg)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "idc-data", "embedded etcd's data directory; a cluster member restarted on it rejoins its cluster")
	f.StringVar(&clientURL, "listen-client", "http://127.0.0.1:2379", "embedded etcd's client URL (loopback by default; a cluster member's domains on other hosts need one they can reach)")
	f.StringVar(&peerURL, "listen-peer", "http://127.0.0.1:2380", "embedded etcd's peer URL (loopback by default; a cluster member's default is its URL in --initial-cluster)")
	cl.register(f)
	f.BoolVar(&noCoord, "no-coordinator", false, "run only the store, no coordinator candidate")
	f.StringVar(&mode, "mode", string(proto.ModeLease), "how departed members are handled in groups whose configuration does not say (idc group set): lease, fence or both")
	f.DurationVar(&electionTTL, "election-ttl", coordinator.DefaultElectionTTL, "TTL of the coordinator election's lease, whole seconds: how long a crashed coordinator holds the election; renewed every tenth of it, held through store stalls of up to 0.8·TTL")
	f.DurationVar(&quiesce, "quiesce-timeout", coordinator.DefaultQuiesceTimeout, "time survivors have to quiesce before they are dropped")
	f.Float64Var(&rho, "rho", coordinator.DefaultRho, "clock-rate drift bound ρ")
	f.DurationVar(&margin, "lease-margin", coordinator.DefaultLeaseMargin, "safety margin added to the wait for a departed member")
	f.StringVar(&name, "name", "", "this store's name: its etcd member's in --initial-cluster (required there), and its coordinator candidate's (default: the member's name, else host:pid)")
	f.IntVar(&flapDrops, "flap-drops", core.DefaultFlapDrops, "departures within --flap-window that make a domain flap (0: no damping)")
	f.DurationVar(&flapWindow, "flap-window", core.DefaultFlapWindow, "window in which departures are counted for flap damping")
	f.DurationVar(&flapHold, "flap-hold", core.DefaultFlapHold, "how long a flapping domain is held back from admission after its last departure")
	f.DurationVar(&retention, "compaction-retention", store.DefaultCompactionRetention, "embedded etcd: history kept; every this long it discards the revisions older than this (periodic auto-compaction)")
	f.DurationVar(&defrag.Interval, "defrag-interval", defrag.Interval, "embedded etcd: how often to check whether to defragment its database file")
	f.Float64Var(&defrag.InUseBelow, "defrag-in-use-below", defrag.InUseBelow, "embedded etcd: defragment when less than this fraction of the file is in use...")
	f.Int64Var(&defragMinMiB, "defrag-min-mib", defrag.MinSize>>20, "...and the file is at least this many MiB")
	f.Int64Var(&defragMaxInUseMiB, "defrag-max-in-use-mib", defrag.MaxInUse>>20, "embedded etcd: never defragment with more MiB in use than this (the member answers nothing meanwhile); warn instead (0: no limit)")
	f.DurationVar(&defrag.Timeout, "defrag-timeout", defrag.Timeout, "embedded etcd: bound on each status and defragment call")
	f.StringVar(&metricsAddr, "metrics-listen", "", "serve the coordinator's Prometheus metrics at this host:port under /metrics (default: off)")
	return cmd
}

// serveMetrics serves reg at addr/metrics until the returned function is
// called.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "err", err)
		}
	}()
	return func() { _ = srv.Close() }, nil
}

// clusterOptions are idc store's flags for a member of an etcd cluster
// and for etcd's raft timing; they mirror etcd's own flags.
type clusterOptions struct {
	cluster, state, token      string
	advertiseClient            string
	advertisePeer              string
	heartbeat, electionTimeout time.Duration
}

func (o *clusterOptions) register(f *pflag.FlagSet) {
	f.StringVar(&o.cluster, "initial-cluster", "", "run a member of this etcd cluster: every member as name=peerURL, comma-separated (s1=http://10.0.0.1:2380,s2=...); --name is this one")
	f.StringVar(&o.state, "initial-cluster-state", string(store.ClusterNew), "new: the members of --initial-cluster start together; existing: join a running cluster that already lists this member (etcdctl member add)")
	f.StringVar(&o.token, "initial-cluster-token", "", "a name for the cluster, the same on every member (default etcd's, etcd-cluster): members of differently named clusters never join")
	f.StringVar(&o.advertiseClient, "advertise-client", "", "the client URL this member tells others (default --listen-client; required when that listens on 0.0.0.0)")
	f.StringVar(&o.advertisePeer, "advertise-peer", "", "the peer URL this member tells others (default: its URL in --initial-cluster, which it must be)")
	f.DurationVar(&o.heartbeat, "heartbeat-interval", 100*time.Millisecond, "embedded etcd's raft heartbeat interval (whole milliseconds; the same on every member)")
	f.DurationVar(&o.electionTimeout, "election-timeout", time.Second, "embedded etcd's raft election timeout, at least 5 heartbeat intervals (the same on every member): a lost leader is replaced within twice this")
}

// embedConfig returns the embedded etcd's configuration for the flags.
// Errors wrap proto.ErrConfig.
func (o *clusterOptions) embedConfig(f *pflag.FlagSet, name, dataDir, clientURL, peerURL string, retention time.Duration, log *slog.Logger) (store.EmbedConfig, error) {
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--heartbeat-interval", o.heartbeat}, {"--election-timeout", o.electionTimeout}} {
		if d.v < time.Millisecond || d.v%time.Millisecond != 0 || d.v > time.Hour {
			return store.EmbedConfig{}, fmt.Errorf("%w: %s %v: want whole milliseconds, at least 1ms", proto.ErrConfig, d.flag, d.v)
		}
	}
	c := store.EmbedConfig{
		DataDir: dataDir, ClientURL: clientURL, PeerURL: peerURL, AdvertiseClientURL: o.advertiseClient,
		TickMs: uint(o.heartbeat / time.Millisecond), ElectionMs: uint(o.electionTimeout / time.Millisecond),
		CompactionRetention: retention, Logger: log,
	}
	if o.cluster == "" {
		for _, flag := range []string{"initial-cluster-state", "initial-cluster-token", "advertise-peer"} {
			if f.Changed(flag) {
				return c, fmt.Errorf("%w: --%s needs --initial-cluster", proto.ErrConfig, flag)
			}
		}
		c.Name = "idc" // the single node's member name, whatever the coordinator's
		return c, nil
	}
	peers, err := store.ParseCluster(o.cluster)
	if err != nil {
		return c, fmt.Errorf("--initial-cluster: %w", err)
	}
	if name == "" {
		return c, fmt.Errorf("%w: --initial-cluster needs --name, this member's name in it", proto.ErrConfig)
	}
	c.Name, c.Cluster, c.ClusterToken, c.AdvertisePeerURL = name, peers, o.token, o.advertisePeer
	c.ClusterState = store.ClusterState(o.state)
	if !f.Changed("listen-peer") {
		c.PeerURL = "" // its URL in the cluster
	}
	return c, nil
}
