package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/internal/bench"
	"github.com/spf13/cobra"
)

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure idc against a baseline taken in the same run"}
	var (
		members string
		reps    int
		asJSON  bool
	)
	epoch := &cobra.Command{
		Use:   "epoch",
		Short: "Time an epoch change (a domain joins, until every member is connected) beside a plain etcd Put + watch notification",
		Long: `Starts a fresh embedded store and coordinator for each group size, joins the
members (each with its own client), then times --reps epoch changes: a new
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
			var results []bench.Result
			for _, n := range sizes {
				fmt.Fprintf(cmd.ErrOrStderr(), "== %d members\n", n)
				res, err := bench.EpochChange(cmd.Context(), bench.Options{Members: n, Reps: reps, Progress: cmd.ErrOrStderr()})
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
	epoch.Flags().BoolVar(&asJSON, "json", false, "print the raw samples as JSON")
	cmd.AddCommand(epoch)
	return cmd
}

// writeBenchTable prints medians, p90s and ratios, one row per group size.
func writeBenchTable(w io.Writer, results []bench.Result) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "members\tepoch ms (p50)\tp90\tfrom trigger ms (p50)\tstore round ms (p50)\tfloor ms (p50)\tepoch / round\tfrom trigger / round\tfrom trigger / floor\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%.1f×\t%.1f×\t%.1f×\t\n", r.Members,
			ms(bench.Median(r.Epoch)), ms(bench.Percentile(r.Epoch, 90)), ms(bench.Median(r.FromTrigger)),
			ms(bench.Median(r.Baseline)), ms(bench.Median(r.Floor)), r.Ratio(), r.TriggerRatio(), r.FloorRatio())
	}
	tw.Flush()
}
