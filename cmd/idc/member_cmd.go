package main

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/idc-dev/idc"
	"github.com/spf13/cobra"
)

// newMemberCmd is idc member: a domain that only joins a group and stays,
// for end-to-end tests that need members as processes on other hosts.
func newMemberCmd(g *globals) *cobra.Command {
	o := &memberOptions{}
	cmd := &cobra.Command{
		Use:    "member",
		Short:  "Join a group as a domain and stay until interrupted (tests)",
		Hidden: true,
		Long: `Joins --group as --id and stays a member until interrupted, then leaves
gracefully. It does no work of its own: it prints each epoch it is
connected in ("ID: epoch N connected: a, b"), when that epoch ends here and
why ("ID: epoch N ended: cause", a self-fence naming the lapsed lease),
and joins again as a new incarnation when its membership ends.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMember(cmd.Context(), g, o, cmd.OutOrStdout())
		},
	}
	o.register(cmd.Flags(), "")
	return cmd
}

func runMember(ctx context.Context, g *globals, o *memberOptions, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	base := g.logger()
	cli, err := g.dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer cli.Close()
	cfg := o.config(g)
	cfg.Client, cfg.Logger = cli, base
	o.withClock(ctx, &cfg, base)
	if err := cfg.Validate(); err != nil {
		return err
	}
	var mu sync.Mutex // one line at a time
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
	}
	say("%s: joining group %s", o.id, o.group)
	return followEpochs(ctx, cfg, out, base.With("group", o.group, "domain", o.id), func(ep *idc.Epoch, m *idc.Membership) {
		n := ep.Number()
		say("%s: epoch %d connected: %s (incarnation %d)", o.id, n, memberList(ep), m.Incarnation())
		go func() {
			<-ep.Context().Done()
			say("%s: epoch %d ended: %v", o.id, n, context.Cause(ep.Context()))
		}()
	})
}
