// Package bench measures idc against a baseline taken in the same run:
// `idc bench epoch` and BenchmarkEpochChange use it.
//
// The epoch figure is the time from a trigger (a new domain calling Join)
// to every member, the new one included, holding the new connected epoch.
// The baseline is one plain etcd Put and the watch notification of it at
// another client: one store round.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Options configure a run.
type Options struct {
	// Members is the group's size before the trigger.
	Members int
	// Reps is how many epoch changes to time (default 10).
	Reps int
	// BaselineReps is how many Put+watch rounds to time (default 50).
	BaselineReps int
	// DataDir for the embedded store (default: a temporary directory).
	DataDir string
	// SharedClient has every domain use one store client, as domains hosted
	// in one process would; by default each has its own, as separate
	// processes would.
	SharedClient bool
	// Hosts, if positive, spreads the members over that many clients, as
	// processes each hosting a share of the group's domains would (each
	// process watches the record once and writes its members'
	// acknowledgements together: store.Shared); the joiner has a client of
	// its own. It overrides SharedClient.
	Hosts int
	// Progress receives a line per phase (may be nil).
	Progress io.Writer
	// Endpoints, if set, are the client URLs of a running store, with
	// coordinators of its own, to measure instead of a fresh embedded
	// store (idc bench cluster: a cluster beside a single node).
	Endpoints []string
}

// Result holds the figures of one run.
type Result struct {
	Members      int  `json:"members"`
	SharedClient bool `json:"shared_client"`
	Hosts        int  `json:"hosts,omitempty"`
	// Epoch: from the new domain calling Join to every member connected.
	Epoch []time.Duration `json:"epoch_ns"`
	// FromTrigger: from an observer's watch seeing the new member's record
	// (the trigger committed in the store) to every member connected. It
	// leaves out Join's lease grant and registration, and is shorter than
	// the true time from commit by one watch notification.
	FromTrigger []time.Duration `json:"from_trigger_ns"`
	// Baseline: one Put and its watch notification at another client.
	Baseline []time.Duration `json:"baseline_ns"`
	// Floor: the store work of one epoch change done with raw etcd calls
	// on the members' own clients (see floor): the protocol's floor.
	Floor []time.Duration `json:"floor_ns"`
}

// Median returns the median of ds.
func Median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Percentile returns the p-th percentile (0..100) of ds, nearest rank.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Ratio is the median epoch change over the median store round.
func (r Result) Ratio() float64 {
	return float64(Median(r.Epoch)) / float64(Median(r.Baseline))
}

// FloorRatio is the median time from the trigger's commit over the median
// floor: what idc adds to the store work the protocol needs.
func (r Result) FloorRatio() float64 {
	return float64(Median(r.FromTrigger)) / float64(Median(r.Floor))
}

// TriggerRatio is the median time from the trigger's commit over the
// median store round.
func (r Result) TriggerRatio() float64 {
	return float64(Median(r.FromTrigger)) / float64(Median(r.Baseline))
}

