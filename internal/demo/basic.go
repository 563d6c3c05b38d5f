package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BasicOptions configure the basic demo.
type BasicOptions struct {
	// Out receives the timeline.
	Out io.Writer
	// Logger receives the components' logs (default: discarded).
	Logger *slog.Logger
	// DataDir for the embedded store (default: a temporary directory,
	// removed at the end).
	DataDir string
}

// printer writes timestamped lines.
type printer struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func (p *printer) say(who, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "[%6.2fs] %-8s %s\n", time.Since(p.start).Seconds(), who, fmt.Sprintf(format, args...))
}

// RunBasic runs the basic demo (`idc demo --basic`): it starts an
// embedded store and a coordinator, joins three domains, injects a fault
// and prints the epochs each domain sees, showing the quiesce barrier and
// self-fencing at work. It runs to its end (a few seconds) or until ctx ends.
func RunBasic(ctx context.Context, o BasicOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &printer{out: o.Out, start: time.Now()}
	dir := o.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "idc-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Logger: log,
	})
	if err != nil {
		return err
	}
	defer e.Close()
	p.say("store", "embedded etcd ready at %s", strings.Join(e.Endpoints, ","))
	cli, err := store.Dial(ctx, store.DialConfig{Endpoints: e.Endpoints, Logger: log})
	if err != nil {
		return err
	}
	defer cli.Close()

	cctx, stopCoord := context.WithCancel(ctx)
	coordDone := make(chan struct{})
	go func() {
		defer close(coordDone)
		ccfg := coordinator.DefaultConfig()
		ccfg.Client, ccfg.Logger, ccfg.QuiesceTimeout, ccfg.LeaseMargin = cli, log, 3*time.Second, 200*time.Millisecond
		_ = coordinator.Run(cctx, ccfg)
	}()
	defer func() { stopCoord(); <-coordDone }()
	p.say("store", "coordinator started (lease mode: departed members are waited out)")

	const group = "demo"
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go watchEpochs(wctx, p, cli, group)
	cfg := func(id string) idc.Config {
		cfg := idc.DefaultConfig()
		cfg.Group, cfg.ID, cfg.Client, cfg.Logger = group, id, cli, log
		cfg.LeaseTTL, cfg.RenewInterval = 2*time.Second, 400*time.Millisecond
		return cfg
	}
	var wg sync.WaitGroup
	domains := map[string]*idc.Membership{}
	slow := make(chan struct{}) // closed to start b's slow operation
	for _, id := range []string{"a", "b", "c"} {
		d, err := idc.Join(ctx, cfg(id))
		if err != nil {
			return err
		}
		domains[id] = d
		p.say(id, "joined group %q as incarnation %x", group, d.Incarnation())
		var s <-chan struct{}
		if id == "b" {
			s = slow
		}
		wg.Add(1)
		go func() { defer wg.Done(); follow(ctx, p, d, s) }()
		// One join at a time, so that the epochs (and their numbers) are
		// the same in every run.
		if err := waitMembers(ctx, domains["a"], len(domains)); err != nil {
			return err
		}
	}
	time.Sleep(300 * time.Millisecond)

	p.say("nemesis", "b starts an operation that ignores its context for 500 ms")
	close(slow)
	time.Sleep(50 * time.Millisecond)
	p.say("nemesis", "a reports that it lost c")
	if err := domains["a"].ReportFault(ctx, "c"); err != nil {
		return err
	}
	<-domains["c"].Done()
	if err := waitMembers(ctx, domains["a"], 2); err != nil {
		return err
	}

	p.say("c", "rejoins under a new incarnation")
	c2, err := idc.Join(ctx, cfg("c"))
	if err != nil {
		return err
	}
	domains["c"] = c2
	p.say("c", "joined group %q as incarnation %x", group, c2.Incarnation())
	wg.Add(1)
	go func() { defer wg.Done(); follow(ctx, p, c2, nil) }()
	if err := waitMembers(ctx, domains["a"], 3); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)

	p.say("b", "leaves gracefully (no lease wait needed)")
	if err := domains["b"].Leave(ctx); err != nil {
		return err
	}
	if err := waitMembers(ctx, domains["a"], 2); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	for _, id := range []string{"a", "c"} {
		domains[id].Close()
	}
	wg.Wait()
	p.say("demo", "done")
	return nil
}

// watchEpochs prints every epoch record the coordinator writes.
func watchEpochs(ctx context.Context, p *printer, cli *clientv3.Client, group string) {
	for wr := range cli.Watch(ctx, proto.Keys{}.Epoch(group)) {
		for _, ev := range wr.Events {
			var rec proto.EpochRecord
			if json.Unmarshal(ev.Kv.Value, &rec) != nil {
				continue
			}
			line := fmt.Sprintf("epoch %d %-9s members %v", rec.Number, rec.State, proto.IDs(rec.Members))
			if rec.State == proto.Quiescing {
				line += fmt.Sprintf("  (%s; survivors must quiesce: %v; departed: %v)", rec.Reason, proto.IDs(rec.Survivors()), proto.IDs(rec.Departed()))
			} else if rec.Number == 1 {
				line += fmt.Sprintf("  (%s)", rec.Reason)
			}
			p.say("store", "%s", line)
		}
	}
}

// waitMembers waits until d's current epoch has n members.
func waitMembers(ctx context.Context, d *idc.Membership, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if ep := d.Current(); ep != nil && len(ep.Members()) == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: waiting for an epoch of %d members: %w", n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// follow prints the epochs d sees and runs a small workload in each.
func follow(ctx context.Context, p *printer, d *idc.Membership, slow <-chan struct{}) {
	who := d.ID()
	for {
		ep, err := d.Next(ctx)
		if err != nil {
			switch {
			case ctx.Err() != nil:
			case errorsIs(err, idc.ErrFenced):
				p.say(who, "FENCED: %v", err)
			default:
				p.say(who, "stopped: %v", err)
			}
			return
		}
		p.say(who, "connected   epoch %d  members %v", ep.Number(), proto.IDs(ep.Members()))
		if work(p, who, ep, slow) {
			slow = nil
		}
	}
}

// work runs operations in ep until it is disconnected. With slow set, the
// first operation after slow closes runs 500 ms regardless of the epoch's
// context, to show that quiesce waits for it. It reports whether it ran the
// slow operation.
func work(p *printer, who string, ep *idc.Epoch, slow <-chan struct{}) (ranSlow bool) {
	for {
		op, err := ep.Begin()
		if err != nil {
			p.say(who, "disconnected epoch %d: %v", ep.Number(), cause(ep))
			return ranSlow
		}
		select {
		case <-slow:
			slow, ranSlow = nil, true
			p.say(who, "slow operation in epoch %d started", ep.Number())
			time.Sleep(500 * time.Millisecond)
			state := "still connected"
			if ep.Context().Err() != nil {
				state = "disconnected meanwhile: this ends its quiesce, the next epoch can connect"
			}
			p.say(who, "slow operation in epoch %d ended (%s)", ep.Number(), state)
		case <-ep.Context().Done():
		case <-time.After(20 * time.Millisecond):
		}
		op.End()
	}
}

func cause(ep *idc.Epoch) error {
	if c := context.Cause(ep.Context()); c != nil {
		return c
	}
	return ep.Err()
}
