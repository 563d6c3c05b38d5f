package idc

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/idc-dev/idc/core/member"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Domain is one domain's membership in one group: the thin driver around
// the pure member state machine (core/member). It renews the membership's
// lease, watches the group's epoch record, writes quiesce acknowledgements
// and fences itself when its lease may have lapsed. All its methods are
// safe for concurrent use.
type Domain struct {
	cfg    Config
	cli    *clientv3.Client
	ownCli bool
	keys   proto.Keys
	lease  clientv3.LeaseID
	start  time.Time
	log    *slog.Logger
	met    *memberMetrics

	bg     context.Context // ends when the membership stops
	stopBg context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	m         *member.Machine
	cur       *Epoch        // the connected epoch, or the last one
	delivered uint64        // highest epoch returned by Next
	changed   chan struct{} // closed and replaced on every change
	timer     *time.Timer   // fires at the lease deadline
	done      chan struct{} // closed when fenced or left
	leaveErr  error
}

// Join registers domain cfg.ID in group cfg.Group and returns the
// membership. It waits for the store, retrying with backoff, until ctx
// ends. Errors wrap ErrConfig, ErrAlreadyLive or store.ErrUnavailable.
//
// Join returns before the domain is connected: call Next for its first
// epoch.
func Join(ctx context.Context, cfg Config) (*Domain, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Incarnation == 0 {
		cfg.Incarnation = newIncarnation()
	}
	d := &Domain{
		cfg:     cfg,
		keys:    proto.Keys{Prefix: cfg.Prefix},
		start:   time.Now(),
		log:     cfg.Logger.With("group", cfg.Group, "domain", cfg.ID),
		met:     newMemberMetrics(cfg.Metrics, cfg.Group, cfg.ID),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	d.cli = cfg.Client
	if d.cli == nil {
		cli, err := store.Dial(ctx, store.DialConfig{Endpoints: cfg.Endpoints, Logger: d.log})
		if err != nil {
			return nil, err
		}
		d.cli, d.ownCli = cli, true
	}
	if err := d.register(ctx); err != nil {
		if d.ownCli {
			d.cli.Close()
		}
		return nil, err
	}
	d.bg, d.stopBg = context.WithCancel(context.Background())
	d.timer = time.AfterFunc(time.Hour, d.onTimer)
	d.mu.Lock()
	d.rearm()
	d.mu.Unlock()
	wch, err := d.watchEpoch(ctx)
	if err != nil {
		d.abandon()
		return nil, err
	}
	d.wg.Add(2)
	go d.renewLoop()
	go d.watchLoop(wch)
	d.log.Info("joined", "incarnation", fmt.Sprintf("%x", cfg.Incarnation), "lease", int64(d.lease), "ttl", cfg.LeaseTTL)
	return d, nil
}

func newIncarnation() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if n := binary.BigEndian.Uint64(b[:]); n != 0 {
			return n
		}
	}
}

func (d *Domain) now() time.Duration { return time.Since(d.start) }

// register grants the lease and creates the member record, unless the
// domain is already live in the group.
func (d *Domain) register(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, d.cfg.OpTimeout)
	defer cancel()
	sent := d.now()
	g, err := d.cli.Grant(octx, int64(d.cfg.LeaseTTL/time.Second))
	if err != nil {
		return fmt.Errorf("%w: grant lease: %w", store.ErrUnavailable, err)
	}
	d.lease = g.ID
	if granted := time.Duration(g.TTL) * time.Second; granted != d.cfg.LeaseTTL {
		d.revokeQuietly()
		return fmt.Errorf("%w: the store granted a %v lease for the %v asked; raise LeaseTTL to at least %v", ErrConfig, granted, d.cfg.LeaseTTL, granted)
	}
	rec := proto.Member{ID: d.cfg.ID, Incarnation: d.cfg.Incarnation, Lease: int64(g.ID), TTL: d.cfg.LeaseTTL, Priority: d.cfg.Priority}
	val, _ := json.Marshal(rec)
	key := d.keys.Member(d.cfg.Group, d.cfg.ID)
	resp, err := d.cli.Txn(octx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(g.ID))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		d.revokeQuietly()
		return fmt.Errorf("%w: register: %w", store.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		d.revokeQuietly()
		var other proto.Member
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			_ = json.Unmarshal(kvs[0].Value, &other)
		}
		return fmt.Errorf("%w: domain %q in group %q (incarnation %x holds it until its lease ends)", ErrAlreadyLive, d.cfg.ID, d.cfg.Group, other.Incarnation)
	}
	d.m = member.New(member.Config{Group: d.cfg.Group, ID: d.cfg.ID, Incarnation: d.cfg.Incarnation, Lease: d.cfg.lease()})
	d.m.Renewed(sent)
	return nil
}