func (o Options) say(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// joinParallel is how many members EpochChange joins at once.
const joinParallel = 32

// EpochChange runs the measurement on a fresh embedded store.
func EpochChange(ctx context.Context, o Options) (Result, error) {
	if o.Members < 1 {
		return Result{}, fmt.Errorf("bench: members must be at least 1, got %d", o.Members)
	}
	if o.Reps <= 0 {
		o.Reps = 10
	}
	if o.BaselineReps <= 0 {
		o.BaselineReps = 50
	}
	quiet := slog.New(slog.DiscardHandler)
	endpoints := o.Endpoints
	if len(endpoints) == 0 {
		dir := o.DataDir
		if dir == "" {
			d, err := os.MkdirTemp("", "idc-bench-")
			if err != nil {
				return Result{}, err
			}
			defer os.RemoveAll(d)
			dir = d
		}
		e, err := store.StartEmbedded(ctx, store.EmbedConfig{DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Logger: quiet})
		if err != nil {
			return Result{}, err
		}
		defer e.Close()
		endpoints = e.Endpoints
	}
	dial := func() (*clientv3.Client, error) {
		return store.Dial(ctx, store.DialConfig{Endpoints: endpoints, Logger: quiet})
	}
	ccli, err := dial()
	if err != nil {
		return Result{}, err
	}
	defer ccli.Close()
	if len(o.Endpoints) == 0 {
		cctx, stop := context.WithCancel(ctx)
		var cwg sync.WaitGroup
		cwg.Add(1)
		ccfg := coordinator.DefaultConfig()
		ccfg.Client, ccfg.Logger = ccli, quiet
		go func() { defer cwg.Done(); _ = coordinator.Run(cctx, ccfg) }()
		defer func() { stop(); cwg.Wait() }()
	}

	res := Result{Members: o.Members, SharedClient: o.SharedClient, Hosts: o.Hosts}
	o.say("baseline: %d × (Put + watch notification) on the same store", o.BaselineReps)
	if res.Baseline, err = baseline(ctx, endpoints, o.BaselineReps); err != nil {
		return res, err
	}

	// Each domain has its own client, as separate processes would.
	var clients []*clientv3.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	tr := newEpochs()
	join := func(id string, cli *clientv3.Client) (*idc.Membership, error) {
		cfg := idc.DefaultConfig()
		cfg.Group, cfg.ID, cfg.Client, cfg.Logger = "bench", id, cli, quiet
		// The epoch change alone: at 100 members a full mesh of channels
		// is 4,950 connections heartbeating (idc bench channel measures
		// channels).
		cfg.Listen = ""
		d, err := idc.Join(ctx, cfg)
		if err == nil {
			tr.follow(ctx, d)
		}
		return d, err
	}
	newClient := func() (*clientv3.Client, error) {
		if o.SharedClient && o.Hosts <= 0 {
			return ccli, nil
		}
		cli, err := dial()
		if err == nil {
			clients = append(clients, cli)
		}
		return cli, err
	}
	o.say("joining %d members", o.Members)
	var ds []*idc.Membership
	defer func() {
		var wg sync.WaitGroup
		for _, d := range ds {
			if d != nil {
				wg.Go(func() { d.Close() })
			}
		}
		wg.Wait()
	}()
	var memberClients []*clientv3.Client
	var hosts []*clientv3.Client
	for range o.Hosts {
		cli, err := newClient()
		if err != nil {
			return res, err
		}
		hosts = append(hosts, cli)
	}
	for i := range o.Members {
		var cli *clientv3.Client
		if len(hosts) > 0 {
			cli = hosts[i%len(hosts)]
		} else if cli, err = newClient(); err != nil {
			return res, err
		}
		memberClients = append(memberClients, cli)
	}
	// Joined joinParallel at a time: one after the other, a thousand
	// joins (four store requests each) take minutes on a loaded machine.
	ds = make([]*idc.Membership, o.Members)
	errs := make([]error, o.Members)
	var jwg sync.WaitGroup
	sem := make(chan struct{}, joinParallel)
	for i := range o.Members {
		sem <- struct{}{}
		jwg.Go(func() {
			defer func() { <-sem }()
			ds[i], errs[i] = join(fmt.Sprintf("m%03d", i), memberClients[i])
		})
	}
	jwg.Wait()
	ds = slices.DeleteFunc(ds, func(d *idc.Membership) bool { return d == nil })
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	if err := tr.wait(ctx, ds, o.Members); err != nil {
		return res, err
	}
	o.say("floor: %d × the store work of an epoch change with raw etcd calls on the members' clients", o.Reps)
	jcli, err := newClient()
	if err != nil {
		return res, err
	}
	if res.Floor, err = floor(ctx, ccli, memberClients, jcli, o.Reps); err != nil {
		return res, err
	}
	// The observer: when each new member's record is committed.
	seenAt := map[string]time.Time{}
	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	ocli, err := newClient()
	if err != nil {
		return res, err
	}
	owch := ocli.Watch(octx, proto.Keys{}.Members("bench"), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-owch
	var omu sync.Mutex
	go func() {
		for wr := range owch {
			now := time.Now()
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					omu.Lock()
					seenAt[string(ev.Kv.Key)] = now
					omu.Unlock()
				}
			}
		}
	}()
	o.say("timing %d epoch changes (a new domain joins; until all %d members are connected)", o.Reps, o.Members+1)
	for rep := range o.Reps {
		cli, err := newClient()
		if err != nil {
			return res, err
		}
		start := time.Now()
		d, err := join(fmt.Sprintf("x%03d", rep), cli)
		if err != nil {
			return res, err
		}
		all := append(slices.Clone(ds), d)
		if err := tr.wait(ctx, all, o.Members+1); err != nil {
			return res, err
		}
		end := time.Now()
		res.Epoch = append(res.Epoch, end.Sub(start))
		omu.Lock()
		at, ok := seenAt[proto.Keys{}.Member("bench", d.ID())]
		omu.Unlock()
		if !ok {
			return res, fmt.Errorf("bench: the observer never saw %s register", d.ID())
		}
		res.FromTrigger = append(res.FromTrigger, end.Sub(at))
		if err := d.Leave(ctx); err != nil {
			return res, err
		}
		if err := tr.wait(ctx, ds, o.Members); err != nil {
			return res, err
		}
	}
	return res, nil
}

