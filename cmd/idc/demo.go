package main

import (
	"github.com/idc-dev/idc/internal/demo"
	"github.com/spf13/cobra"
)

func newDemoCmd(g *globals) *cobra.Command {
	var dataDir string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start an embedded store, join three domains, inject a fault and print the epochs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := demo.Options{Out: cmd.OutOrStdout(), DataDir: dataDir}
			if verbose {
				o.Logger = g.logger()
			}
			return demo.Run(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory of the embedded store (default: a temporary one)")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also print the components' logs on stderr")
	return cmd
}
