package membership

import (
	"github.com/idc-dev/idc/core/member"
	"github.com/idc-dev/idc/proto"
)

// Done is closed once the membership has stopped: fenced, left, closed,
// or its join failed.
func (d *Driver) Done() <-chan struct{} { return d.done }

// Changed returns a channel closed at the next change of state.
func (d *Driver) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

// Err returns why the membership stopped (wrapping proto.ErrFenced,
// proto.ErrLeft or proto.ErrClosed), or nil while it runs. Once Done is
// closed it is never nil.
func (d *Driver) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.errLocked()
}

func (d *Driver) errLocked() error {
	switch {
	case d.m == nil && d.stopped:
		return proto.ErrClosed
	case d.m == nil:
		return nil
	case d.leftErr != nil:
		return d.leftErr
	}
	if err := d.m.Err(); err != nil {
		return err
	}
	if d.stopped {
		return proto.ErrClosed
	}
	return nil
}

// Current returns the connected epoch, or nil while there is none. It
// reads the lease clock first.
func (d *Driver) Current() (ep *Epoch) {
	d.do(func() {
		if d.m == nil {
			return
		}
		d.tick()
		if d.m.Phase() == member.Connected {
			ep = d.cur
		}
	})
	return ep
}

// Last returns the last epoch the membership was connected in (nil if
// none), connected or not.
func (d *Driver) Last() *Epoch {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur
}

// Phase returns where the membership stands.
func (d *Driver) Phase() member.Phase {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		if d.stopped {
			return member.Fenced
		}
		return member.Joining
	}
	return d.m.Phase()
}

// Lease returns the membership's lease.
func (d *Driver) Lease() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int64(d.lease)
}

// Leave starts a graceful leave: the connected epoch is disconnected and,
// once its operations have ended, the leave marker is written and the
// lease given back; then Done closes.
func (d *Driver) Leave() {
	d.do(func() {
		if d.m == nil {
			return
		}
		d.m.Leave()
		d.handle()
	})
}

// Close stops the membership at once: every epoch context ends, the lease
// is given back (best effort) and Err says proto.ErrClosed. Operations in
// progress are not waited for: the coordinator, seeing the lease gone
// without a leave marker, waits the lease out before the next epoch
// connects. Leave first for a graceful end.
// revoked, if not nil, is called once the store has answered the
// revocation (at once if there is nothing to revoke), without the lock.
func (d *Driver) Close(revoked func()) {
	d.do(func() {
		d.joining = nil
		switch {
		case d.stopped || d.lease == 0:
			d.halt()
			if revoked != nil {
				d.later(revoked)
			}
		case d.m != nil && d.m.Err() == nil:
			d.closing = revoked
			d.m.Close()
			d.handle() // Fence: revokes the lease (then calls revoked) and halts
		default: // granted but not registered, or a leave in progress
			d.revokeThen(d.lease, revoked)
			d.halt()
		}
	})
}

// Crash stops the driver as if its process had died: no leave marker, no
// revocation; the lease simply stops being renewed. For tests.
func (d *Driver) Crash() {
	d.do(func() {
		d.joining = nil
		d.halt()
	})
}

// Member returns the member record the membership registered.
func (d *Driver) Member() proto.Member {
	d.mu.Lock()
	defer d.mu.Unlock()
	return proto.Member{ID: d.cfg.ID, Incarnation: d.cfg.Incarnation, Lease: int64(d.lease), TTL: d.cfg.Lease.TTL, Priority: d.cfg.Priority, Addr: d.addr()}
}
