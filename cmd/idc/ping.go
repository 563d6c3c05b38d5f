package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// pingOptions are the flags of idc ping.
type pingOptions struct {
	count        int
	interval     time.Duration
	id           string
	listen       string
	wait         time.Duration
	replyTimeout time.Duration
}

func newPingCmd(g *globals) *cobra.Command {
	o := &pingOptions{}
	cmd := &cobra.Command{
		Use:   "ping GROUP PEER",
		Short: "Join GROUP for a moment and ping PEER over its channel: round-trip times",
		Long: `Joins GROUP as a temporary member, waits for its first connected epoch
that contains PEER, pings PEER over the channel of that epoch --count times,
--interval apart, prints the round trip of each ping and a summary, and
leaves the group gracefully. A first ping, not counted, waits for the
channel to open.

PEER's channel driver answers a ping by itself, at once: not its
application's Handler, and not as an operation of the epoch there. So a
ping measures the channel (sockets and drivers), not the application.

Joining and leaving are epoch changes: the group changes its epoch twice,
once to admit this member and once when it leaves, and every member
quiesces each time (its operations in flight end before the epoch
connects). idc ping is a diagnostic tool, not a monitor: do not run it in
a loop against a group doing real work.

Every member opens a channel to the temporary member: the one whose ID
sorts first dials the other. --listen (default tcp://127.0.0.1:0, a free
port on loopback) must therefore be an address every member of the group
can reach; for members on other hosts, give one they can dial (as
--listen tcp://10.0.0.5:0). A member that cannot reach it reports it lost,
which costs the group a further epoch change. The temporary member has the
lowest priority, so when it and a member report each other, it is the one
dropped.

Exits with an error if PEER is not a member of GROUP, if no epoch with
PEER connects within --wait, or if no ping was answered.`,
		Example: `  idc ping g b
  idc ping g b --count 20 --interval 50ms
  idc ping g b --listen tcp://10.0.0.5:0 --etcd-endpoints http://10.0.0.1:2379`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPing(cmd.Context(), g, o, cmd.OutOrStdout(), args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.count, "count", 5, "how many pings to send")
	f.DurationVar(&o.interval, "interval", 200*time.Millisecond, "time between pings")
	f.StringVar(&o.id, "id", "", `domain ID of the temporary member (default "ping-" and random hex)`)
	f.StringVar(&o.listen, "listen", idc.DefaultListen, "where the temporary member accepts channels: every member of the group must be able to reach it")
	f.DurationVar(&o.wait, "wait", 30*time.Second, "how long to wait for a connected epoch that contains PEER")
	f.DurationVar(&o.replyTimeout, "reply-timeout", time.Second, "how long to wait for each reply")
	return cmd
}

func (o *pingOptions) validate() error {
	switch {
	case o.count < 1:
		return fmt.Errorf("%w: --count %d must be at least 1", proto.ErrConfig, o.count)
	case o.interval < 0:
		return fmt.Errorf("%w: --interval %v must not be negative", proto.ErrConfig, o.interval)
	case o.wait <= 0:
		return fmt.Errorf("%w: --wait %v must be positive", proto.ErrConfig, o.wait)
	case o.replyTimeout <= 0:
		return fmt.Errorf("%w: --reply-timeout %v must be positive", proto.ErrConfig, o.replyTimeout)
	case o.listen == "":
		return fmt.Errorf("%w: --listen is empty: a member without channels cannot ping", proto.ErrConfig)
	}
	return nil
}

func runPing(ctx context.Context, g *globals, o *pingOptions, out io.Writer, group, peer string) error {
	if err := o.validate(); err != nil {
		return err
	}
	id := o.id
	if id == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		id = "ping-" + hex.EncodeToString(b[:])
	}
	for _, n := range []struct{ what, name string }{{"group", group}, {"peer", peer}, {"--id", id}} {
		if err := proto.CheckName(n.what, n.name); err != nil {
			return fmt.Errorf("%w: %w", proto.ErrConfig, err)
		}
	}
	if peer == id {
		return fmt.Errorf("%w: PEER %s is the temporary member's own ID", proto.ErrConfig, peer)
	}
	cli, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()

	// Refuse before joining, so that a mistyped PEER costs the group no
	// epoch change.
	if err := checkPeer(ctx, cli, g.prefix, group, peer, id); err != nil {
		return err
	}

	cfg := idc.DefaultConfig()
	cfg.Group, cfg.ID, cfg.Client, cfg.Prefix = group, id, cli, g.prefix
	cfg.Listen, cfg.Logger = o.listen, g.logger()
	cfg.Priority = math.MinInt32 // dropped first when it and a member report each other
	joinCtx, cancel := context.WithTimeout(ctx, o.wait)
	defer cancel()
	d, err := idc.Join(joinCtx, cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	fmt.Fprintf(out, "ping: joined group %s as %s (channels at %s); waiting for an epoch with %s\n", group, id, d.Addr(), peer)

	// Whatever happens from here on (an interrupt included), leave
	// gracefully: the group then does not wait the lease out.
	err = pingPeer(ctx, d, o, out, peer)
	leaveCtx, cancelLeave := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancelLeave()
	if lerr := d.Leave(leaveCtx); lerr != nil {
		return errors.Join(err, fmt.Errorf("leave group %s: %w", group, lerr))
	}
	fmt.Fprintf(out, "ping: left group %s\n", group)
	return err
}

// checkPeer refuses a PEER that is not a live member of the group (or
// about to be one), or that accepts no channels, and an ID already live
// in the group.
func checkPeer(ctx context.Context, cli *clientv3.Client, prefix, group, peer, id string) error {
	groups, err := inspect.Status(ctx, cli, proto.Keys{Prefix: prefix}, group)
	if err != nil {
		return err
	}
	var members []string
	found, addr := false, ""
	for _, dm := range groups[0].Domains {
		if !dm.Live || dm.Role == inspect.RoleExcluded || dm.Role == inspect.RoleDeparted {
			continue
		}
		members = append(members, dm.ID)
		switch dm.ID {
		case peer:
			found, addr = true, dm.Addr
		case id:
			return fmt.Errorf("%w: %s is already a live member of group %s: choose another --id", idc.ErrAlreadyLive, id, group)
		}
	}
	switch {
	case !found:
		slices.Sort(members)
		list := strings.Join(members, ", ")
		if list == "" {
			list = "none"
		}
		return fmt.Errorf("%w: %s is not a member of group %s (members: %s)", idc.ErrNotMember, peer, group, list)
	case addr == "":
		return fmt.Errorf("%w: %s accepts no channels (it joined without a listen address)", idc.ErrNoChannel, peer)
	}
	return nil
}

// pingPeer waits for an epoch with peer and pings it, printing each round
// trip and a summary. A ping whose epoch ended moves on to the next epoch
// with peer.
func pingPeer(ctx context.Context, d *idc.Membership, o *pingOptions, out io.Writer, peer string) error {
	ep, err := epochWith(ctx, d, peer, o.wait)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "ping: %s in epoch %d of group %s (%d members)\n", peer, ep.Number(), d.Group(), len(ep.Members()))
	// A first ping, not counted, waits for the channel to open, so that
	// the first round trip counted does not include its setup.
	wctx, cancel := context.WithTimeout(ctx, o.wait)
	_, _ = ep.Ping(wctx, peer)
	cancel()
	var rtts []time.Duration
	sent := 0
	for i := range o.count {
		if i > 0 && o.interval > 0 {
			select {
			case <-time.After(o.interval):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		if ep.Err() != nil { // the epoch changed: ping in the next one
			if ep, err = epochWith(ctx, d, peer, o.wait); err != nil {
				summary(out, peer, sent, rtts)
				return err
			}
		}
		pctx, cancel := context.WithTimeout(ctx, o.replyTimeout)
		rtt, err := ep.Ping(pctx, peer)
		cancel()
		sent++
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no reply within %v", o.replyTimeout)
			}
			fmt.Fprintf(out, "ping: no reply from %s (epoch %d): %v\n", peer, ep.Number(), err)
			continue
		}
		rtts = append(rtts, rtt)
		fmt.Fprintf(out, "ping: reply from %s (epoch %d): %v\n", peer, ep.Number(), roundRTT(rtt))
	}
	summary(out, peer, sent, rtts)
	switch {
	case len(rtts) > 0:
		return nil
	case sent == 0:
		return ctx.Err()
	}
	return fmt.Errorf("%w: no reply from %s to %d pings", idc.ErrPeerLost, peer, sent)
}

