package main

import (
	"context"
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

// coordinatorDefault is shown for a configuration field left zero.
const coordinatorDefault = "(coordinator default)"

// setAttempts bounds how often idc group set reads and writes again when
// the configuration changed between its read and its write.
const setAttempts = 10

// testHookBeforeWrite, when set, runs between the read and the
// conditional write of idc group set and idc fence remove: tests change
// the records there to check that the write notices.
var testHookBeforeWrite func()

// errConflict means the records changed under a command between its read
// and its write, too often or at a moment it must not retry.
var errConflict = errors.New("idc: the group's records changed meanwhile")

func newGroupCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group",
		Short: "Show or set a group's configuration in the store: mode, quiesce timeout, expected resources",
		Long: `A group's configuration lives in the store (key <prefix>/groups/<group>/config)
and overrides, for that group, the coordinator's --mode and
--quiesce-timeout; a field left unset takes the coordinator's. It also names
the resources the group expects: in fence and both modes every epoch change
waits for the fence acknowledgement of each resource expected or registered,
even one that has not registered yet or is down.`,
	}
	cmd.AddCommand(newGroupSetCmd(g), newGroupShowCmd(g))
	return cmd
}

// groupSetOptions are the flags of idc group set.
type groupSetOptions struct {
	mode      string
	quiesce   string
	resources []string
	clear     bool
}

