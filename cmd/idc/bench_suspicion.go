package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/internal/bench"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchSuspicionCmd) }

func newBenchSuspicionCmd(g *globals) *cobra.Command {
	var (
		o      bench.SuspicionOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "suspicion",
		Short: "Count false suspicions between healthy members whose channels are busy, with every core saturated by other processes and without",
		Long: `Starts a fresh embedded store and coordinator (in this process) and --members
healthy domains, each a child process of this binary, with the given channel
heartbeat settings. Each member calls every peer every --call-every. Once
every channel has answered, a phase counts for --duration: every fault report
written in the store is a false suspicion (every member is healthy). With
--load N, N further child processes spin, one core each, during the loaded
phase; with --baseline (the default) a phase without load runs first, for
comparison. A line of figures every --every, a summary at the end: false
suspicions, epoch changes, calls, the peers the channels lost by cause, and
the distribution of each member's longest gap between two answers from one
peer, and of how late a timer of half a heartbeat fired, in each second.
Ctrl-C stops it early, with the summary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case o.Duration <= 0:
				return fmt.Errorf("--duration %v: want a positive duration", o.Duration)
			case o.Members < 2:
				return fmt.Errorf("--members %d: want at least 2", o.Members)
			case o.Load < 0:
				return fmt.Errorf("--load %d: want 0 or more", o.Load)
			case o.Heartbeat <= 0 || o.Misses < 1:
				return fmt.Errorf("--heartbeat %v and --misses %d: want a positive heartbeat and at least one miss", o.Heartbeat, o.Misses)
			case o.CallEvery <= 0 || o.Every <= 0:
				return fmt.Errorf("--call-every %v and --every %v: want positive durations", o.CallEvery, o.Every)
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			o.Child = func(args []string) *exec.Cmd {
				return exec.Command(exe, append([]string{"bench", "suspicion", "child"}, args...)...)
			}
			o.Out, o.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if asJSON {
				o.Out = cmd.ErrOrStderr()
			}
			res, err := bench.Suspicion(cmd.Context(), o)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if jerr := enc.Encode(res); jerr != nil && err == nil {
					err = jerr
				}
			}
			if errors.Is(err, context.Canceled) {
				return nil // interrupted: the summary is printed
			}
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Members, "members", 3, "healthy domains, each a child process")
	f.DurationVar(&o.Duration, "duration", time.Minute, "how long each phase counts")
	f.IntVar(&o.Load, "load", runtime.NumCPU(), "processes spinning (one core each) in the loaded phase; 0: no loaded phase")
	f.BoolVar(&o.Baseline, "baseline", true, "run a phase without load first, for comparison")
	f.DurationVar(&o.Heartbeat, "heartbeat", idc.DefaultHeartbeat, "the members' channel heartbeat (idc.Config.Heartbeat)")
	f.IntVar(&o.Misses, "misses", idc.DefaultHeartbeatMisses, "heartbeats a peer may miss before it is reported (idc.Config.HeartbeatMisses)")
	f.DurationVar(&o.CallEvery, "call-every", 5*time.Millisecond, "pause between two calls of a member to one peer")
	f.DurationVar(&o.Every, "every", 10*time.Second, "time between two lines of figures")
	f.BoolVar(&asJSON, "json", false, "print the figures as JSON on stdout (the lines go to stderr)")

	child := &cobra.Command{
		Use:                "child",
		Short:              "A child process of idc bench suspicion: a member or a spinner",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return bench.SuspicionChild(cmd.Context(), args, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.AddCommand(child)
	return cmd
}
