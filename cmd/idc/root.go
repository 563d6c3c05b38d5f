package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// globals are the flags every subcommand shares.
type globals struct {
	endpoints []string
	prefix    string
	logLevel  string
	timeout   time.Duration
	cpuProf   string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "idc",
		Short:         "Fault-tolerant inter-domain communication",
		Long:          "idc connects a group of domains in epochs decided in an etcd store, quiesces them at every topology change, and fences domains that may have lost their lease.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringSliceVar(&g.endpoints, "etcd-endpoints", []string{"http://127.0.0.1:2379"}, "etcd client URLs of the store")
	pf.StringVar(&g.prefix, "prefix", "/idc", "key prefix of idc's records in the store")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	pf.DurationVar(&g.timeout, "dial-timeout", 10*time.Second, "how long to keep trying to reach the store")
	pf.StringVar(&g.cpuProf, "cpu-profile", "", "write a CPU profile (pprof) of the command to this file")
	var stopProf func()
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if err := g.validate(); err != nil {
			return err
		}
		var err error
		stopProf, err = startCPUProfile(g.cpuProf)
		return err
	}
	root.PersistentPostRun = func(*cobra.Command, []string) {
		if stopProf != nil {
			stopProf()
		}
	}
	root.AddCommand(newStoreCmd(g), newStatusCmd(g), newWatchCmd(g), newDemoCmd(g), newBenchCmd(g), newPingCmd(g))
	root.AddCommand(newGroupCmd(g), newFenceCmd(g))
	root.AddCommand(newStorageCmd(g), newDriverCmd(g), newDiskCmd(g), newMemberCmd(g))
	return root
}

// startCPUProfile starts a CPU profile into path ("" for none) and
// returns what stops it.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// validate refuses flag values that would mean something else than they
// say (a zero timeout, an unknown log level) instead of quietly using a
// default.
func (g *globals) validate() error {
	var lvl slog.Level
	switch {
	case g.timeout <= 0:
		return fmt.Errorf("%w: --dial-timeout %v must be positive", proto.ErrConfig, g.timeout)
	case lvl.UnmarshalText([]byte(g.logLevel)) != nil:
		return fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", proto.ErrConfig, g.logLevel)
	case !strings.HasPrefix(g.prefix, "/"):
		return fmt.Errorf("%w: --prefix %q must start with '/'", proto.ErrConfig, g.prefix)
	case len(g.endpoints) == 0:
		return fmt.Errorf("%w: --etcd-endpoints is empty", proto.ErrConfig)
	}
	for _, ep := range g.endpoints {
		if err := store.CheckEndpoint(ep); err != nil {
			return fmt.Errorf("%w: --etcd-endpoints: %w", proto.ErrConfig, err)
		}
	}
	return nil
}

// logger returns the slog logger for the --log-level flag, on stderr.
func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(g.logLevel)) // validated
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// dial connects to the store named by --etcd-endpoints, retrying until
// --dial-timeout.
func (g *globals) dial(ctx context.Context) (*clientv3.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	return store.Dial(ctx, store.DialConfig{Endpoints: g.endpoints, Logger: g.logger()})
}
