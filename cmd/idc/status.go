package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/cobra"
)

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [group...]",
		Short: "Show groups: epoch number and state, members with incarnation, lease time left and channel address, pending acknowledgements",
		Long: `Reads the store once and shows, for each group (every group when none is
named): its epoch number, state and mode, why the epoch was decided, every
domain with its incarnation, its role (member; while quiescing: survivor,
joiner or departed; excluded; registered but not yet in an epoch), the
lease time it has left as the store reports it and where it accepts
channels ("-" if nowhere), and the quiesce and fence acknowledgements the
coordinator still waits for. In fence and both modes a quiescing epoch
waits for the fence acknowledgement of every resource registered or
expected by the group's configuration: those pending are listed, and
those expected but not registered are named as such ('idc fence list'
shows more).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cli, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer cli.Close()
			groups, err := inspect.Status(ctx, cli, proto.Keys{Prefix: g.prefix}, args...)
			if err != nil {
				return err
			}
			return writeGroups(cmd.OutOrStdout(), g, asJSON, groups, writeStatus)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// writeStatus prints one group's status for people.
func writeStatus(w io.Writer, gr inspect.Group) {
	if gr.Epoch == 0 {
		fmt.Fprintf(w, "group %s: no epoch yet (store revision %d)\n", gr.Name, gr.Revision)
	} else {
		fmt.Fprintf(w, "group %s: epoch %d %s, %s mode (store revision %d)\n", gr.Name, gr.Epoch, gr.State, gr.Mode, gr.Revision)
		if gr.State == proto.Quiescing {
			fmt.Fprintf(w, "  quiescing epoch %d\n", gr.PrevEpoch)
		}
		if gr.Reason != "" {
			fmt.Fprintf(w, "  reason: %s\n", gr.Reason)
		}
	}
	if len(gr.Domains) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  DOMAIN\tINCARNATION\tROLE\tLEASE LEFT\tCHANNEL\tNOTE")
		for _, d := range gr.Domains {
			left := "gone"
			if d.LeaseLeftMs >= 0 {
				left = (time.Duration(d.LeaseLeftMs) * time.Millisecond).String()
			}
			var note []string
			if d.Role == inspect.RoleSurvivor {
				note = append(note, map[bool]string{true: "acked", false: "ack pending"}[d.Acked])
			}
			if d.Left {
				note = append(note, "left")
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Incarnation, d.Role, left, channelAddr(d.Addr), strings.Join(note, ", "))
		}
		tw.Flush()
	}
	if len(gr.PendingAcks) > 0 {
		fmt.Fprintf(w, "  pending quiesce acks: %s%s\n", strings.Join(gr.PendingAcks, ", "), pendingFor(gr.WrittenMillis, time.Now()))
	}
	if len(gr.PendingFenceAcks) > 0 {
		fmt.Fprintf(w, "  pending fence acks: %s", strings.Join(gr.PendingFenceAcks, ", "))
		if len(gr.PendingUnregistered) > 0 {
			fmt.Fprintf(w, " (expected, not registered: %s)", strings.Join(gr.PendingUnregistered, ", "))
		}
		fmt.Fprint(w, pendingFor(gr.WrittenMillis, time.Now()))
		fmt.Fprintln(w)
	}
	for _, f := range gr.Faults {
		fmt.Fprintf(w, "  fault report: %s lost %s in epoch %d\n", f.Reporter, f.Suspect, f.Epoch)
	}
}

// pendingFor says for how long something has been pending since the epoch
// record was written at writtenMs (the coordinator's wall clock), or
// nothing if the record does not say. The hosts' clocks may differ: it is
// for people, to tell seconds from hours.
func pendingFor(writtenMs int64, now time.Time) string {
	if writtenMs == 0 {
		return ""
	}
	d := max(now.Sub(time.UnixMilli(writtenMs)), 0)
	return fmt.Sprintf(", pending for %v (since the record was written)", d.Round(100*time.Millisecond))
}

// channelAddr renders a channel address as one table cell: "-" when there
// is none, quoted when it holds anything but printable ASCII without spaces
// (as valid addresses do), so that a stray record cannot break the table.
func channelAddr(addr string) string {
	if addr == "" {
		return "-"
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c <= ' ' || c > '~' {
			return strconv.QuoteToASCII(addr)
		}
	}
	return addr
}
