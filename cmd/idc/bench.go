package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/internal/bench"
	"github.com/idc-dev/idc/store"
	"github.com/spf13/cobra"
)

// checkRounds checks the --rounds and --duration of a benchmark measured
// in rounds.
func checkRounds(rounds int, d time.Duration) error {
	if rounds < 1 {
		return fmt.Errorf("--rounds %d: want at least 1", rounds)
	}
	if d <= 0 {
		return fmt.Errorf("--duration %v: want a positive duration", d)
	}
	return nil
}

// printResults prints a benchmark's results, as indented JSON or with
// table, unless the benchmark failed (err).
func printResults[T any](w io.Writer, asJSON bool, res T, err error, table func(io.Writer, T)) error {
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(w, res)
	}
	table(w, res)
	return nil
}

// benchCommands are further `idc bench` subcommands, each added by the
// file that defines it (in an init function), so that benchmarks stay in
// files of their own.
var benchCommands []func(*globals) *cobra.Command

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure idc against a baseline taken in the same run"}
	var (
		members string
		reps    int
		hosts   int
		asJSON  bool
	)
	epoch := &cobra.Command{
		Use:   "epoch",
		Short: "Time an epoch change (a domain joins, until every member is connected) beside a plain etcd Put + watch notification",
		Long: `Starts a fresh embedded store and coordinator for each group size, joins the
members (each with its own client, or spread over --hosts clients, as
processes each hosting a share of the domains), then times --reps epoch
changes: a new
domain calls Join, until every member holds the new connected epoch. In the
same run it times plain etcd Puts and their watch notification at another
client (one store round) and reports the ratio of the medians.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var sizes []int
			for _, s := range strings.Split(members, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || n < 1 {
					return fmt.Errorf("--members %q: want a comma-separated list of positive counts", members)
				}
				sizes = append(sizes, n)
			}
			if reps < 1 {
				return fmt.Errorf("--reps %d: want at least 1", reps)
			}
			if hosts < 0 {
				return fmt.Errorf("--hosts %d: want 0 (a client per member) or more", hosts)
			}
			var results []bench.Result
			for _, n := range sizes {
				fmt.Fprintf(cmd.ErrOrStderr(), "== %d members\n", n)
				res, err := bench.EpochChange(cmd.Context(), bench.Options{Members: n, Reps: reps, Hosts: hosts, Progress: cmd.ErrOrStderr()})
				if err != nil {
					return err
				}
				results = append(results, res)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(results)
			}
			writeBenchTable(cmd.OutOrStdout(), results)
			return nil
		},
	}
	epoch.Flags().StringVar(&members, "members", "3,10,100", "group sizes to measure, comma-separated")
	epoch.Flags().IntVar(&reps, "reps", 20, "epoch changes timed per group size")
	epoch.Flags().IntVar(&hosts, "hosts", 0, "spread the members over this many clients (processes hosting a share of the domains each; 0: a client per member)")
	epoch.Flags().BoolVar(&asJSON, "json", false, "print the raw samples as JSON")
	cmd.AddCommand(epoch, newSoakCmd())
	for _, sub := range benchCommands {
		cmd.AddCommand(sub(g))
	}
	return cmd
}

func newSoakCmd() *cobra.Command {
	var (
		o    bench.SoakOptions
		seed uint64
	)
	soak := &cobra.Command{
		Use:   "soak",
		Short: "Churn a group on the embedded store for a while and print the store's size, revisions, goroutines and RSS as it goes",
		Long: `Starts a fresh embedded store (with the auto-compaction and defragmentation
policy of 'idc store'), a coordinator and --members domains in one group, each
with its own client, and churns the group for --duration: domains leave
gracefully, crash (Close) or report a fault against a peer, and rejoin with a
new incarnation. Every --every it prints the group's epoch, the store's
database size and size in use, its revision and compacted revision, and the
goroutines and RSS of this process (the store runs in it); at the end a
summary. Ctrl-C stops it early, with the summary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case o.Duration <= 0:
				return fmt.Errorf("--duration %v: want a positive duration", o.Duration)
			case o.Members < 2:
				return fmt.Errorf("--members %d: want at least 2", o.Members)
			case o.Every <= 0:
				return fmt.Errorf("--every %v: want a positive duration", o.Every)
			case o.Churn <= 0:
				return fmt.Errorf("--churn %v: want a positive duration", o.Churn)
			case o.CompactionRetention != 0 && o.CompactionRetention < store.MinCompactionRetention:
				return fmt.Errorf("--compaction-retention %v: want at least %v", o.CompactionRetention, store.MinCompactionRetention)
			}
			o.Seed, o.Out = seed, cmd.OutOrStdout()
			_, err := bench.Soak(cmd.Context(), o)
			if errors.Is(err, context.Canceled) {
				return nil // interrupted: the summary is printed
			}
			return err
		},
	}
	f := soak.Flags()
	f.DurationVar(&o.Duration, "duration", 0, "how long to churn (required), e.g. 10m")
	f.IntVar(&o.Members, "members", 20, "domains in the group")
	f.DurationVar(&o.Every, "every", time.Minute, "time between two lines of figures")
	f.DurationVar(&o.Churn, "churn", time.Second, "mean time between two churn actions (leave, crash or fault report)")
	f.DurationVar(&o.CompactionRetention, "compaction-retention", store.DefaultCompactionRetention, "the embedded store's history retention (periodic auto-compaction)")
	f.Uint64Var(&seed, "seed", 0, "seed of the churn (0: random, printed)")
	_ = soak.MarkFlagRequired("duration")
	return soak
}

// writeBenchTable prints medians, p90s and ratios, one row per group size.
func writeBenchTable(w io.Writer, results []bench.Result) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "members\thosts\tepoch ms (p50)\tp90\tfrom trigger ms (p50)\tstore round ms (p50)\tfloor ms (p50)\tepoch / round\tfrom trigger / round\tfrom trigger / floor\t")
	for _, r := range results {
		h := "each"
		if r.Hosts > 0 {
			h = strconv.Itoa(r.Hosts)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f×\t%.1f×\t%.1f×\t\n", r.Members, h,
			ms(bench.Median(r.Epoch)), ms(bench.Percentile(r.Epoch, 90)), ms(bench.Median(r.FromTrigger)),
			ms(bench.Median(r.Baseline)), ms(bench.Median(r.Floor)), r.Ratio(), r.TriggerRatio(), r.FloorRatio())
	}
	tw.Flush()
}