// revokeQuietly gives the lease back, best effort.
func (d *Domain) revokeQuietly() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = d.cli.Revoke(ctx, d.lease)
}

// abandon undoes a Join that failed after registering.
func (d *Domain) abandon() {
	d.stopBg()
	d.timer.Stop()
	d.revokeQuietly()
	if d.ownCli {
		d.cli.Close()
	}
}

// watchEpoch starts a watch on the epoch record, waits until the store has
// created it, then reads the record and feeds it to the machine. Watching
// first from the current revision keeps the watch in etcd's synced set (a
// watch from a past revision is caught up only by a 100 ms loop), and reading
// after creation leaves no gap; a record seen twice is ignored by the
// machine.
func (d *Domain) watchEpoch(ctx context.Context) (clientv3.WatchChan, error) {
	key := d.keys.Epoch(d.cfg.Group)
	octx, cancel := context.WithTimeout(ctx, d.cfg.OpTimeout)
	defer cancel()
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(d.bg))
	wch := d.cli.Watch(wctx, key, clientv3.WithCreatedNotify())
	select {
	case wr, ok := <-wch:
		if !ok || wr.Err() != nil || !wr.Created {
			wcancel()
			return nil, fmt.Errorf("%w: watch epoch: %v", store.ErrUnavailable, wr.Err())
		}
	case <-octx.Done():
		wcancel()
		return nil, fmt.Errorf("%w: watch epoch: %w", store.ErrUnavailable, octx.Err())
	}
	resp, err := d.cli.Get(octx, key)
	if err != nil {
		wcancel()
		return nil, fmt.Errorf("%w: read epoch: %w", store.ErrUnavailable, err)
	}
	for _, kv := range resp.Kvs {
		d.observe(kv.Value)
	}
	context.AfterFunc(d.bg, wcancel)
	return wch, nil
}

func (d *Domain) observe(val []byte) {
	rec, err := proto.DecodeEpoch(val)
	if err != nil {
		d.log.Warn("ignoring malformed epoch record", "err", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.m.Observe(&rec)
	d.handle()
}

// handle carries out the machine's actions. Called with d.mu held; store
// I/O is started in goroutines.
func (d *Domain) handle() {
	for _, a := range d.m.Ready() {
		switch a := a.(type) {
		case member.Connect:
			ctx, cancel := context.WithCancelCause(context.Background())
			d.cur = &Epoch{d: d, num: a.Epoch, members: a.Members, ctx: ctx, cancel: cancel}
			d.log.Info("connected", "epoch", a.Epoch, "members", proto.IDs(a.Members))
			d.met.epoch.Set(float64(a.Epoch))
			d.met.connected.Set(1)
			d.met.connects.Inc()
		case member.Disconnect:
			if d.cur != nil && d.cur.num == a.Epoch {
				d.cur.cancel(fmt.Errorf("%w: epoch %d of group %s disconnected", ErrEpochEnded, a.Epoch, d.cfg.Group))
				d.log.Info("disconnected", "epoch", a.Epoch)
			}
			d.met.connected.Set(0)
			d.met.disconnected = time.Now()
		case member.WriteAck:
			if !d.met.disconnected.IsZero() {
				d.met.quiesce.Observe(time.Since(d.met.disconnected).Seconds())
			}
			d.wg.Add(1)
			go d.writeAck(a.Epoch)
		case member.Fence:
			d.log.Warn("fenced", "err", a.Err)
			if errors.Is(a.Err, ErrLeaseExpired) {
				d.met.fencedLease.Inc()
			} else {
				d.met.fencedEvict.Inc()
			}
			if d.cur != nil {
				d.cur.cancel(a.Err)
			}
			d.stop()
			d.wg.Add(1)
			go func() { defer d.wg.Done(); d.revokeQuietly() }()
		case member.Leave:
			d.wg.Add(1)
			go d.leaveIO()
		}
	}
	d.broadcast()
}

func (d *Domain) broadcast() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// stop ends the background work for good. Called with d.mu held.
func (d *Domain) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	close(d.done)
	d.stopBg()
	d.timer.Stop()
}

// rearm sets the timer to the lease deadline. Called with d.mu held.
func (d *Domain) rearm() {
	if dl, ok := d.m.LeaseDeadline(); ok && d.m.Phase() != member.Fenced && d.m.Phase() != member.Left {
		d.timer.Reset(max(dl-d.now(), 0))
	}
}

func (d *Domain) onTimer() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tick()
	d.rearm()
}

