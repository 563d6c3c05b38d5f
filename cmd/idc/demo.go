package main

import (
	"fmt"
	"os"
	"time"

	"github.com/idc-dev/idc/internal/demo"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/cobra"
)

func newDemoCmd(g *globals) *cobra.Command {
	var (
		basic   bool
		full    bool
		dataDir string
		verbose bool
		cfg     demo.Config
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the storage scenario under a fault schedule and judge it: failover with no stale write",
		Long: `Runs the scenario idc exists for: the embedded store, a shared storage,
two driver domains and a multipath disk, each its own process of this
binary. A client writes unique payloads to the disk over NBD and reads
them back while the nemesis injects a schedule of faults into the drivers
(drawn from --seed, or given with --schedule): kill, pause past the
lease, partitions from the disk, the storage or the store, lease clocks
skewed within and beyond ρ, a storage restart, a coordinator crash in the
middle of an epoch change, and always once the drivers' forwarded writes
held in the network and released after the failover. Then the checker judges the run from the client's history
and the storage's apply log: no write of an ended epoch applied after the
next took over, every block holding its last acknowledged write, reads
linearizable per block (porcupine). The report gives the epochs, each
fault's service gap and time to fence, the stale requests refused by the
storage's guard or landed, and the verdict; a timeline page is written.

--mode fence (the default) fences at the storage: the held writes are
refused. --mode lease runs the storage unguarded, as a resource that
cannot check tokens, which is what leases alone are meant for: the held
writes land over newer data, the checker says so and the demo exits
non-zero. --mode both waits leases out and fences.

Schedule steps are KIND[:TARGET[:DURATION]], comma-separated, KIND one of
kill, pause, partition-disk, partition-storage, partition-store,
hold-writes, restart-storage, crash-coordinator, clock-skew (a driver's
lease clock 0.5% slow, within ρ) and clock-skew-beyond (half speed),
TARGET active (default), standby or a driver's name.

--basic runs the older demo instead: three domains of one group, a fault,
the epochs each sees (no storage).`,
		Example: `  idc demo
  idc demo --seed 7
  idc demo --mode lease --seed 7     # the stale write lands: exits 1
  idc demo --schedule kill,hold-writes,pause:standby
  idc demo --schedules 50 --steps 2  # 50 schedules, how many passed`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if basic {
				o := demo.BasicOptions{Out: cmd.OutOrStdout(), DataDir: dataDir}
				if verbose {
					o.Logger = g.logger()
				}
				return demo.RunBasic(cmd.Context(), o)
			}
			switch {
			case cfg.Steps < 1:
				return fmt.Errorf("%w: --steps %d: want at least 1", proto.ErrConfig, cfg.Steps)
			case cfg.Schedules < 1:
				return fmt.Errorf("%w: --schedules %d: want at least 1", proto.ErrConfig, cfg.Schedules)
			}
			if dataDir != "" {
				return fmt.Errorf("%w: --data-dir is for --basic (the storage demo keeps its files with --keep, in --dir)", proto.ErrConfig)
			}
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("idc demo: finding this binary to run the domains: %w", err)
			}
			cfg.Binary, cfg.Out, cfg.Verbose = bin, cmd.OutOrStdout(), verbose
			// Many schedules: a line each, the whole report of a failed one.
			cfg.Brief = !verbose && !full && (cfg.Schedules > 1 || cfg.Duration > 0)
			sum, err := demo.Run(cmd.Context(), cfg)
			if sum.Dir != "" && len(sum.Results) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "\ntimelines (open in a browser) and files in %s\n", sum.Dir)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&basic, "basic", false, "run the basic demo: three domains, a fault, the epochs (no storage)")
	f.StringVar(&dataDir, "data-dir", "", "with --basic: data directory of the embedded store (default: a temporary one)")
	f.BoolVarP(&verbose, "verbose", "v", false, "also print every process's output (with --basic: the components' logs on stderr)")
	f.StringVar(&cfg.Mode, "mode", demo.ModeFence, "fence (the storage fences), lease (an unguarded storage: leases alone) or both")
	f.Uint64Var(&cfg.Seed, "seed", 1, "draws the fault schedule; schedule i of --schedules uses seed+i")
	f.StringVar(&cfg.Schedule, "schedule", "", "the fault schedule, instead of one drawn from --seed (see above)")
	f.IntVar(&cfg.Steps, "steps", 3, "faults in a drawn schedule")
	f.IntVar(&cfg.Schedules, "schedules", 1, "how many schedules to run, each on a fresh scenario")
	f.DurationVar(&cfg.Duration, "duration", 0, "run schedules until this much time has passed (overrides --schedules)")
	f.StringVar(&cfg.Dir, "dir", "", "where to write the timelines (default: a new temporary directory)")
	f.BoolVar(&cfg.Keep, "keep", false, "keep each run's files (store, storage file, apply log) in --dir")
	f.BoolVar(&full, "full", false, "with several schedules, print each one's progress and report (default: a line each, the whole report of a failed one)")
	f.DurationVar(&cfg.CheckTimeout, "check-timeout", time.Minute, "bound on the linearizability check; running out fails the run")
	return cmd
}