// epochWith waits up to wait for the next connected epoch of d (the
// first, the first time) that contains peer.
func epochWith(ctx context.Context, d *idc.Membership, peer string, wait time.Duration) (*idc.Epoch, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last *idc.Epoch
	for {
		ep, err := d.Next(wctx)
		switch {
		case err == nil:
		case ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded):
			return nil, err
		case last != nil:
			return nil, fmt.Errorf("%w: %s is not in epoch %d of group %s (members: %s), and no epoch with it connected within --wait %v",
				idc.ErrNotMember, peer, last.Number(), d.Group(), memberIDs(last), wait)
		default:
			return nil, fmt.Errorf("idc: no epoch of group %s connected within --wait %v (is a coordinator running?)", d.Group(), wait)
		}
		for _, m := range ep.Members() {
			if m.ID == peer {
				return ep, nil
			}
		}
		last = ep
	}
}

func memberIDs(ep *idc.Epoch) string {
	var ids []string
	for _, m := range ep.Members() {
		ids = append(ids, m.ID)
	}
	return strings.Join(ids, ", ")
}

// summary prints how many pings were answered and the round trips'
// minimum, median and maximum.
func summary(out io.Writer, peer string, sent int, rtts []time.Duration) {
	fmt.Fprintf(out, "--- %s: %d sent, %d replies, %d lost", peer, sent, len(rtts), sent-len(rtts))
	if len(rtts) == 0 {
		fmt.Fprintln(out)
		return
	}
	s := slices.Clone(rtts)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	fmt.Fprintf(out, "; round trip min/median/max = %v/%v/%v\n", roundRTT(s[0]), roundRTT(med), roundRTT(s[len(s)-1]))
}

// roundRTT rounds a round trip for people: to the microsecond below a
// millisecond, to 10 µs below a second.
func roundRTT(d time.Duration) time.Duration {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond)
	case d < time.Second:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
