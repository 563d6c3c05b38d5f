package idc

import (
	"context"
	"sync"

	"github.com/idc-dev/idc/internal/membership"
)

// Epoch is one connected epoch of a group as a member sees it: its number,
// its members, a context that ends when the epoch is disconnected, and the
// token to attach to resource requests. Work done in the epoch is bracketed
// as an operation (Begin/End, or Do): the member acknowledges quiesce only
// once the epoch's last operation has ended (G3).
type Epoch struct {
	d *Membership
	e *membership.Epoch
}

// Number returns the epoch number.
func (e *Epoch) Number() uint64 { return e.e.Number() }

// Group returns the group's name.
func (e *Epoch) Group() string { return e.d.cfg.Group }

// Members returns the members of the epoch, sorted by ID (a copy).
func (e *Epoch) Members() []Member { return e.e.Members() }

// Size returns the number of members of the epoch, without copying them.
func (e *Epoch) Size() int { return e.e.Size() }

// Peers returns the members of the epoch other than this domain.
func (e *Epoch) Peers() []Member {
	var out []Member
	for _, m := range e.e.Members() {
		if m.ID != e.d.cfg.ID {
			out = append(out, m)
		}
	}
	return out
}

// Context ends when the epoch is disconnected or the membership stops;
// context.Cause then says why (wrapping ErrEpochEnded, ErrFenced, ErrLeft
// or ErrClosed).
//
// The context is a gate: its Err reads the lease clock, so a membership
// whose lease lapsed while the process was paused reports the context
// ended at once, before any timer has run. Contexts derived from it end
// when its Done closes, which happens at the lease deadline by a timer:
// check this context's own Err (or Epoch.Err) right before each I/O.
func (e *Epoch) Context() context.Context { return e.e.Context() }

// Token returns the fencing token of this domain in this epoch.
func (e *Epoch) Token() Token { return e.e.Token() }

// Err returns nil while the epoch is connected and the lease certainly
// valid by the local clock, and otherwise why not (wrapping ErrEpochEnded
// or ErrFenced). Check it right before each I/O of the epoch: it reads the
// clock itself, so a membership whose lease lapsed while the process was
// paused refuses at once, before its timer has fired (G6).
//
// What a check cannot do, in lease mode, is stop an I/O that passed it
// just before the process paused: that I/O may land after the next epoch
// connected. Only a resource that fences stale epochs stops it (DESIGN
// §4.3: use fence or both mode for resources that can check tokens).
func (e *Epoch) Err() error { return e.e.Err() }

// Begin starts an operation in the epoch. It fails with an error wrapping
// ErrEpochEnded if the epoch is over, or ErrFenced. End the operation when
// its work is done, whatever happened: quiesce waits for it.
func (e *Epoch) Begin() (*Op, error) {
	if err := e.e.Begin(); err != nil {
		return nil, err
	}
	return &Op{e: e}, nil
}

// Do runs fn as an operation of the epoch, with the epoch's context.
func (e *Epoch) Do(fn func(ctx context.Context) error) error {
	op, err := e.Begin()
	if err != nil {
		return err
	}
	defer op.End()
	return fn(e.e.Context())
}

// Op is an operation in progress in an epoch.
type Op struct {
	e    *Epoch
	once sync.Once
}

// Context is the epoch's context: it ends at disconnect. The operation
// should then wind up promptly and End.
func (o *Op) Context() context.Context { return o.e.e.Context() }

// Epoch returns the operation's epoch.
func (o *Op) Epoch() *Epoch { return o.e }

// End ends the operation. Calling it more than once is harmless.
func (o *Op) End() { o.once.Do(o.e.e.End) }