// tick feeds the clock to the machine. Called with d.mu held.
func (d *Domain) tick() {
	d.m.Tick(d.now())
	d.handle()
}

func (d *Domain) renewLoop() {
	defer d.wg.Done()
	for {
		sent := d.now()
		ctx, cancel := context.WithTimeout(d.bg, d.cfg.RenewInterval)
		resp, err := d.cli.KeepAliveOnce(ctx, d.lease)
		cancel()
		wait := d.cfg.RenewInterval
		d.mu.Lock()
		switch {
		case err == nil && resp.TTL > 0:
			d.m.Renewed(sent)
			d.rearm()
			if dl, ok := d.m.LeaseDeadline(); ok {
				d.met.leaseValid.Set((dl - d.now()).Seconds())
			}
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			d.m.LeaseLost()
		case d.bg.Err() == nil:
			wait = d.cfg.RenewInterval / 5
			d.met.renewFailed.Inc()
			dl, _ := d.m.LeaseDeadline()
			d.log.Warn("lease renewal failed", "err", err, "valid_for", (dl - d.now()).Round(time.Millisecond))
		}
		d.handle()
		d.mu.Unlock()
		select {
		case <-d.bg.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (d *Domain) watchLoop(wch clientv3.WatchChan) {
	defer d.wg.Done()
	for {
		for wr := range wch {
			if err := wr.Err(); err != nil {
				d.log.Warn("epoch watch failed; rewatching", "err", err)
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					d.observe(ev.Kv.Value)
				}
			}
		}
		for {
			if d.bg.Err() != nil {
				return
			}
			var err error
			if wch, err = d.watchEpoch(d.bg); err == nil {
				break
			}
			select {
			case <-d.bg.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// put writes key, retrying until it lands or the membership stops.
func (d *Domain) put(what, key string, v any, opts ...clientv3.OpOption) error {
	val, _ := json.Marshal(v)
	for backoff := 20 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		ctx, cancel := context.WithTimeout(d.bg, d.cfg.OpTimeout)
		_, err := d.cli.Put(ctx, key, string(val), opts...)
		cancel()
		if err == nil {
			return nil
		}
		if d.bg.Err() != nil {
			return err
		}
		d.log.Warn("store write failed; retrying", "what", what, "err", err)
		select {
		case <-d.bg.Done():
			return d.bg.Err()
		case <-time.After(backoff):
		}
	}
}

func (d *Domain) writeAck(e uint64) {
	defer d.wg.Done()
	ack := proto.Ack{Epoch: e, ID: d.cfg.ID, Incarnation: d.cfg.Incarnation}
	if d.put("quiesce ack", d.keys.Ack(d.cfg.Group, e, d.cfg.ID), ack, clientv3.WithLease(d.lease)) == nil {
		d.log.Debug("acknowledged quiesce", "epoch", e)
	}
}

// leaveIO writes the leave marker, then gives the lease back.
func (d *Domain) leaveIO() {
	defer d.wg.Done()
	left := proto.Left{ID: d.cfg.ID, Incarnation: d.cfg.Incarnation}
	err := d.put("leave marker", d.keys.Left(d.cfg.Group, d.cfg.ID), left)
	if err == nil {
		ctx, cancel := context.WithTimeout(d.bg, d.cfg.OpTimeout)
		_, err = d.cli.Revoke(ctx, d.lease)
		cancel()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.leaveErr = fmt.Errorf("%w: leave: %w", store.ErrUnavailable, err)
	}
	d.log.Info("left", "err", err)
	d.stop()
	d.broadcast()
}

// ID returns the domain's ID.
func (d *Domain) ID() string { return d.cfg.ID }

// Group returns the group's name.
func (d *Domain) Group() string { return d.cfg.Group }

// Incarnation returns this membership's incarnation.
func (d *Domain) Incarnation() uint64 { return d.cfg.Incarnation }

// Done is closed when the membership has stopped: fenced or left.
func (d *Domain) Done() <-chan struct{} { return d.done }

// Err returns why the membership stopped (wrapping ErrFenced or ErrLeft),
// or nil while it runs.
func (d *Domain) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m.Err()
}

// Next returns the next connected epoch: the first one the first time,
// then each time one newer than the last returned, skipping any that ended
// in between. It fails with an error wrapping ErrFenced or ErrLeft once the
// membership has stopped, or with ctx's error.
func (d *Domain) Next(ctx context.Context) (*Epoch, error) {
	for {
		d.mu.Lock()
		if err := d.m.Err(); err != nil {
			d.mu.Unlock()
			return nil, err
		}
		if ep := d.cur; ep != nil && ep.num > d.delivered && d.m.Phase() == member.Connected {
			d.delivered = ep.num
			d.mu.Unlock()
			return ep, nil
		}
		ch := d.changed
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Current returns the connected epoch, or nil while there is none.
func (d *Domain) Current() *Epoch {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m.Phase() != member.Connected {
		return nil
	}
	return d.cur
}

// ReportFault tells the coordinator that this domain lost its peer in the
// connected epoch. Topology determination decides who stays; the report
// holds only for that epoch.
func (d *Domain) ReportFault(ctx context.Context, peer string) error {
	d.mu.Lock()
	if err := d.m.Err(); err != nil {
		d.mu.Unlock()
		return err
	}
	e, members := d.m.Current()
	connected := d.m.Phase() == member.Connected
	d.mu.Unlock()
	if !connected {
		return fmt.Errorf("%w: cannot report %q", ErrNotConnected, peer)
	}
	sus, ok := proto.Find(members, peer)
	if !ok || peer == d.cfg.ID {
		return fmt.Errorf("%w: %q is not a peer in epoch %d of group %s", ErrNotMember, peer, e, d.cfg.Group)
	}
	rep := proto.FaultReport{Epoch: e, Reporter: d.cfg.ID, ReporterIncarnation: d.cfg.Incarnation, Suspect: peer, SuspectIncarnation: sus.Incarnation}
	val, _ := json.Marshal(rep)
	octx, cancel := context.WithTimeout(ctx, d.cfg.OpTimeout)
	defer cancel()
	if _, err := d.cli.Put(octx, d.keys.Fault(d.cfg.Group, e, d.cfg.ID, peer), string(val), clientv3.WithLease(d.lease)); err != nil {
		return fmt.Errorf("%w: report fault: %w", store.ErrUnavailable, err)
	}
	d.log.Info("reported fault", "epoch", e, "suspect", peer)
	return nil
}

// Leave leaves the group gracefully: it disconnects the current epoch,
// waits until its operations have ended, tells the coordinator this
// incarnation will do nothing more, and gives the lease back. If ctx ends
// first, Leave returns ctx's error and the leave completes in the
// background once the operations end.
func (d *Domain) Leave(ctx context.Context) error {
	d.mu.Lock()
	d.m.Leave()
	d.handle()
	d.mu.Unlock()
	select {
	case <-d.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leaveErr
}

// Close leaves the group (waiting up to twice OpTimeout for operations to
// end), stops all background work and closes the store client if Join
// opened it.
func (d *Domain) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*d.cfg.OpTimeout)
	err := d.Leave(ctx)
	cancel()
	d.mu.Lock()
	d.stop()
	d.mu.Unlock()
	d.wg.Wait()
	if d.ownCli {
		d.cli.Close()
	}
	return err
}
