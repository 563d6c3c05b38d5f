package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/pflag"
)

// memberOptions are the flags of a command that runs a domain as a member
// of a group (idc disk, idc driver).
type memberOptions struct {
	group           string
	id              string
	listen          string
	advertise       string
	heartbeat       time.Duration
	heartbeatMisses int
	leaseTTL        time.Duration
	priority        int
	clockRate       float64
	clockRateFile   string
}

// register adds the flags; defID is the default of --id ("" makes it
// required).
func (o *memberOptions) register(f *pflag.FlagSet, defID string) {
	def := idc.DefaultConfig()
	f.StringVar(&o.group, "group", "", "the group to join; required")
	idHelp := "the domain's ID in the group"
	if defID == "" {
		idHelp += "; required"
	}
	f.StringVar(&o.id, "id", defID, idHelp)
	f.StringVar(&o.listen, "listen", def.Listen, "where the domain accepts channels from the other members: tcp://HOST:PORT or unix:///PATH; every member must reach it")
	f.StringVar(&o.advertise, "advertise", "", "the channel address the other members dial, if not --listen's (a listener on 0.0.0.0, a proxy)")
	f.DurationVar(&o.heartbeat, "heartbeat", def.Heartbeat, "heartbeat interval of each channel")
	f.IntVar(&o.heartbeatMisses, "heartbeat-misses", def.HeartbeatMisses, "heartbeats missed before a silent peer is reported")
	f.DurationVar(&o.leaseTTL, "lease-ttl", def.LeaseTTL, "the membership's lease TTL")
	f.IntVar(&o.priority, "priority", 0, "the member's priority when it and another report each other (the higher stays)")
	f.Float64Var(&o.clockRate, "clock-rate", 1, "fault injection: the member's clock runs at this rate of real time; leases are safe only within 1±ρ (the coordinator's --rho)")
	f.StringVar(&o.clockRateFile, "clock-rate-file", "", "fault injection: on SIGUSR1, set the member's clock rate to the number in this file (the nemesis's clock skew)")
}

func (o *memberOptions) validate() error {
	switch {
	case o.group == "":
		return fmt.Errorf("%w: --group is required", proto.ErrConfig)
	case o.id == "":
		return fmt.Errorf("%w: --id is required", proto.ErrConfig)
	case o.listen == "":
		return fmt.Errorf("%w: --listen is empty: the domains of the storage scenario talk over channels", proto.ErrConfig)
	case !(o.clockRate > 0) || o.clockRate > 100:
		return fmt.Errorf("%w: --clock-rate %v: want a positive rate, at most 100", proto.ErrConfig, o.clockRate)
	}
	if _, _, err := splitListen(o.listen); err != nil {
		return fmt.Errorf("%w: --listen: %w", proto.ErrConfig, err)
	}
	if o.advertise != "" {
		if _, _, err := splitListen(o.advertise); err != nil {
			return fmt.Errorf("%w: --advertise: %w", proto.ErrConfig, err)
		}
	}
	if err := proto.CheckName("group", o.group); err != nil {
		return fmt.Errorf("%w: --group: %w", proto.ErrConfig, err)
	}
	if err := proto.CheckName("id", o.id); err != nil {
		return fmt.Errorf("%w: --id: %w", proto.ErrConfig, err)
	}
	cfg := o.config(&globals{prefix: "/idc"})
	cfg.Endpoints = []string{"http://127.0.0.1:2379"}
	if err := cfg.Validate(); err != nil {
		return err
	}
	return nil
}

// config returns the membership's configuration; the caller sets its
// store client and logger.
func (o *memberOptions) config(g *globals) idc.Config {
	cfg := idc.DefaultConfig()
	cfg.Group, cfg.ID, cfg.Prefix = o.group, o.id, g.prefix
	cfg.Listen, cfg.Advertise = o.listen, o.advertise
	cfg.Heartbeat, cfg.HeartbeatMisses = o.heartbeat, o.heartbeatMisses
	cfg.LeaseTTL, cfg.Priority = o.leaseTTL, o.priority
	if o.clockRate != 1 {
		cfg.Clock = clock.Scaled(clock.System(), o.clockRate)
	}
	return cfg
}

// withClock gives cfg the member's clock and, with --clock-rate-file,
// sets its rate from the file on every SIGUSR1 until ctx ends.
func (o *memberOptions) withClock(ctx context.Context, cfg *idc.Config, log *slog.Logger) {
	if o.clockRateFile == "" {
		return
	}
	c := clock.Scaled(clock.System(), o.clockRate)
	cfg.Clock = c
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
			}
			b, err := os.ReadFile(o.clockRateFile)
			var rate float64
			if err == nil {
				rate, err = strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
			}
			if err != nil || !(rate > 0) || rate > 100 {
				log.Warn("clock rate not changed: --clock-rate-file holds no rate in (0, 100]", "file", o.clockRateFile, "err", err)
				continue
			}
			c.SetRate(rate)
			log.Warn("clock rate changed (fault injection)", "rate", rate)
		}
	}()
}