// epochs tracks the latest connected epoch of every domain, fed by one
// goroutine per domain blocked in Next, so waiting costs no polling. It
// counts the domains holding each (epoch, size), so that a waiter checks
// every domain only once the count says they may all be there: at 1000
// members a check per change would cost the bench itself O(members²) per
// epoch change.
type epochs struct {
	mu      sync.Mutex
	latest  map[*idc.Membership]*idc.Epoch
	size    map[*idc.Membership]int // members of latest, counted once
	holding map[[2]uint64]int       // (epoch, size) → domains whose latest it is
	changed chan struct{}
}

func newEpochs() *epochs {
	return &epochs{latest: map[*idc.Membership]*idc.Epoch{}, size: map[*idc.Membership]int{},
		holding: map[[2]uint64]int{}, changed: make(chan struct{})}
}

// follow records d's epochs until d stops.
func (t *epochs) follow(ctx context.Context, d *idc.Membership) {
	go func() {
		for {
			ep, err := d.Next(ctx)
			if err != nil {
				return
			}
			n := ep.Size()
			t.mu.Lock()
			if old := t.latest[d]; old != nil {
				t.holding[[2]uint64{old.Number(), uint64(t.size[d])}]--
			}
			t.latest[d], t.size[d] = ep, n
			t.holding[[2]uint64{ep.Number(), uint64(n)}]++
			close(t.changed)
			t.changed = make(chan struct{})
			t.mu.Unlock()
		}
	}()
}

// wait waits until every domain of ds holds the same connected epoch, of
// n members.
func (t *epochs) wait(ctx context.Context, ds []*idc.Membership, n int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		t.mu.Lock()
		ok := false
		if ep := t.latest[ds[0]]; ep != nil && t.holding[[2]uint64{ep.Number(), uint64(n)}] >= len(ds) {
			num := ep.Number()
			ok = true
			for _, d := range ds {
				ep := t.latest[d]
				if ep == nil || ep.Context().Err() != nil || t.size[d] != n || ep.Number() != num {
					ok = false
					break
				}
			}
		}
		ch := t.changed
		t.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: members not connected with %d: %w", n, ctx.Err())
		case <-ch:
		case <-time.After(50 * time.Millisecond): // an epoch may end without a new one yet
		}
	}
}

// baseline times a plain Put and the watch notification of it at another
// client.
func baseline(ctx context.Context, endpoints []string, reps int) ([]time.Duration, error) {
	quiet := slog.New(slog.DiscardHandler)
	w, err := store.Dial(ctx, store.DialConfig{Endpoints: endpoints, Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer w.Close()
	p, err := store.Dial(ctx, store.DialConfig{Endpoints: endpoints, Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const key = "/bench/baseline"
	wch := w.Watch(wctx, key)
	// Wait until the watch is established.
	if _, err := p.Put(ctx, key, "warm"); err != nil {
		return nil, err
	}
	<-wch
	var out []time.Duration
	for i := range reps {
		start := time.Now()
		if _, err := p.Put(ctx, key, fmt.Sprint(i)); err != nil {
			return nil, err
		}
		select {
		case <-wch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}
