package membership

import (
	"context"
	"fmt"
	"github.com/idc-dev/idc/internal/mutation"
	"github.com/idc-dev/idc/token"
	"slices"

	"github.com/idc-dev/idc/core/member"
	"github.com/idc-dev/idc/proto"
)

// Epoch is one connected epoch of the membership.
type Epoch struct {
	d       *Driver
	num     uint64
	members []proto.Member
	ctx     *gate
	cancel  context.CancelCauseFunc
}

func newEpoch(d *Driver, num uint64, members []proto.Member) *Epoch {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Epoch{d: d, num: num, members: members, ctx: &gate{Context: ctx, d: d}, cancel: cancel}
}

// gate is an epoch's context. Its Err reads the lease clock first, so a
// membership whose lease lapsed while the process was paused reports the
// context ended at once, before its timer has fired (G6): the context is
// a gate, not only a notification. Contexts derived from it end when its
// Done closes, which the lease timer does.
type gate struct {
	context.Context
	d *Driver
}

func (g *gate) Err() error {
	if !mutation.On(mutation.ContextNotGate) {
		g.d.do(g.d.tick)
	}
	return g.Context.Err()
}

// Number returns the epoch number.
func (e *Epoch) Number() uint64 { return e.num }

// Members returns the members of the epoch, sorted by ID.
func (e *Epoch) Members() []proto.Member { return slices.Clone(e.members) }

// Size returns the number of members of the epoch.
func (e *Epoch) Size() int { return len(e.members) }

// Context ends when the epoch is disconnected or the membership stops; its
// Err reads the lease clock.
func (e *Epoch) Context() context.Context { return e.ctx }

// Token returns the fencing token of this membership in this epoch.
func (e *Epoch) Token() token.Token {
	c := e.d.cfg
	return token.Token{Group: c.Group, Epoch: e.num, Domain: c.ID, Incarnation: c.Incarnation}
}

// Err returns nil while the epoch is connected and the lease certainly
// valid by the local clock, and otherwise why not.
func (e *Epoch) Err() (err error) {
	d := e.d
	d.do(func() {
		d.tick()
		if err = d.m.Err(); err != nil {
			return
		}
		if cur, _ := d.m.Current(); cur != e.num || d.m.Phase() != member.Connected || e.ctx.Context.Err() != nil {
			if err = context.Cause(e.ctx.Context); err == nil {
				err = d.m.Begin(e.num) // says why: never succeeds here
			}
		}
	})
	return err
}

// Begin starts an operation in the epoch.
func (e *Epoch) Begin() error { return e.d.begin(e.num) }

// End ends an operation begun with Begin.
func (e *Epoch) End() { e.d.end(e.num) }

// begin starts an operation in epoch n, if n is the connected epoch and
// the lease certainly valid.
func (d *Driver) begin(n uint64) (err error) {
	d.mu.Lock()
	if d.m == nil {
		d.mu.Unlock()
		return fmt.Errorf("%w: not joined", proto.ErrNotConnected)
	}
	d.tick()
	if err = d.m.Begin(n); err == nil {
		d.met.opsInFlight.Inc()
	}
	d.unlock()
	return err
}

// end ends an operation of epoch n.
func (d *Driver) end(n uint64) {
	d.mu.Lock()
	d.m.End(n)
	d.met.opsInFlight.Dec()
	d.handle()
	d.unlock()
}

// host is the driver as its channels see it (channel.Host).
type host struct{ d *Driver }

func (h host) Begin(e uint64) error { return h.d.begin(e) }
func (h host) End(e uint64)         { h.d.end(e) }

func (h host) Context(e uint64) context.Context { return h.d.EpochContext(e) }

// ReportFault reports peer lost in epoch e, if e is still the connected
// epoch (a report of an ended epoch would not count).
func (h host) ReportFault(e uint64, peer string) {
	d := h.d
	d.mu.Lock()
	connected := d.m != nil && d.m.Phase() == member.Connected
	var cur uint64
	if connected {
		cur, _ = d.m.Current()
	}
	d.mu.Unlock()
	if !connected || cur != e {
		return
	}
	d.ReportFault(peer, func(err error) {
		if err != nil {
			d.log.Warn("fault report failed", "epoch", e, "suspect", peer, "err", err)
		}
	})
}

// EpochContext returns the context of epoch n if n is the last epoch the
// membership connected, else a context already ended.
func (d *Driver) EpochContext(n uint64) context.Context {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur != nil && d.cur.num == n {
		return d.cur.ctx
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(fmt.Errorf("%w: epoch %d of group %s", proto.ErrEpochEnded, n, d.cfg.Group))
	return ctx
}
