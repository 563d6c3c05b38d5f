package idc

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/internal/membership"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Membership is one domain's membership in one group (a domain in several
// groups has one per group). It renews the
// membership's lease, watches the group's epoch record, acknowledges
// quiesce and fences itself when its lease may have lapsed; the protocol
// is the pure machine of core/member, driven by the event-driven driver
// that the deterministic simulator also runs (internal/membership). All
// its methods are safe for concurrent use.
type Membership struct {
	cfg    Config
	d      *membership.Driver
	st     *clientStore
	cli    *clientv3.Client
	ownCli bool

	msgs chan struct{} // a message waits (Epoch.Receive)

	mu        sync.Mutex
	delivered uint64 // the highest epoch Next returned
	closeOnce sync.Once
}

// Join registers domain cfg.ID in group cfg.Group and returns the
// membership. cfg is taken as given (start from DefaultConfig). It waits
// for the store, retrying with backoff, until ctx ends. Errors wrap
// ErrConfig, ErrAlreadyLive or ErrUnavailable.
//
// Join returns before the domain is connected: call Next for its first
// epoch.
func Join(ctx context.Context, cfg Config) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Incarnation == 0 {
		cfg.Incarnation = newIncarnation()
	}
	dom := &Membership{cfg: cfg, cli: cfg.Client, msgs: make(chan struct{}, 1)}
	if dom.cli == nil {
		cli, err := store.Dial(ctx, store.DialConfig{Endpoints: cfg.Endpoints, Logger: cfg.Logger.With("group", cfg.Group, "domain", cfg.ID)})
		if err != nil {
			return nil, err
		}
		dom.cli, dom.ownCli = cli, true
	}
	dom.st = acquireStore(dom.cli)
	type result struct {
		d   *membership.Driver
		err error
	}
	ch := make(chan result, 1)
	chans := cfg.channels()
	if chans != nil {
		chans.Handler = serveWith(cfg.Handler)
		chans.OnMessage = func(uint64) { dom.signal() }
	}
	drv := membership.Start(membership.Config{
		Group: cfg.Group, ID: cfg.ID, Incarnation: cfg.Incarnation, Priority: cfg.Priority,
		Lease: cfg.lease(), RenewInterval: cfg.RenewInterval, OpTimeout: cfg.OpTimeout,
		WatchCheck: cfg.WatchCheck, Keys: proto.Keys{Prefix: cfg.Prefix},
		Store: dom.st.shared, Clock: cfg.clock(), Logger: cfg.Logger, Metrics: cfg.Metrics,
		Channels: chans,
	}, func(d *membership.Driver, err error) { ch <- result{d, err} })
	select {
	case r := <-ch:
		if r.err != nil {
			dom.release()
			return nil, r.err
		}
	case <-ctx.Done():
		drv.Abort()
		dom.release()
		return nil, fmt.Errorf("%w: join: %w", store.ErrUnavailable, ctx.Err())
	}
	dom.d = drv
	return dom, nil
}

// signal wakes a receiver waiting for a message.
func (d *Membership) signal() {
	select {
	case d.msgs <- struct{}{}:
	default:
	}
}

// Addr returns where the membership accepts channels ("" if it does not).
func (d *Membership) Addr() string { return d.d.Member().Addr }

func newIncarnation() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if n := binary.BigEndian.Uint64(b[:]); n != 0 {
			return n
		}
	}
}

// release ends the store calls still in progress and closes the client if
// Join opened it.
func (d *Membership) release() {
	d.st.release()
	if d.ownCli {
		d.cli.Close()
	}
}

// ID returns the domain's ID.
func (d *Membership) ID() string { return d.cfg.ID }

// Group returns the group's name.
func (d *Membership) Group() string { return d.cfg.Group }

// Incarnation returns this membership's incarnation.
func (d *Membership) Incarnation() uint64 { return d.cfg.Incarnation }

// Done is closed when the membership has stopped: fenced, left or closed.
// Err is not nil from then on.
func (d *Membership) Done() <-chan struct{} { return d.d.Done() }

// Err returns why the membership stopped (wrapping ErrFenced, ErrLeft or
// ErrClosed), or nil while it runs.
func (d *Membership) Err() error { return d.d.Err() }

