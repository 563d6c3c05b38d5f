package idc

import (
	"context"
	"slices"
	"sync"
)

// Epoch is one connected epoch of a group as a member sees it: its number,
// its members, a context that ends when the epoch is disconnected, and the
// token to attach to resource requests. Work done in the epoch is bracketed
// as an operation (Begin/End, or Do): the member acknowledges quiesce only
// once the epoch's last operation has ended (G3).
type Epoch struct {
	d       *Domain
	num     uint64
	members []Member
	ctx     context.Context
	cancel  context.CancelCauseFunc
}

// Number returns the epoch number.
func (e *Epoch) Number() uint64 { return e.num }

// Group returns the group's name.
func (e *Epoch) Group() string { return e.d.cfg.Group }

// Members returns the members of the epoch, sorted by ID.
func (e *Epoch) Members() []Member { return slices.Clone(e.members) }

// Peers returns the members of the epoch other than this domain.
func (e *Epoch) Peers() []Member {
	var out []Member
	for _, m := range e.members {
		if m.ID != e.d.cfg.ID {
			out = append(out, m)
		}
	}
	return out
}

// Context ends when the epoch is disconnected or the membership is fenced;
// context.Cause then says which.
func (e *Epoch) Context() context.Context { return e.ctx }

// Token returns the fencing token of this domain in this epoch.
func (e *Epoch) Token() Token {
	return Token{Group: e.d.cfg.Group, Epoch: e.num, Domain: e.d.cfg.ID, Incarnation: e.d.cfg.Incarnation}
}

// Err returns nil while the epoch is connected and the lease certainly
// valid by the local clock, and otherwise why not (wrapping ErrEpochEnded
// or ErrFenced). Check it right before each I/O of the epoch: it reads the
// clock itself, so a membership whose lease lapsed while the process was
// paused refuses at once, before its timer has fired (G6).
func (e *Epoch) Err() error {
	d := e.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tick()
	if err := d.m.Err(); err != nil {
		return err
	}
	if cur, _ := d.m.Current(); cur != e.num || e.ctx.Err() != nil {
		return context.Cause(e.ctx)
	}
	return nil
}

// Begin starts an operation in the epoch. It fails with an error wrapping
// ErrEpochEnded if the epoch is over, or ErrFenced. End the operation when
// its work is done, whatever happened: quiesce waits for it.
func (e *Epoch) Begin() (*Op, error) {
	d := e.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tick()
	if err := d.m.Begin(e.num); err != nil {
		return nil, err
	}
	d.met.opsInFlight.Inc()
	return &Op{e: e}, nil
}

// Do runs fn as an operation of the epoch, with the epoch's context.
func (e *Epoch) Do(fn func(ctx context.Context) error) error {
	op, err := e.Begin()
	if err != nil {
		return err
	}
	defer op.End()
	return fn(e.ctx)
}

// Op is an operation in progress in an epoch.
type Op struct {
	e    *Epoch
	once sync.Once
}

// Context is the epoch's context: it ends at disconnect. The operation
// should then wind up promptly and End.
func (o *Op) Context() context.Context { return o.e.ctx }

// Epoch returns the operation's epoch.
func (o *Op) Epoch() *Epoch { return o.e }

// End ends the operation. Calling it more than once is harmless.
func (o *Op) End() {
	o.once.Do(func() {
		d := o.e.d
		d.mu.Lock()
		defer d.mu.Unlock()
		d.m.End(o.e.num)
		d.met.opsInFlight.Dec()
		d.handle()
	})
}
