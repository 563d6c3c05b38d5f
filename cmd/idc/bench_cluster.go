package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/internal/bench"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchClusterCmd) }

func newBenchClusterCmd(*globals) *cobra.Command {
	var (
		o      bench.ClusterOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Measure the epoch change on a 3-member etcd cluster beside a single node, and the stall of a leader kill",
		Long: `Runs the stores as processes of this binary on loopback, one after the
other: a single-node 'idc store', then three 'idc store --initial-cluster'
members, each with its coordinator candidate, all with the same raft timing
(--heartbeat-interval, --election-timeout). On each it measures what
'idc bench epoch' does (a group of --members domains in this process, each
with its own client; --reps times a new domain joins, timed until every
member is connected; and one Put with its watch notification, the store
round) and prints both side by side.

Then it kills the cluster's leader (SIGKILL) --kills times, each time with
a domain joining at once, and prints how long until a write is
acknowledged again (writes one after another through every member, each
sent again after half an election timeout) and how long the epoch change
took from the kill. etcd replaces a lost leader within [1, 2) election
timeouts after its followers last heard it; the killed member is restarted
on its data dir between kills.

The hosts of a real cluster add their network's round trips to every
store round; on one machine the members share its disk and CPU.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case o.Members < 1 || o.Reps < 1 || o.Kills < 1:
				return fmt.Errorf("%w: --members %d, --reps %d, --kills %d: want at least 1 each", proto.ErrConfig, o.Members, o.Reps, o.Kills)
			case o.ElectionTimeout < 5*o.HeartbeatInterval || o.HeartbeatInterval < time.Millisecond:
				return fmt.Errorf("%w: --election-timeout %v: want at least 5 heartbeat intervals of %v (at least 1ms)", proto.ErrConfig, o.ElectionTimeout, o.HeartbeatInterval)
			}
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			o.Binary, o.Progress = bin, cmd.ErrOrStderr()
			res, err := bench.ClusterFigures(cmd.Context(), o)
			return printResults(cmd.OutOrStdout(), asJSON, res, err, writeClusterTable)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Members, "members", 3, "the group's size before each timed change")
	f.IntVar(&o.Reps, "reps", 10, "epoch changes timed on each store")
	f.IntVar(&o.Kills, "kills", 5, "times the cluster's leader is killed")
	f.DurationVar(&o.HeartbeatInterval, "heartbeat-interval", 100*time.Millisecond, "every store's raft heartbeat interval")
	f.DurationVar(&o.ElectionTimeout, "election-timeout", time.Second, "every store's raft election timeout")
	f.BoolVar(&asJSON, "json", false, "print the raw samples as JSON")
	return cmd
}

func writeClusterTable(w io.Writer, r bench.ClusterResult) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "store\tepoch change p50\tp90\tfrom trigger p50\tstore round p50\tratio\n")
	for _, row := range []struct {
		name string
		r    bench.Result
	}{{"single node", r.Single}, {"3-member cluster", r.Cluster}} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1f×\n", row.name, ms(bench.Median(row.r.Epoch)), ms(bench.Percentile(row.r.Epoch, 90)),
			ms(bench.Median(row.r.FromTrigger)), ms(bench.Median(row.r.Baseline)), row.r.Ratio())
	}
	tw.Flush()
	fmt.Fprintf(w, "\nleader killed %d times (election timeout %v):\n", len(r.Stall), r.ElectionTimeout)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\tp50\tmax\n")
	fmt.Fprintf(tw, "writes acknowledged again after\t%s\t%s\n", ms(bench.Median(r.Stall)), ms(bench.Percentile(r.Stall, 100)))
	fmt.Fprintf(tw, "epoch change triggered at the kill\t%s\t%s\n", ms(bench.Median(r.KillEpoch)), ms(bench.Percentile(r.KillEpoch, 100)))
	tw.Flush()
}
