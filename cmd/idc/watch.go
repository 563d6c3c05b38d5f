package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"context"
	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/cobra"
)

func newWatchCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "watch [group...]",
		Short: "Stream epoch events as they happen",
		Long: `Prints the current epoch of each group (every group when none is named),
then every change as the store sees it: epochs written by the coordinator,
domains joining and going, quiesce acknowledgements, fault reports, graceful
leaves and fence acknowledgements. With --json, one JSON object per line.
Runs until interrupted.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cli, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer cli.Close()
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			err = inspect.Watch(ctx, cli, proto.Keys{Prefix: g.prefix}, args, func(e inspect.Event) error {
				if asJSON {
					return enc.Encode(e)
				}
				_, err := fmt.Fprintln(out, e)
				return err
			})
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per event and line")
	return cmd
}
