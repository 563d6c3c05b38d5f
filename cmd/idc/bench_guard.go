package main

import (
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/internal/bench"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchGuardCmd) }

func newBenchGuardCmd(*globals) *cobra.Command {
	var (
		o      bench.GuardOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "guard",
		Short: "Measure a resource's guard (check-and-apply per request, fences) beside the same apply path without it",
		Long: `Measures package guard in this process. The apply path is a write of 4 KiB
into an in-memory block store of 64 MiB, each applier writing its own blocks in
turn. For one applier and for GOMAXPROCS concurrent ones it measures, --rounds
times, the write alone (the baseline) and just after it the write through the
guard:

  apply         Guard.AdmitEncoded (the request's token decoded and
                admitted), Begin, the write, End (one reused ticket per
                applier): a resource that queues what it admits
  apply-func    AdmitEncoded and Guard.Apply around the write (a func
                value built once)
  apply-direct  Guard.BeginEncoded (decoded, checked and begun in one
                step), the write, End: a resource that applies a request
                as soon as it arrives

and prints the medians: ns per request (with several appliers, the wall time
over all their requests), the time the guard adds (the median over the rounds
of guard minus baseline of the same round), allocations per request of the
whole process, and whether the goals are met (less than 100 ns added, no
allocation, judged on the printed figures).

Then it times fences that raise the floor by one epoch, from the call of
Guard.Fence to its return (when the fence may be acknowledged): with nothing
in flight, with 64 requests of the old epoch admitted (the fence aborts them)
and with 64 applying (a goroutine ends them as soon as it sees the floor
risen; the fence waits for them). It prints the median and 99th percentile
over every fence of every round, and allocations per fence.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkRounds(o.Rounds, o.Duration); err != nil {
				return err
			}
			o.Progress = cmd.ErrOrStderr()
			res, err := bench.Guard(cmd.Context(), o)
			return printResults(cmd.OutOrStdout(), asJSON, res, err, writeGuardTable)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Rounds, "rounds", 5, "rounds; the table shows medians")
	f.DurationVar(&o.Duration, "duration", 200*time.Millisecond, "how long each figure is measured in a round")
	f.BoolVar(&asJSON, "json", false, "print every round's figures as JSON")
	return cmd
}

// writeGuardTable prints the apply figures, one row per kind and
// concurrency with whether the goals are met, then the fence figures.
func writeGuardTable(w io.Writer, res []bench.GuardResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tappliers\tbaseline ns/op\tguard ns/op\tadded ns\tallocs/op\tgoal\t")
	for _, r := range res {
		if r.Kind == bench.GuardFence {
			continue
		}
		goal := "met"
		if !r.Met() {
			goal = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.0f\t%.2f\t%s\t\n", r.Kind, r.Concurrency, bench.MedianFloat(r.Baseline),
			bench.MedianFloat(r.Guard), r.Added(), bench.MedianFloat(r.Allocs), goal)
	}
	tw.Flush()
	fmt.Fprintln(w)
	us := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e3) }
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fence, in flight\tfences\tp50 µs\tp99 µs\tallocs/fence\t")
	for _, r := range res {
		if r.Kind != bench.GuardFence {
			continue
		}
		flight := fmt.Sprint(r.InFlight)
		switch {
		case r.InFlight > 0 && r.Applying:
			flight += " applying"
		case r.InFlight > 0:
			flight += " pending"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%.0f\t\n", flight, r.Fences, us(r.P50), us(r.P99), math.Round(bench.MedianFloat(r.Allocs)))
	}
	tw.Flush()
}