// Next returns the next connected epoch: the first one the first time,
// then each time one newer than the last returned, skipping any that ended
// in between. It fails with an error wrapping ErrFenced, ErrLeft or
// ErrClosed once the membership has stopped, or with ctx's error.
func (d *Membership) Next(ctx context.Context) (*Epoch, error) {
	for {
		ch := d.d.Changed()
		if err := d.d.Err(); err != nil {
			return nil, err
		}
		if ep := d.d.Current(); ep != nil && d.deliver(ep.Number()) {
			return &Epoch{d: d, e: ep}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// deliver reports whether epoch n is newer than the last Next returned,
// and if so records it as returned.
func (d *Membership) deliver(n uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n <= d.delivered {
		return false
	}
	d.delivered = n
	return true
}

// Current returns the connected epoch, or nil while there is none.
func (d *Membership) Current() *Epoch {
	if ep := d.d.Current(); ep != nil {
		return &Epoch{d: d, e: ep}
	}
	return nil
}

// ReportFault tells the coordinator that this domain lost its peer in the
// connected epoch. Topology determination decides who stays; the report
// holds only for that epoch. A report that reaches the store after a later
// epoch connected is not counted: ReportFault then fails with an error
// wrapping ErrEpochEnded.
func (d *Membership) ReportFault(ctx context.Context, peer string) error {
	ch := make(chan error, 1)
	d.d.ReportFault(peer, func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("report fault: %w", ctx.Err())
	}
}

// Leave leaves the group gracefully, like http.Server.Shutdown: it
// disconnects the current epoch, waits until its operations have ended,
// tells the coordinator this incarnation will do nothing more, and gives
// the lease back. If ctx ends first, Leave returns ctx's error and the
// leave completes in the background once the operations end (Close stops
// it). After Leave, Err wraps ErrLeft.
func (d *Membership) Leave(ctx context.Context) error {
	d.d.Leave()
	select {
	case <-d.d.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := d.d.Err(); !errorsIs(err, ErrLeft) {
		return err
	}
	return nil
}

// Close stops the membership at once, like http.Server.Close: the epoch's
// context ends, the lease is given back (one attempt, best effort), the
// store calls in progress end and the client is closed if Join opened it.
// Operations still running are not waited for, so the coordinator waits
// the lease out before the next epoch connects; call Leave first to leave
// gracefully. After Close, Err is not nil (ErrClosed unless the membership
// had already stopped). Calling it more than once is harmless.
func (d *Membership) Close() error {
	d.closeOnce.Do(func() {
		revoked := make(chan struct{})
		d.d.Close(func() { close(revoked) })
		<-revoked // bounded by OpTimeout
		d.release()
	})
	return nil
}

// clientStores holds, per etcd client, the store the memberships on that
// client share (store.Shared): one watch of a group's epoch record and one
// write for the acknowledgements that gather, whatever the number of
// memberships, and one keep-alive stream for their leases.
var clientStores = struct {
	sync.Mutex
	m map[*clientv3.Client]*clientStore
}{m: map[*clientv3.Client]*clientStore{}}

// clientStore is a client's shared store and the memberships using it.
type clientStore struct {
	cli    *clientv3.Client
	etcd   *store.Etcd
	shared *store.Shared
	refs   int
}

// acquireStore returns cli's shared store, counting one more user.
func acquireStore(cli *clientv3.Client) *clientStore {
	clientStores.Lock()
	defer clientStores.Unlock()
	cs := clientStores.m[cli]
	if cs == nil {
		e := store.NewEtcd(cli)
		cs = &clientStore{cli: cli, etcd: e, shared: store.NewShared(e, clock.System(), 0)}
		clientStores.m[cli] = cs
	}
	cs.refs++
	return cs
}

// release counts one user less; the last one closes the store.
func (cs *clientStore) release() {
	clientStores.Lock()
	cs.refs--
	last := cs.refs == 0
	if last {
		delete(clientStores.m, cs.cli)
	}
	clientStores.Unlock()
	if last {
		cs.etcd.Close()
	}
}