func newGroupSetCmd(g *globals) *cobra.Command {
	o := &groupSetOptions{}
	cmd := &cobra.Command{
		Use:   "set GROUP [--mode lease|fence|both|default] [--quiesce-timeout D|default] [--resources r1,r2] [--clear]",
		Short: "Set a group's configuration: only the fields whose flags are given change",
		Long: `Changes the fields of GROUP's configuration whose flags are given and
leaves the others as they are, then prints the configuration that results.
The configuration is read and written back only if nobody changed it in
between (tried again, up to 10 times, if somebody did).

  --mode lease|fence|both   how departed members are handled; "default"
                            unsets it (the coordinator's --mode applies)
  --quiesce-timeout D       how long survivors have to quiesce, a positive
                            whole number of milliseconds ("1500ms", "3s");
                            "default" unsets it
  --resources r1,r2         the resources the group expects, replacing the
                            list; --resources "" empties it
  --clear                   deletes the whole configuration (alone)

Input is checked before anything is written: a bad group or resource name,
an unknown mode, a zero, negative or sub-millisecond timeout are refused and
nothing changes.

A resource dropped from --resources is still waited for while it is
registered: 'idc fence remove' removes a resource gone for good.`,
		Example: `  idc group set storage --mode fence --resources disk1,disk2
  idc group set storage --quiesce-timeout 5s
  idc group set storage --mode default
  idc group set storage --clear`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGroupSet(cmd, g, o, args[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.mode, "mode", "", `lease, fence or both; "default" for the coordinator's`)
	f.StringVar(&o.quiesce, "quiesce-timeout", "", `a positive duration in whole milliseconds; "default" for the coordinator's`)
	f.StringSliceVar(&o.resources, "resources", nil, `the resources the group expects, comma-separated (replaces the list; "" empties it)`)
	f.BoolVar(&o.clear, "clear", false, "delete the group's configuration")
	return cmd
}

// configPatch is what idc group set changes: a field is set when its
// pointer is not nil.
type configPatch struct {
	mode      *proto.Mode
	quiesceMs *int64
	resources *[]string
}

func (p configPatch) apply(c proto.GroupConfig) proto.GroupConfig {
	if p.mode != nil {
		c.Mode = *p.mode
	}
	if p.quiesceMs != nil {
		c.QuiesceTimeoutMillis = *p.quiesceMs
	}
	if p.resources != nil {
		c.Resources = slices.Clone(*p.resources)
	}
	return c
}

// patch checks the flags given and returns what they change.
func (o *groupSetOptions) patch(cmd *cobra.Command) (configPatch, error) {
	var p configPatch
	changed := cmd.Flags().Changed
	if o.clear {
		if changed("mode") || changed("quiesce-timeout") || changed("resources") {
			return p, fmt.Errorf("%w: --clear deletes the configuration: give it alone", proto.ErrConfig)
		}
		return p, nil
	}
	if !changed("mode") && !changed("quiesce-timeout") && !changed("resources") {
		return p, fmt.Errorf("%w: nothing to set: give --mode, --quiesce-timeout, --resources or --clear", proto.ErrConfig)
	}
	if changed("mode") {
		m := proto.Mode(o.mode)
		switch {
		case o.mode == "default":
			m = ""
		case !m.Valid():
			return p, fmt.Errorf("%w: --mode %q: want lease, fence, both or default", proto.ErrConfig, o.mode)
		}
		p.mode = &m
	}
	if changed("quiesce-timeout") {
		var ms int64
		if o.quiesce != "default" {
			d, err := time.ParseDuration(o.quiesce)
			switch {
			case err != nil:
				return p, fmt.Errorf("%w: --quiesce-timeout %q: want a duration (as 1500ms or 3s) or default", proto.ErrConfig, o.quiesce)
			case d <= 0:
				return p, fmt.Errorf("%w: --quiesce-timeout %v must be positive (default unsets it)", proto.ErrConfig, d)
			case d%time.Millisecond != 0:
				return p, fmt.Errorf("%w: --quiesce-timeout %v is not a whole number of milliseconds", proto.ErrConfig, d)
			}
			ms = d.Milliseconds()
		}
		p.quiesceMs = &ms
	}
	if changed("resources") {
		rs := []string{}
		for _, r := range o.resources {
			if err := proto.CheckName("resource", r); err != nil {
				return p, fmt.Errorf("%w: --resources: %w", proto.ErrConfig, err)
			}
			if slices.Contains(rs, r) {
				return p, fmt.Errorf("%w: --resources names %s twice", proto.ErrConfig, r)
			}
			rs = append(rs, r)
		}
		p.resources = &rs
	}
	return p, nil
}

func runGroupSet(cmd *cobra.Command, g *globals, o *groupSetOptions, group string) error {
	if err := proto.CheckName("group", group); err != nil {
		return fmt.Errorf("%w: %w", proto.ErrConfig, err)
	}
	p, err := o.patch(cmd)
	if err != nil {
		return err
	}
	ctx, out := cmd.Context(), cmd.OutOrStdout()
	cli, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	keys := proto.Keys{Prefix: g.prefix}
	key := keys.Config(group)
	if o.clear {
		resp, err := cli.Delete(ctx, key)
		if err != nil {
			return fmt.Errorf("%w: delete %s: %w", store.ErrUnavailable, key, err)
		}
		if resp.Deleted == 0 {
			fmt.Fprintf(out, "group %s had no configuration: nothing deleted\n", group)
		} else {
			fmt.Fprintf(out, "group %s: configuration deleted; the coordinator's defaults apply\n", group)
		}
		return nil
	}
	for range setAttempts {
		resp, err := cli.Txn(ctx).Then(clientv3.OpGet(key), clientv3.OpGet(keys.Resources(group), clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return fmt.Errorf("%w: read %s: %w", store.ErrUnavailable, key, err)
		}
		var cur proto.GroupConfig
		var rev int64
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			rev = kvs[0].ModRevision
			if err := json.Unmarshal(kvs[0].Value, &cur); err != nil {
				return fmt.Errorf("%w: the stored configuration of group %s does not decode (%v); the coordinator ignores it; --clear deletes it", proto.ErrConfig, group, err)
			}
			if err := cur.Validate(); err != nil {
				why := strings.TrimPrefix(err.Error(), proto.ErrConfig.Error()+": ")
				return fmt.Errorf("%w: the stored configuration of group %s is invalid (%s); the coordinator ignores it; --clear deletes it", proto.ErrConfig, group, why)
			}
		}
		var registered []string
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			if pk, ok := keys.Parse(string(kv.Key)); ok && pk.Kind == proto.KindResources {
				registered = append(registered, pk.Name)
			}
		}
		next := p.apply(cur)
		if err := next.Validate(); err != nil {
			return err
		}
		val, err := json.Marshal(next)
		if err != nil {
			return err
		}
		if testHookBeforeWrite != nil {
			testHookBeforeWrite()
		}
		w, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(val))).
			Commit()
		if err != nil {
			return fmt.Errorf("%w: write %s: %w", store.ErrUnavailable, key, err)
		}
		if !w.Succeeded {
			continue // changed since the read: read again
		}
		fmt.Fprintf(out, "group %s: configuration written (store revision %d)\n", group, w.Header.Revision)
		writeConfig(out, next)
		for _, r := range registered {
			if !slices.Contains(next.Resources, r) {
				fmt.Fprintf(out, "  note: %s is registered, so changes still wait for it; 'idc fence remove %s %s' removes a resource gone for good\n", r, group, r)
			}
		}
		if next.Mode.UsesFence() && len(next.Resources) == 0 && len(registered) == 0 {
			fmt.Fprintf(out, "  note: no resource is expected or registered: until one is, departed members are waited out by lease\n")
		}
		return nil
	}
	return fmt.Errorf("%w: the configuration of group %s changed %d times while being set; nothing written", errConflict, group, setAttempts)
}

