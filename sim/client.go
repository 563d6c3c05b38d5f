package sim

import (
	"fmt"
	"github.com/idc-dev/idc/internal/mutation"
	"time"

	clk "github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/store"
)

// nodeClock is a node's local clock as a clock.Clock: readings are the
// node's local time; timers are events of the node (held while it is
// paused, dropped if it crashed).
type nodeClock struct {
	w *World
	n NodeID
}

// Now reads the node's clock, which counts time its host spent suspended
// (CLOCK_BOOTTIME, as clock.System does) — unless the MonotonicClock
// variant is on.
func (c nodeClock) Now() time.Duration {
	n := c.w.nodes[c.n]
	t := n.clock.local(c.w.now)
	if mutation.On(mutation.MonotonicClock) {
		t -= n.suspended
	}
	return t
}

func (c nodeClock) AfterFunc(d time.Duration, f func()) clk.Timer {
	ev := c.w.afterLocal(c.n, d, "timer", 0, 0, f)
	return simTimer{ev, ev.seq}
}

// simTimer is a pending event, named by its seq: once the event ran (and
// was recycled) the seq no longer matches and Stop does nothing.
type simTimer struct {
	ev  *event
	seq uint64
}

func (t simTimer) Stop() bool {
	if t.ev.seq != t.seq || t.ev.off {
		return false
	}
	t.ev.off = true
	return true
}

// storeClient is the simulated store as a store.Store for one node: each
// call is a request through the simulated network (lost, delayed or cut
// off as the nemesis decides) answered by the Store, or a timeout by the
// node's clock. Values are the bytes the real drivers encode; the limits
// etcd enforces are enforced here too, with the simulator's (smaller)
// settings, so that runs with a few domains reach them.
type storeClient struct {
	w *World
	n NodeID
}

var _ store.Store = storeClient{}

func timeout(what string, d time.Duration) error {
	return fmt.Errorf("%w: %s: no answer within %v", store.ErrUnavailable, what, d)
}

// answer is what the store sends back: a value or an error.
type answer struct {
	v   any
	err error
}

// request sends req to the store and calls back with its answer, or with
// a timeout error if none arrives in time. A store without a leader
// answers every request with ErrNoLeader.
func (c storeClient) request(what string, to time.Duration, req func() answer, done func(answer)) {
	w := c.w
	w.call(c.n, to, what, func() any {
		if w.store.leaderless() {
			return answer{err: store.ErrNoLeader}
		}
		return req()
	}, func(resp any) {
		if done != nil {
			done(resp.(answer))
		}
	}, func() {
		if done != nil {
			done(answer{err: timeout(what, to)})
		}
	})
}

func (c storeClient) Grant(ttl, to time.Duration, done func(store.Lease, error)) {
	w := c.w
	c.request("grant", to, func() answer {
		return answer{v: store.Lease{ID: store.LeaseID(w.store.Grant(ttl)), TTL: ttl}}
	}, func(a answer) {
		l, _ := a.v.(store.Lease)
		done(l, a.err)
	})
}

// KeepAlive renews over the keep-alive stream of the node's process, with
// the store.Renewer the drivers use on etcd (stream.go).
func (c storeClient) KeepAlive(id store.LeaseID, to time.Duration, done func(time.Duration, error)) {
	c.w.renewer(c.n).KeepAlive(id, to, done)
}

func (c storeClient) Revoke(id store.LeaseID, to time.Duration, done func(error)) {
	w := c.w
	c.request("revoke", to, func() answer {
		if !w.store.Revoke(int64(id)) {
			return answer{err: store.ErrLeaseNotFound}
		}
		return answer{}
	}, func(a answer) {
		if done != nil {
			done(a.err)
		}
	})
}

// Txn runs t at the store, as etcd would: refused whole if it has more
// operations than MaxTxnOps or more bytes than MaxRequestBytes.
func (c storeClient) Txn(t store.Txn, to time.Duration, done func(store.TxnResponse, error)) {
	w := c.w
	c.request("txn", to, func() answer {
		if n := max(len(t.If), t.Ops()); n > w.cfg.MaxTxnOps {
			return answer{err: fmt.Errorf("%w (%d > %d)", store.ErrTooManyOps, n, w.cfg.MaxTxnOps)}
		}
		if n := txnBytes(t); n > w.cfg.MaxRequestBytes {
			return answer{err: fmt.Errorf("%w (%d > %d bytes)", store.ErrTooLarge, n, w.cfg.MaxRequestBytes)}
		}
		resp, err := w.store.txnBytes(t)
		return answer{v: resp, err: err}
	}, func(a answer) {
		resp, _ := a.v.(store.TxnResponse)
		done(resp, a.err)
	})
}

func txnBytes(t store.Txn) int {
	n := 0
	for _, c := range t.If {
		n += len(c.Key) + 16
	}
	for _, ops := range [][]store.Op{t.Then, t.Else} {
		for _, o := range ops {
			n += len(o.Key) + len(o.End) + len(o.Value) + 8
		}
	}
	return n
}
