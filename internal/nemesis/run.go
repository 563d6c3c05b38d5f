package nemesis

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/idc-dev/idc/internal/scenario"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Phase is where a fault is when an Event is logged.
type Phase string

// The phases of a fault.
const (
	Injected  Phase = "injected"
	Healed    Phase = "healed"
	Recovered Phase = "recovered" // every driver back in the disk's epoch, writes acknowledged again
)

// Event is a fault's injection, healing or recovery, with its time.
type Event struct {
	At     time.Time
	Step   int // the step's index in the schedule
	Kind   Kind
	Target string // the driver's name
	Phase  Phase
	Detail string
}

// String formats the event for a log line.
func (e Event) String() string {
	s := fmt.Sprintf("step %d %s %s: %s", e.Step+1, e.Kind, e.Target, e.Phase)
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// Config configures Run.
type Config struct {
	// Scenario is the running scenario, with every driver proxied
	// (scenario.Config.Proxied); required.
	Scenario *scenario.Scenario
	// Workload writes through the scenario's disk while Run runs;
	// required (HoldWrites waits for it to write every block anew, and
	// recovery for it to be acknowledged again).
	Workload *scenario.Workload
	// Log receives every event as it happens; may be nil.
	Log func(Event)
	// Recover bounds the wait for the group to recover after a fault
	// healed, and for a HoldWrites failover; default 30s.
	Recover time.Duration
	// Quiet is the time between a recovery and the next fault; default
	// 200ms.
	Quiet time.Duration
}

// Run injects the schedule's faults one after the other, each once the
// group has recovered from the one before, and returns the events; it
// stops at the first error (a fault that could not be injected, or a
// group that did not recover in time).
func Run(ctx context.Context, cfg Config, sched Schedule) ([]Event, error) {
	if cfg.Scenario == nil || cfg.Workload == nil {
		return nil, fmt.Errorf("nemesis: Scenario and Workload are required")
	}
	if cfg.Recover == 0 {
		cfg.Recover = 30 * time.Second
	}
	if cfg.Quiet == 0 {
		cfg.Quiet = 200 * time.Millisecond
	}
	r := &runner{cfg: cfg, s: cfg.Scenario, sc: cfg.Scenario.Config()}
	defer func() {
		if r.cli != nil {
			r.cli.Close()
		}
	}()
	for i, st := range sched {
		if err := r.step(ctx, i, st); err != nil {
			return r.events, fmt.Errorf("nemesis: step %d (%s:%s): %w", i+1, st.Kind, st.Target, err)
		}
		if err := sleep(ctx, cfg.Quiet); err != nil {
			return r.events, err
		}
	}
	return r.events, nil
}

type runner struct {
	cfg    Config
	s      *scenario.Scenario
	sc     scenario.Config
	events []Event
	cli    *clientv3.Client // the store, once a fault needs it
}

func (r *runner) log(i int, st Step, target string, ph Phase, detail string) {
	e := Event{At: time.Now(), Step: i, Kind: st.Kind, Target: target, Phase: ph, Detail: detail}
	r.events = append(r.events, e)
	if r.cfg.Log != nil {
		r.cfg.Log(e)
	}
}

// target resolves a step's target to a driver's name.
func (r *runner) target(ctx context.Context, t string) (string, error) {
	if t == Storage {
		return t, nil
	}
	if t != Active && t != Standby {
		if !slices.Contains(r.sc.Drivers, t) {
			return "", fmt.Errorf("no driver %q (drivers: %s)", t, strings.Join(r.sc.Drivers, ", "))
		}
		return t, nil
	}
	active, err := r.s.Path(ctx)
	if err != nil {
		return "", err
	}
	if t == Active {
		return active, nil
	}
	for _, d := range r.sc.Drivers {
		if d != active {
			return d, nil
		}
	}
	return "", fmt.Errorf("no standby driver")
}

func (r *runner) step(ctx context.Context, i int, st Step) error {
	if st.Kind == RestartStorage {
		st.Target = Storage
	}
	name, err := r.target(ctx, st.Target)
	if err != nil {
		return err
	}
	d := st.For
	if d == 0 {
		d = Defaults(st.Kind, r.sc.LeaseTTL)
	}
	px := r.s.Proxies(name)
	if px == nil && (st.Kind == PartitionDisk || st.Kind == PartitionStorage || st.Kind == PartitionStore || st.Kind == HoldWrites || st.Kind == ClockSkew || st.Kind == ClockSkewBeyond) {
		return fmt.Errorf("driver %s is not proxied", name)
	}
	switch st.Kind {
	case Kill:
		r.s.Proc(name).Kill()
		r.log(i, st, name, Injected, "SIGKILL")
		if err := sleep(ctx, d); err != nil {
			return err
		}
		if err := r.s.StartDriver(ctx, name); err != nil {
			return err
		}
		r.log(i, st, name, Healed, "started again")
	case Pause:
		p := r.s.Proc(name)
		if err := p.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		r.log(i, st, name, Injected, "SIGSTOP for "+d.String())
		err := sleep(ctx, d)
		if err2 := p.Signal(syscall.SIGCONT); err == nil {
			err = err2
		}
		if err != nil {
			return err
		}
		r.log(i, st, name, Healed, "SIGCONT")
	case PartitionDisk, PartitionStorage, PartitionStore:
		p := map[Kind]*scenario.Proxy{PartitionDisk: px.Channel, PartitionStorage: px.Storage, PartitionStore: px.Store}[st.Kind]
		p.Hold()
		r.log(i, st, name, Injected, "held for "+d.String())
		err := sleep(ctx, d)
		held := p.HeldBytes()
		p.Release()
		if err != nil {
			return err
		}
		r.log(i, st, name, Healed, fmt.Sprintf("released %d bytes", held))
	case RestartStorage:
		r.s.Proc("storage").Kill()
		r.log(i, st, name, Injected, "SIGKILL")
		if err := sleep(ctx, d); err != nil {
			return err
		}
		if err := r.s.RestartStorage(ctx); err != nil {
			return err
		}
		r.log(i, st, name, Healed, "started again")
	case ClockSkew, ClockSkewBeyond:
		rate := SkewWithin
		if st.Kind == ClockSkewBeyond {
			rate = SkewBeyond
		}
		if err := r.s.SetClockRate(name, rate); err != nil {
			return err
		}
		px.Store.Hold()
		r.log(i, st, name, Injected, fmt.Sprintf("its clock at %v of real time, cut from the store for %v", rate, d))
		err := sleep(ctx, d)
		px.Store.Release()
		if err2 := r.s.SetClockRate(name, 1); err == nil {
			err = err2
		}
		if err != nil {
			return err
		}
		r.log(i, st, name, Healed, "released, its clock true again")
	case CrashCoordinator:
		if name, err = r.crashCoordinator(ctx, i, st, name, d); err != nil {
			return err
		}
	case HoldWrites:
		if err := r.holdWrites(ctx, i, st, name, px.Storage); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown fault %q", st.Kind)
	}
	return r.recovered(ctx, i, st, name)
}

// settle is how long a fault's detection may take to act after it
// healed: the channels' silence, the disk's request timeout, a few store
// rounds.
func (r *runner) settle() time.Duration {
	return time.Duration(r.sc.HeartbeatMisses)*r.sc.Heartbeat + r.sc.Timeout/2 + 100*time.Millisecond
}

// crashCoordinator crashes the active coordinator while the change that
// drops driver name is quiescing, and returns the coordinator's name.
func (r *runner) crashCoordinator(ctx context.Context, i int, st Step, name string, d time.Duration) (string, error) {
	if len(r.s.Coordinators()) < 2 {
		return "", fmt.Errorf("crash-coordinator needs at least two coordinator processes (scenario.Config.Coordinators)")
	}
	if r.cli == nil {
		cli, err := store.Dial(ctx, store.DialConfig{Endpoints: []string{r.s.Endpoint}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return "", err
		}
		r.cli = cli
	}
	keys := proto.Keys{Prefix: proto.DefaultPrefix}
	record := func() (proto.EpochRecord, error) {
		resp, err := r.cli.Get(ctx, keys.Epoch(r.sc.Group))
		if err != nil || len(resp.Kvs) == 0 {
			return proto.EpochRecord{}, fmt.Errorf("reading the epoch record: %v", err)
		}
		return proto.DecodeEpoch(resp.Kvs[0].Value)
	}
	before, err := record()
	if err != nil {
		return "", err
	}
	resp, err := r.cli.Get(ctx, keys.Election(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil || len(resp.Kvs) == 0 {
		return "", fmt.Errorf("no active coordinator in the election (%v)", err)
	}
	active := string(resp.Kvs[0].Value)
	coord := r.s.Proc(active)
	if coord == nil {
		return "", fmt.Errorf("the active coordinator %q is no process of the scenario", active)
	}
	storage := r.s.Proc("storage")
	if err := storage.Signal(syscall.SIGSTOP); err != nil {
		return "", err
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = storage.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	r.s.Proc(name).Kill()
	// The change that drops name is written quiescing; with the storage
	// stopped it cannot connect in fence mode (no fence acknowledgement),
	// and in lease mode it waits the lease out.
	wctx, cancel := context.WithTimeout(ctx, r.cfg.Recover)
	defer cancel()
	var rec proto.EpochRecord
	for {
		if rec, err = record(); err != nil {
			return "", err
		}
		if rec.Number > before.Number && rec.State == proto.Quiescing {
			break
		}
		if rec.Number > before.Number {
			return "", fmt.Errorf("epoch %d connected before the coordinator could crash mid-change", rec.Number)
		}
		if err := sleep(wctx, 2*time.Millisecond); err != nil {
			return "", fmt.Errorf("no epoch change after %s was killed: %w", name, err)
		}
	}
	coord.Kill()
	resume()
	r.log(i, st, active, Injected, fmt.Sprintf("SIGKILL while epoch %d was quiescing (%s killed to start it)", rec.Number, name))
	if err := sleep(ctx, d); err != nil {
		return "", err
	}
	if err := r.s.StartDriver(ctx, name); err != nil {
		return "", err
	}
	if err := r.s.StartCoordinator(ctx, active); err != nil {
		return "", err
	}
	r.log(i, st, active, Healed, "started again, and "+name)
	return active, nil
}

// holdWrites holds what the driver forwards to the storage until the
// disk failed over to another driver and every block has a newer
// acknowledged write, then releases it.
func (r *runner) holdWrites(ctx context.Context, i int, st Step, name string, p *scenario.Proxy) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Recover)
	defer cancel()
	disk := r.s.Proc("disk")
	from := disk.Count()
	p.HoldForward() // answers still come back; the disk's requests wait
	r.log(i, st, name, Injected, "forwarded requests held")
	// The disk's requests through name go unanswered: it times them out,
	// reports the path and fails over.
	_, _, err := disk.WaitFor(ctx, from, func(l string) bool {
		path, ok := scenario.PathOf(l)
		return ok && path != "" && path != name
	})
	if err != nil {
		p.Release()
		return fmt.Errorf("the disk did not fail over from %s: %w", name, err)
	}
	over := time.Now()
	blocks := r.cfg.Workload.Blocks
	for r.cfg.Workload.AckedSince(over) < blocks {
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			p.Release()
			return fmt.Errorf("%d of %d blocks written anew after the failover: %w", r.cfg.Workload.AckedSince(over), blocks, err)
		}
	}
	held := p.HeldForward()
	p.Release()
	r.log(i, st, name, Healed, fmt.Sprintf("released %d bytes of held requests after the failover, every block written anew", held))
	return nil
}

// recovered waits until the disk is connected in an epoch with every
// driver and the workload is acknowledged again. A fault may have changed
// nothing (a partition shorter than the disk's timeout only delays
// requests), so the disk's latest epoch counts, once the fault detection
// has had time to act.
func (r *runner) recovered(ctx context.Context, i int, st Step, name string) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Recover)
	defer cancel()
	if err := sleep(ctx, r.settle()); err != nil {
		return err
	}
	disk := r.s.Proc("disk")
	all := func(l string) bool {
		if _, ok := scenario.PathOf(l); !ok {
			return false
		}
		for _, d := range r.sc.Drivers {
			if !strings.Contains(l, d) {
				return false
			}
		}
		return true
	}
	lines := disk.Lines()
	from := len(lines)
	for j := len(lines) - 1; j >= 0; j-- {
		if _, ok := scenario.PathOf(lines[j]); ok {
			if all(lines[j]) {
				from = j
			}
			break
		}
	}
	_, line, err := disk.WaitFor(ctx, from, all)
	if err != nil {
		return fmt.Errorf("the group did not recover (every driver in the disk's epoch): %w", err)
	}
	n := r.cfg.Workload.Count()
	for r.cfg.Workload.Count() < n+10 {
		if err := sleep(ctx, 2*time.Millisecond); err != nil {
			return fmt.Errorf("no write acknowledged after the recovery: %w", err)
		}
	}
	r.log(i, st, name, Recovered, strings.TrimPrefix(line, "disk: "))
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
