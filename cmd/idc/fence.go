package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// errNotConfirmed is returned by idc fence remove when the removal was not
// confirmed.
var errNotConfirmed = errors.New("idc: not confirmed: nothing removed")

// pendingNote says, in every fence command's help, how long a pending
// fence has been pending is told.
const pendingNote = `How long a fence has been pending is told from when the coordinator
wrote the epoch record, by the coordinator's wall clock (the record
carries it), against this command's: hosts' clocks may differ, so it is
for telling seconds from hours. The store revision at which the record was
written is shown too. 'idc watch' shows when an epoch and each fence
acknowledgement happen.`

func newFenceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fence",
		Short: "Show resources' fence acknowledgements; remove a resource gone for good",
		Long: `Each guarded resource registers in its groups (without a lease: a resource
that is down stays registered) and acknowledges the fence of every new
epoch. In fence and both modes the coordinator connects an epoch only once
every resource registered or expected by the group's configuration has
acknowledged its fence, so a resource that is down holds every change back,
by design. 'idc fence list' shows which resource a change waits for;
'idc fence remove' is the deliberate way to remove a resource gone for good.`,
	}
	cmd.AddCommand(newFenceListCmd(g), newFenceShowCmd(g), newFenceRemoveCmd(g))
	return cmd
}

func newFenceListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [GROUP...] [--json]",
		Short: "Per group and resource: the current epoch, the highest epoch acknowledged, whether the current fence is acknowledged or pending",
		Long: `Reads the store once and shows, for each group (every group when none is
named), its current epoch (number and state) and mode, and for each
resource registered or expected by the group's configuration: whether it
is registered, whether it is expected, the highest epoch whose fence it
acknowledged (among the acknowledgements in the store: the coordinator
deletes those of epochs before the connected one) and whether the fence of
the current epoch is acknowledged or pending. A pending fence that holds a
quiescing epoch back (fence and both modes) says so.

` + pendingNote,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cli, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer cli.Close()
			groups, err := inspect.Fences(ctx, cli, proto.Keys{Prefix: g.prefix}, args...)
			if err != nil {
				return err
			}
			return writeGroups(cmd.OutOrStdout(), g, asJSON, groups, writeFences)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newFenceShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show GROUP RESOURCE [--json]",
		Short: "One resource's fence: as idc fence list, with every fence acknowledgement present",
		Long: `Shows what 'idc fence list' shows for one resource of a group, with the
store revision at which it registered and the epochs of every fence
acknowledgement of it still in the store. A resource that is neither
registered nor expected is shown if acknowledgements of it are left (one
just removed, say), and is an error otherwise.

` + pendingNote,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkNames(args[0], args[1]); err != nil {
				return err
			}
			ctx := cmd.Context()
			cli, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer cli.Close()
			gf, err := inspect.Fence(ctx, cli, proto.Keys{Prefix: g.prefix}, args[0], args[1])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), gf)
			}
			writeFence(cmd.OutOrStdout(), gf)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newFenceRemoveCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "remove GROUP RESOURCE [--yes]",
		Short: "Remove a resource gone for good from a group: its registration and its expectation, in one transaction",
		Long: `The deliberate way to remove a resource that is gone for good. In one
transaction it deletes the resource's registration in GROUP and removes it
from the resources the group's configuration expects. It first prints
what it will do and where the resource stands, and asks for confirmation
(a line "y" or "yes" on standard input) unless --yes is given; anything
else, an empty input included, removes nothing and exits with an error.
If the registration or the configuration changed between the read and the
removal, nothing is removed: run it again to see the new state.

Changes stop waiting for the resource: an epoch held back by its pending
fence connects without it (once nothing else holds it back). A resource
removed while it still runs is no longer fenced: the coordinator connects
epochs without waiting for its fence to hold, so requests of an old epoch
may still reach its storage after a new one connected. Remove only a
resource that is gone for good or whose storage is detached. A fence
driver started again for the resource registers it again.

Fence acknowledgements of the resource are left in the store; the
coordinator deletes them with those of other resources as epochs connect.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFenceRemove(cmd, g, yes, args[0], args[1])
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "remove without asking for confirmation")
	return cmd
}

// checkNames refuses a group or resource name idc cannot use.
func checkNames(group, resource string) error {
	if err := proto.CheckName("group", group); err != nil {
		return fmt.Errorf("%w: %w", proto.ErrConfig, err)
	}
	if err := proto.CheckName("resource", resource); err != nil {
		return fmt.Errorf("%w: %w", proto.ErrConfig, err)
	}
	return nil
}

func runFenceRemove(cmd *cobra.Command, g *globals, yes bool, group, resource string) error {
	if err := checkNames(group, resource); err != nil {
		return err
	}
	ctx, out := cmd.Context(), cmd.OutOrStdout()
	cli, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	keys := proto.Keys{Prefix: g.prefix}
	gf, err := inspect.Fence(ctx, cli, keys, group, resource)
	if err != nil {
		return err
	}
	r := gf.Resources[0]
	if !r.Registered && !r.Expected {
		return fmt.Errorf("%w: %s is neither registered in group %s nor expected by its configuration: nothing to remove", inspect.ErrNoResource, resource, group)
	}
	regKey, cfgKey := keys.Resource(group, resource), keys.Config(group)
	next := gf.Config
	next.Resources = slices.DeleteFunc(slices.Clone(next.Resources), func(s string) bool { return s == resource })

	fmt.Fprintf(out, "resource %s of group %s (store revision %d):\n", resource, group, gf.Revision)
	if gf.Epoch > 0 {
		fmt.Fprintf(out, "  epoch %d %s, %s: its fence is %s\n", gf.Epoch, gf.State, modeText(gf), fenceText(gf, r))
	}
	if r.Fence == inspect.FenceAcked {
		fmt.Fprintf(out, "  it acknowledged the fence of the current epoch %d: it was running when that epoch was decided; be sure it is gone\n", gf.Epoch)
	}
	fmt.Fprintf(out, "This will, in one transaction:\n")
	if r.Registered {
		fmt.Fprintf(out, "  - delete its registration (%s)\n", regKey)
	}
	if r.Expected {
		fmt.Fprintf(out, "  - remove it from the group's expected resources: %s -> %s\n", list(gf.Config.Resources), list(next.Resources))
	}
	fmt.Fprintf(out, "Changes then stop waiting for its fence. If %s still runs, it is no longer fenced:\nremove only a resource that is gone for good or whose storage is detached.\n", resource)

	if !yes {
		fmt.Fprintf(out, "Remove %s from group %s? [y/N] ", resource, group)
		line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if !strings.HasSuffix(line, "\n") {
			fmt.Fprintln(out) // the input ended without a line: end the prompt's
		}
		if answer := strings.ToLower(strings.TrimSpace(line)); answer != "y" && answer != "yes" {
			fmt.Fprintln(out, "nothing removed")
			return errNotConfirmed
		}
	}

	if testHookBeforeWrite != nil {
		testHookBeforeWrite()
	}
	txn := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(regKey), "=", r.RegisteredRevision),
		clientv3.Compare(clientv3.ModRevision(cfgKey), "=", gf.ConfigRevision),
	)
	var ops []clientv3.Op
	if r.Registered {
		ops = append(ops, clientv3.OpDelete(regKey))
	}
	if r.Expected {
		val, err := json.Marshal(next)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(cfgKey, string(val)))
	}
	resp, err := txn.Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("%w: remove %s from group %s: %w", store.ErrUnavailable, resource, group, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %s's registration or group %s's configuration changed since they were read: nothing removed; run again to see the new state", errConflict, resource, group)
	}
	fmt.Fprintf(out, "removed %s from group %s (store revision %d)\n", resource, group, resp.Header.Revision)
	return nil
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeGroups prints one entry per group: as indented JSON, or each with
// write, a blank line between them ("no groups under PREFIX" if none).
func writeGroups[T any](w io.Writer, g *globals, asJSON bool, groups []T, write func(io.Writer, T)) error {
	if asJSON {
		return writeJSON(w, groups)
	}
	if len(groups) == 0 {
		fmt.Fprintf(w, "no groups under %s\n", g.prefix)
	}
	for i, gr := range groups {
		if i > 0 {
			fmt.Fprintln(w)
		}
		write(w, gr)
	}
	return nil
}

// modeText describes a group's mode and where it comes from.
func modeText(gf inspect.GroupFences) string {
	switch {
	case gf.Mode == "":
		return "the coordinator's default mode"
	case gf.ModeConfigured:
		return fmt.Sprintf("%s mode (group configuration)", gf.Mode)
	default:
		return fmt.Sprintf("%s mode (coordinator default, as the epoch record says)", gf.Mode)
	}
}

// writtenAgo says how long ago the epoch record was written, by the
// coordinator's wall clock against this host's, or nothing if the record
// does not say.
func writtenAgo(writtenMs int64) string {
	if writtenMs == 0 {
		return ""
	}
	return fmt.Sprintf(", %v ago", max(time.Since(time.UnixMilli(writtenMs)), 0).Round(100*time.Millisecond))
}

// epochText describes a group's current epoch, its mode, and the
// revision at which its record was written.
func epochText(gf inspect.GroupFences) string {
	if gf.Epoch == 0 {
		return fmt.Sprintf("no epoch yet, %s", modeText(gf))
	}
	return fmt.Sprintf("epoch %d %s, %s; epoch record written at store revision %d%s", gf.Epoch, gf.State, modeText(gf), gf.EpochRevision, writtenAgo(gf.WrittenMillis))
}

// fenceText describes a resource's fence of the current epoch.
func fenceText(gf inspect.GroupFences, r inspect.ResourceFence) string {
	switch {
	case r.Fence == "":
		return "-"
	case r.Fence == inspect.FenceAcked:
		return "acked"
	case r.HoldsBack:
		return fmt.Sprintf("pending: epoch %d waits for it", gf.Epoch)
	case !r.Registered && !r.Expected:
		return "pending (neither registered nor expected: not waited for)"
	case !gf.Mode.UsesFence():
		return "pending (not waited for in this mode)"
	default:
		return "pending (the epoch is connected: not waited for)"
	}
}

// yesNo renders a flag for a table.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// epochNumber renders an epoch number, "-" for none.
func epochNumber(n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

// writeFences prints one group's resources and their fences for people.
func writeFences(w io.Writer, gf inspect.GroupFences) {
	fmt.Fprintf(w, "group %s: %s (store revision %d)\n", gf.Name, epochText(gf), gf.Revision)
	if gf.ConfigError != "" {
		fmt.Fprintf(w, "  configuration ignored by the coordinator: %s\n", gf.ConfigError)
	}
	if len(gf.Resources) == 0 {
		fmt.Fprintln(w, "  no resources registered or expected")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  RESOURCE\tREGISTERED\tEXPECTED\tACKED\tFENCE")
	for _, r := range gf.Resources {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.Name, yesNo(r.Registered), yesNo(r.Expected), epochNumber(r.Acked), fenceText(gf, r))
	}
	tw.Flush()
}

// writeFence prints one resource's fence for people.
func writeFence(w io.Writer, gf inspect.GroupFences) {
	r := gf.Resources[0]
	fmt.Fprintf(w, "resource %s of group %s (store revision %d)\n", r.Name, gf.Name, gf.Revision)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	registered := yesNo(r.Registered)
	if r.Registered {
		registered += fmt.Sprintf(" (record written at store revision %d)", r.RegisteredRevision)
	}
	fmt.Fprintf(tw, "  registered\t%s\n", registered)
	fmt.Fprintf(tw, "  expected\t%s\n", yesNo(r.Expected))
	if gf.Epoch == 0 {
		fmt.Fprintf(tw, "  epoch\tnone yet, %s\n", modeText(gf))
	} else {
		fmt.Fprintf(tw, "  epoch\t%d %s, %s; epoch record written at store revision %d%s\n", gf.Epoch, gf.State, modeText(gf), gf.EpochRevision, writtenAgo(gf.WrittenMillis))
	}
	fmt.Fprintf(tw, "  fence\t%s\n", fenceText(gf, r))
	fmt.Fprintf(tw, "  highest acked\t%s\n", epochNumber(r.Acked))
	acks := make([]string, len(r.AckEpochs))
	for i, e := range r.AckEpochs {
		acks[i] = fmt.Sprint(e)
	}
	fmt.Fprintf(tw, "  fence acks present\t%s\n", list(acks))
	tw.Flush()
	if gf.ConfigError != "" {
		fmt.Fprintf(w, "  configuration ignored by the coordinator: %s\n", gf.ConfigError)
	}
}
