package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/internal/bench"
	"github.com/spf13/cobra"
)

func init() { benchCommands = append(benchCommands, newBenchChannelCmd) }

func newBenchChannelCmd(*globals) *cobra.Command {
	var (
		o          bench.ChannelOptions
		sizes      string
		transports string
		kinds      string
		levels     string
		asJSON     bool
	)
	cmd := &cobra.Command{
		Use:   "channel",
		Short: "Measure channels (round trips, streams, allocations) beside raw unix and TCP sockets of the same run",
		Long: `Measures each level in turn: two channel drivers connected in one epoch
(level mesh), then two memberships on an embedded store and coordinator
started for this level alone (level api), each transport beside a plain
socket pair. For each message size it measures, --rounds times, raw and idc
interleaved (each idc figure just after the raw one):

  call     a request/response round trip (Call; the handler replies at once)
  message  a message round trip (a sends, b receives and sends it back)
  stream   a sends messages as fast as it may, b receives them

beside a raw round trip (write, read the echo) or a raw stream (a 4-byte
length and the bytes, one write each) on the same transport. It prints the
medians: ns per round trip or MB/s, the ratio to raw, allocations per message
(of the whole process; a round trip carries two messages) and whether the
goals are met (round trip at most 1.25× raw, throughput at least 0.8× raw, at
most 1 allocation per message).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range splitList(sizes) {
				n, err := strconv.Atoi(s)
				if err != nil || n < 1 {
					return fmt.Errorf("--sizes %q: want a comma-separated list of positive byte counts", sizes)
				}
				o.Sizes = append(o.Sizes, n)
			}
			o.Transports, o.Kinds, o.Levels = splitList(transports), splitList(kinds), splitList(levels)
			if err := checkRounds(o.Rounds, o.Duration); err != nil {
				return err
			}
			o.Progress = cmd.ErrOrStderr()
			res, err := bench.Channels(cmd.Context(), o)
			return printResults(cmd.OutOrStdout(), asJSON, res, err, writeChannelTable)
		},
	}
	f := cmd.Flags()
	f.StringVar(&sizes, "sizes", "64,4096,65536", "message sizes in bytes, comma-separated")
	f.StringVar(&transports, "transport", "unix,tcp", "transports, comma-separated: unix, tcp")
	f.StringVar(&kinds, "kinds", "call,message,stream", "measurements, comma-separated: call, message, stream")
	f.StringVar(&levels, "levels", "mesh,api", "levels, comma-separated: mesh (the channel driver), api (idc.Epoch on an embedded store)")
	f.DurationVar(&o.Duration, "duration", 250*time.Millisecond, "how long each figure is measured in a round")
	f.IntVar(&o.Rounds, "rounds", 5, "rounds; the table shows medians")
	f.DurationVar(&o.Heartbeat, "heartbeat", idc.DefaultHeartbeat, "the channels' heartbeat (longer on a busy machine, where a starved process may report its peer lost)")
	f.IntVar(&o.Misses, "heartbeat-misses", idc.DefaultHeartbeatMisses, "heartbeats missed before a peer is reported lost")
	f.BoolVar(&asJSON, "json", false, "print every round's figures as JSON")
	return cmd
}

// splitList splits a comma-separated flag, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// writeChannelTable prints one row per figure: medians, ratio, allocations
// and whether the goals are met.
func writeChannelTable(w io.Writer, res []bench.ChannelResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "transport\tsize\tkind\tlevel\traw\tidc\tunit\tratio\tallocs/msg\tgoal\t")
	for _, r := range res {
		goal := "met"
		if !r.Met() {
			goal = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%.0f\t%.0f\t%s\t%.2f\t%.2f\t%s\t\n", r.Transport, r.Size, r.Kind, r.Level,
			bench.MedianFloat(r.Raw), bench.MedianFloat(r.IDC), r.Unit(), r.Ratio(), bench.MedianFloat(r.Allocs), goal)
	}
	tw.Flush()
}
