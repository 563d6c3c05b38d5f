package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/internal/bench"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchDiskCmd) }

func newBenchDiskCmd(*globals) *cobra.Command {
	var (
		o      bench.DiskOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "disk",
		Short: "Measure the multipath disk beside qemu-nbd with fio, and its failovers",
		Long: `Starts the storage scenario as processes of this binary (an embedded store,
the storage, two driver domains and the multipath disk, in a temporary
directory) and, beside it, qemu-nbd serving a plain raw file of the same
size. It fills both disks with sequential writes first (reads are then of
written blocks on both: qemu-nbd would answer never-written ones with
holes, carrying no data). Then, --rounds times, it runs each fio job (its nbd engine, --iodepth
requests in flight, --runtime seconds after a second of ramp) on qemu-nbd
and then on the idc disk:

  randwrite-4k   4 KiB random writes
  read-64k       64 KiB sequential reads

and prints the medians of IOPS and mean completion latency, and the ratio
of the disk's IOPS to qemu-nbd's (goal: at least 0.7).

Then, --failovers times for each fault, it starts a fresh scenario, writes
through the disk, and injects the fault into the active driver: killed
(SIGKILL), stopped (SIGSTOP past its lease, with forwarded writes held on
their way), cut off (every connection held by proxies, then released). It
checks every failover (no client error, every acknowledged write in place,
no stale write applied, held writes refused) and prints, per fault, the
median and maximum of the service gap (from the last write acknowledged
through the failed driver to the first through the other; goals: 50 ms
killed, 150 ms silent) and of the time from the fault to the fence at the
storage. Then, --lease-failovers times, a killed driver in lease mode: the
coordinator waits the departed driver's lease out, so the goal is the
bound detection + TTL·(1+ρ) + margin + a few store rounds.

It needs fio and qemu-nbd (Debian: fio, qemu-utils).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkRounds(o.Rounds, o.Runtime); err != nil {
				return err
			}
			if o.Runtime < time.Second || o.Runtime%time.Second != 0 {
				return fmt.Errorf("--runtime %v: want whole seconds", o.Runtime)
			}
			if o.Failovers < 0 || o.IODepth < 1 {
				return fmt.Errorf("--failovers %d and --iodepth %d: want at least 0 and 1", o.Failovers, o.IODepth)
			}
			if _, err := parseBytes(o.Size); err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			o.Binary, o.Progress = exe, cmd.ErrOrStderr()
			o.NoFailover = o.Failovers == 0
			res, err := bench.Disk(cmd.Context(), o)
			return printResults(cmd.OutOrStdout(), asJSON, res, err, writeDiskTable)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Rounds, "rounds", 3, "rounds of each fio job on each server; the table shows medians")
	f.DurationVar(&o.Runtime, "runtime", 5*time.Second, "how long each fio job runs (whole seconds)")
	f.IntVar(&o.IODepth, "iodepth", 16, "fio's requests in flight")
	f.StringVar(&o.Size, "size", "256M", "the disk's and the baseline file's size")
	f.IntVar(&o.Failovers, "failovers", 5, "failovers measured per fault in fence mode (0: no failovers at all)")
	f.IntVar(&o.LeaseFailovers, "lease-failovers", 3, "failovers of a killed driver measured in lease mode")
	f.BoolVar(&asJSON, "json", false, "print every round's figures as JSON")
	return cmd
}

// writeDiskTable prints the throughput figures, then the failovers'.
func writeDiskTable(w io.Writer, res []bench.DiskResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fio job\tqemu-nbd IOPS\tidc disk IOPS\tratio\tqemu-nbd µs\tidc disk µs\tgoal\t")
	for _, r := range res {
		if strings.HasPrefix(r.Kind, "failover-") {
			continue
		}
		goal := "met"
		if r.Ratio() < bench.GoalDiskRatio {
			goal = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2f\t%.0f\t%.0f\t%s\t\n", r.Kind, bench.MedianFloat(r.BaselineIOPS), bench.MedianFloat(r.DiskIOPS),
			r.Ratio(), bench.MedianFloat(r.BaselineLat), bench.MedianFloat(r.DiskLat), goal)
	}
	tw.Flush()
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e6) }
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := false
	for _, r := range res {
		if !strings.HasPrefix(r.Kind, "failover-") || len(r.Failovers) == 0 {
			continue
		}
		if !header {
			fmt.Fprintln(w)
			fmt.Fprintln(tw, "failover\truns\tgap p50 ms\tgap max ms\tto fence p50 ms\tto fence max ms\theld writes refused\tgoal\t")
			header = true
		}
		var gaps, fences []time.Duration
		refused := 0
		for _, f := range r.Failovers {
			gaps, fences = append(gaps, f.Gap), append(fences, f.ToFence)
			refused += f.Refused
		}
		goalGap := 150 * time.Millisecond
		switch r.Kind {
		case "failover-killed":
			goalGap = 50 * time.Millisecond
		case "failover-killed-lease":
			goalGap = bench.LeaseBound().Round(time.Millisecond)
		}
		goal := "met"
		if bench.Percentile(gaps, 100) > goalGap {
			goal = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s ≤ %v\t\n", strings.TrimPrefix(r.Kind, "failover-"), len(r.Failovers),
			ms(bench.Median(gaps)), ms(bench.Percentile(gaps, 100)), ms(bench.Median(fences)), ms(bench.Percentile(fences, 100)), refused, goal, goalGap)
	}
	tw.Flush()
}
