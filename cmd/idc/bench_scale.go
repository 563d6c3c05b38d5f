package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/internal/bench"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchScaleCmd) }

func newBenchScaleCmd(g *globals) *cobra.Command {
	var (
		o       bench.ScaleOptions
		groups  string
		maxRSS  string
		asJSON  bool
		verbose bool
	)
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "Form thousands of idle groups in one process and measure formation, idle CPU, lease renewals, spontaneous fences, one group's epoch change beside them and a burst",
		Long: `For each --groups size, in a fresh embedded store with one coordinator (all in
this process): one group of 3 is formed alone and --reps of its epoch changes
are timed (a new domain joins, until every member holds the new connected
epoch). Then the size's groups of 3 memberships each are formed (no
channels; --per-client memberships share one store client; --parallel joins
at a time), and over an --idle window the process's CPU time, the lease
renewals the store answered (etcd_debugging_lease_renewed_total), the
renewals' latency as the members saw them and the spontaneous epoch changes
and fences are counted. The first group's epoch changes are timed again
beside the idle groups (the ratio is the scale-out cost), and finally a new
domain joins every group at once (a burst: epoch changes per second).

A size that does not form within --timeout, exceeds --max-rss, or loses its
coordinator or store is reported as broken in the table, and the larger sizes
are skipped unless --keep-going. Progress goes to stderr; the table (or
--json, every figure) to stdout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range strings.Split(groups, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || n < 1 {
					return fmt.Errorf("--groups %q: want a comma-separated list of positive counts", groups)
				}
				o.Groups = append(o.Groups, n)
			}
			switch {
			case o.PerClient < 1:
				return fmt.Errorf("--per-client %d: want at least 1", o.PerClient)
			case o.Idle <= 0:
				return fmt.Errorf("--idle %v: want a positive duration", o.Idle)
			case o.Reps < 1:
				return fmt.Errorf("--reps %d: want at least 1", o.Reps)
			case o.Timeout <= 0:
				return fmt.Errorf("--timeout %v: want a positive duration", o.Timeout)
			case o.Parallel < 1:
				return fmt.Errorf("--parallel %d: want at least 1", o.Parallel)
			case o.BurstParallel < 0:
				return fmt.Errorf("--burst-parallel %d: want 0 (all at once) or more", o.BurstParallel)
			}
			if maxRSS != "0" && maxRSS != "" {
				n, err := parseBytes(maxRSS)
				if err != nil || n == 0 || n > math.MaxInt64 {
					return fmt.Errorf("--max-rss %q: want a size such as 8GiB, or 0 for no limit", maxRSS)
				}
				o.MaxRSS = int64(n)
			}
			o.Progress = cmd.ErrOrStderr()
			if verbose {
				o.Logger = g.logger()
			}
			res, err := bench.Scale(cmd.Context(), o)
			if len(res) > 0 {
				if asJSON {
					if jerr := writeJSON(cmd.OutOrStdout(), res); jerr != nil && err == nil {
						err = jerr
					}
				} else {
					writeScaleTable(cmd.OutOrStdout(), res)
				}
			}
			if errors.Is(err, context.Canceled) {
				return nil // interrupted: the sizes so far are printed
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&groups, "groups", "100,1000,10000", "numbers of groups of 3 to measure, comma-separated, each in a fresh store")
	f.IntVar(&o.PerClient, "per-client", bench.DefaultScalePerClient, "memberships sharing one store client")
	f.DurationVar(&o.Idle, "idle", bench.DefaultScaleIdle, "idle window over which CPU, renewals and spontaneous fences are counted")
	f.IntVar(&o.Reps, "reps", bench.DefaultScaleReps, "epoch changes of one group timed alone and beside the idle groups")
	f.DurationVar(&o.Timeout, "timeout", bench.DefaultScaleTimeout, "per size: how long the groups may take to form (and, separately, the burst) before the size counts as broken")
	f.IntVar(&o.Parallel, "parallel", bench.DefaultScaleParallel, "Joins at a time while forming the groups")
	f.IntVar(&o.BurstParallel, "burst-parallel", 0, "Joins of the burst at a time (0: all at once)")
	f.StringVar(&maxRSS, "max-rss", "0", "stop a size whose resident set exceeds this (e.g. 8GiB); 0: no limit")
	f.BoolVar(&o.KeepGoing, "keep-going", false, "measure the larger sizes after one broke")
	f.StringVar(&o.CPUProfile, "idle-profile", "", "path prefix: a CPU profile of each size's idle window, to <prefix>-<groups>.pprof")
	f.BoolVar(&asJSON, "json", false, "print every figure as JSON on stdout")
	f.BoolVar(&verbose, "verbose", false, "print the components' logs on stderr, at --log-level (warnings are counted either way)")
	return cmd
}

// writeScaleTable prints the figures, one row per figure and one column
// per size.
func writeScaleTable(w io.Writer, rs []bench.ScaleResult) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	secs := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name string, cell func(r bench.ScaleResult) string) {
		fmt.Fprint(tw, name)
		for _, r := range rs {
			fmt.Fprint(tw, "\t", cell(r))
		}
		fmt.Fprintln(tw, "\t")
	}
	// A figure a size did not reach is "-".
	if0 := func(ok bool, s string) string {
		if !ok {
			return "-"
		}
		return s
	}
	row("groups × 3 memberships", func(r bench.ScaleResult) string { return fmt.Sprintf("%d", r.Groups) })
	row("outcome", func(r bench.ScaleResult) string {
		switch {
		case r.Broke():
			return "BROKE (below)"
		case r.Outcome != "ok":
			return "degraded (below)"
		}
		return r.Outcome
	})
	row("store clients", func(r bench.ScaleResult) string { return fmt.Sprintf("%d (%d each)", r.Clients, r.PerClient) })
	row("formation", func(r bench.ScaleResult) string {
		return if0(r.Formation > 0, fmt.Sprintf("%s (%.0f memberships/s)", secs(r.Formation), float64(r.Memberships)/r.Formation.Seconds()))
	})
	row("connected (groups lost)", func(r bench.ScaleResult) string {
		return fmt.Sprintf("%d of %d (%d)", r.Connected, r.Memberships, r.FormationLost)
	})
	idle := func(r bench.ScaleResult) bool { return r.Idle > 0 }
	row("idle CPU, cores (total)", func(r bench.ScaleResult) string {
		return if0(idle(r), fmt.Sprintf("%.3f over %s", r.CPUCores, secs(r.Idle)))
	})
	row("idle CPU per 1000 memberships", func(r bench.ScaleResult) string {
		return if0(idle(r), fmt.Sprintf("%.1f%% of a core", r.CPUPer1000*100))
	})
	row("other processes' CPU, cores", func(r bench.ScaleResult) string {
		return if0(idle(r) && r.OtherCores >= 0, fmt.Sprintf("%.2f of %d", r.OtherCores, r.Cores))
	})
	row("renewals/s (expected)", func(r bench.ScaleResult) string {
		return if0(idle(r) && r.Renewals >= 0, fmt.Sprintf("%.0f (%.0f)", r.RenewalsPerSec, r.RenewalsExpected))
	})
	row("renewal p50 / p99 / max", func(r bench.ScaleResult) string {
		return if0(idle(r) && r.RenewSamples > 0, fmt.Sprintf("%s / %s / %s", ms(r.RenewP50), ms(r.RenewP99), ms(r.RenewMax)))
	})
	row("renewal failures idle (all)", func(r bench.ScaleResult) string {
		return if0(idle(r), fmt.Sprintf("%d (%d)", r.RenewFailures, r.RenewFailuresTotal))
	})
	row("spontaneous epochs / ended", func(r bench.ScaleResult) string {
		return if0(idle(r), fmt.Sprintf("%d / %d", r.SpontaneousEpochs, r.Ended))
	})
	row("fenced: lease / evicted (all)", func(r bench.ScaleResult) string {
		return fmt.Sprintf("%d / %d", r.FencedLease, r.FencedEvicted)
	})
	row("1 group's change alone (p50)", func(r bench.ScaleResult) string {
		return if0(len(r.Single) > 0, ms(bench.Median(r.Single)))
	})
	row("beside the idle groups (p50)", func(r bench.ScaleResult) string {
		return if0(len(r.Loaded) > 0, ms(bench.Median(r.Loaded)))
	})
	row("beside / alone", func(r bench.ScaleResult) string { return if0(r.Ratio > 0, fmt.Sprintf("%.2f×", r.Ratio)) })
	row("burst: all groups changed", func(r bench.ScaleResult) string {
		return if0(r.Burst > 0, fmt.Sprintf("%s (%.0f changes/s, %d lost)", secs(r.Burst), r.BurstPerSec, r.BurstLost))
	})
	row("coordinator: lost election (leaderless) / write failures / relists", func(r bench.ScaleResult) string {
		return fmt.Sprintf("%d (%s) / %d / %d", r.LeaderLosses, secs(r.Leaderless), r.WriteFailures, r.Relists)
	})
	// Resources at a moment the size did not reach are "-".
	num := func(n int) string { return if0(n > 0, fmt.Sprint(n)) }
	size := func(n int64) string { return if0(n > 0, formatBytes(uint64(max(n, 0)))) }
	row("goroutines: formed / idle / after", func(r bench.ScaleResult) string {
		return fmt.Sprintf("%s / %s / %d (before %d)", num(r.Formed.Goroutines), num(r.AfterIdl.Goroutines), r.After.Goroutines, r.Before.Goroutines)
	})
	row("fds: formed / idle / after", func(r bench.ScaleResult) string {
		return fmt.Sprintf("%s / %s / %d (before %d)", num(r.Formed.FDs), num(r.AfterIdl.FDs), r.After.FDs, r.Before.FDs)
	})
	row("RSS: formed / peak", func(r bench.ScaleResult) string {
		return fmt.Sprintf("%s / %s", size(r.Formed.RSS), size(r.PeakRSS))
	})
	row("warnings logged", func(r bench.ScaleResult) string {
		n := 0
		for _, c := range r.Warnings {
			n += c
		}
		return fmt.Sprintf("%d (too many requests: %d)", n, r.TooManyRequests)
	})
	tw.Flush()
	for _, r := range rs {
		if r.Outcome != "ok" {
			fmt.Fprintf(w, "\n%d groups: %s\n", r.Groups, r.Outcome)
		}
		if r.FormationError != "" {
			fmt.Fprintf(w, "\n%d groups, formation: %s\n", r.Groups, r.FormationError)
		}
		if r.BurstError != "" {
			fmt.Fprintf(w, "\n%d groups, burst: %s\n", r.Groups, r.BurstError)
		}
		if len(r.SpontaneousReasons) > 0 {
			fmt.Fprintf(w, "\n%d groups, spontaneous epoch changes:\n", r.Groups)
			for _, s := range r.SpontaneousReasons {
				fmt.Fprintf(w, "  %s\n", s)
			}
		}
		if len(r.WarningSamples) > 0 {
			fmt.Fprintf(w, "\n%d groups, warnings (a few distinct):\n", r.Groups)
			for _, s := range r.WarningSamples {
				fmt.Fprintf(w, "  %s\n", s)
			}
		}
	}
}
