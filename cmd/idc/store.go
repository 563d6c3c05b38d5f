package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
)

func newStoreCmd(g *globals) *cobra.Command {
	var (
		dataDir, clientURL, peerURL, mode, name, metricsAddr string
		noCoord                                              bool
		quiesce, margin, flapWindow, flapHold                time.Duration
		flapDrops                                            int
		rho                                                  float64
		retention                                            time.Duration
		defrag                                               = store.DefaultDefragPolicy()
		defragMinMiB, defragMaxInUseMiB                      int64
	)
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Run the store (embedded etcd) and the group coordinator",
		Long: `Runs an embedded single-node etcd and a group coordinator candidate.

With --etcd-endpoints, no etcd is started: the coordinator runs against the
existing etcd cluster. Several 'idc store' processes may run against one
store: an etcd election picks the active coordinator, and every epoch write is
a compare-and-swap, so correctness never depends on there being just one.`,
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
			if err := ccfg.Validate(); err != nil {
				return err
			}
			embedded := !cmd.Flags().Changed("etcd-endpoints")
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
			}
			endpoints := g.endpoints
			if embedded {
				sctx, cancel := context.WithTimeout(ctx, time.Minute)
				e, err := store.StartEmbedded(sctx, store.EmbedConfig{DataDir: dataDir, ClientURL: clientURL, PeerURL: peerURL, CompactionRetention: retention, Logger: log})
				if err != nil {
					cancel()
					return err
				}
				defer e.Close()
				endpoints = e.Endpoints
				fmt.Fprintf(cmd.OutOrStdout(), "store: embedded etcd serving %v (data in %s)\n", e.Endpoints, dataDir)
				go func() {
					if err := <-e.Err(); err != nil {
						log.Error("embedded etcd failed", "err", err)
					}
				}()
				// Defragmentation of the embedded member; it stops before
				// the store does.
				mcli, err := store.Dial(sctx, store.DialConfig{Endpoints: e.Endpoints, Logger: log})
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
	f.StringVar(&dataDir, "data-dir", "idc-data", "embedded etcd's data directory")
	f.StringVar(&clientURL, "listen-client", "http://127.0.0.1:2379", "embedded etcd's client URL (loopback by default)")
	f.StringVar(&peerURL, "listen-peer", "http://127.0.0.1:2380", "embedded etcd's peer URL (loopback by default)")
	f.BoolVar(&noCoord, "no-coordinator", false, "run only the store, no coordinator candidate")
	f.StringVar(&mode, "mode", string(proto.ModeLease), "how departed members are handled in groups whose configuration does not say (idc group set): lease, fence or both")
	f.DurationVar(&quiesce, "quiesce-timeout", coordinator.DefaultQuiesceTimeout, "time survivors have to quiesce before they are dropped")
	f.Float64Var(&rho, "rho", coordinator.DefaultRho, "clock-rate drift bound ρ")
	f.DurationVar(&margin, "lease-margin", coordinator.DefaultLeaseMargin, "safety margin added to the wait for a departed member")
	f.StringVar(&name, "name", "", "this coordinator candidate's name (default host:pid)")
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