// writeConfig prints a configuration's fields, "(coordinator default)"
// for those left zero.
func writeConfig(w io.Writer, c proto.GroupConfig) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	configRows(tw, c)
	tw.Flush()
}

// configRows writes a configuration's fields as rows of a table.
func configRows(tw io.Writer, c proto.GroupConfig) {
	mode := string(c.Mode)
	if mode == "" {
		mode = coordinatorDefault
	}
	quiesce := coordinatorDefault
	if c.QuiesceTimeoutMillis > 0 {
		quiesce = (time.Duration(c.QuiesceTimeoutMillis) * time.Millisecond).String()
	}
	fmt.Fprintf(tw, "  mode\t%s\n", mode)
	fmt.Fprintf(tw, "  quiesce timeout\t%s\n", quiesce)
	fmt.Fprintf(tw, "  expected resources\t%s\n", list(c.Resources))
}

// list joins names for people, "(none)" when there are none.
func list(names []string) string {
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(names, ", ")
}

// groupConfigView is one group as idc group show --json prints it.
type groupConfigView struct {
	Group    string `json:"group"`
	Revision int64  `json:"revision"`
	// Configured: the group has a configuration record; ConfigError says
	// why the coordinator ignores it, if it does.
	Configured  bool              `json:"configured"`
	ConfigError string            `json:"config_error,omitempty"`
	Config      proto.GroupConfig `json:"config"`
	// Registered lists the resources registered; Unregistered those the
	// configuration expects that are not.
	Registered   []string `json:"registered"`
	Unregistered []string `json:"expected_unregistered"`
}

func newGroupShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show [GROUP...] [--json]",
		Short: "Show groups' configuration, registered resources and expected resources not registered",
		Long: `Reads the store once and shows, for each group (every group when none is
named): its configuration ("(coordinator default)" for a field left unset;
a configuration the coordinator ignores because it is invalid is said to
be), the resources registered in it, and those its configuration expects
that are not registered: in fence and both modes a change waits for each
of them.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			views, err := groupConfigs(cmd.Context(), g, args)
			if err != nil {
				return err
			}
			return writeGroups(cmd.OutOrStdout(), g, asJSON, views, writeGroupConfig)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// groupConfigs reads the named groups (every group when none is named).
func groupConfigs(ctx context.Context, g *globals, groups []string) ([]groupConfigView, error) {
	cli, err := g.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	fences, err := inspect.Fences(ctx, cli, proto.Keys{Prefix: g.prefix}, groups...)
	if err != nil {
		return nil, err
	}
	out := make([]groupConfigView, 0, len(fences))
	for _, f := range fences {
		v := groupConfigView{
			Group: f.Name, Revision: f.Revision, Configured: f.Configured, ConfigError: f.ConfigError, Config: f.Config,
			Registered: []string{}, Unregistered: []string{},
		}
		for _, r := range f.Resources {
			switch {
			case r.Registered:
				v.Registered = append(v.Registered, r.Name)
			case r.Expected:
				v.Unregistered = append(v.Unregistered, r.Name)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// writeGroupConfig prints one group for people.
func writeGroupConfig(w io.Writer, v groupConfigView) {
	switch {
	case !v.Configured:
		fmt.Fprintf(w, "group %s: no configuration, the coordinator's defaults apply (store revision %d)\n", v.Group, v.Revision)
	case v.ConfigError != "":
		fmt.Fprintf(w, "group %s: configuration ignored by the coordinator, which applies its defaults: %s (store revision %d)\n", v.Group, v.ConfigError, v.Revision)
	default:
		fmt.Fprintf(w, "group %s (store revision %d)\n", v.Group, v.Revision)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	configRows(tw, v.Config)
	fmt.Fprintf(tw, "  registered resources\t%s\n", list(v.Registered))
	fmt.Fprintf(tw, "  expected, not registered\t%s\n", list(v.Unregistered))
	tw.Flush()
}
