package sim

import (
	"fmt"
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

func (c nodeClock) Now() time.Duration { return c.w.nodes[c.n].clock.local(c.w.now) }

func (c nodeClock) AfterFunc(d time.Duration, f func()) clk.Timer {
	return simTimer{c.w.afterLocal(c.n, d, "timer", 0, 0, f)}
}

type simTimer struct{ ev *event }

func (t simTimer) Stop() bool {
	was := !t.ev.off
	t.ev.off = true
	return was
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

func (c storeClient) Grant(ttl, to time.Duration, done func(store.Lease, error)) {
	w := c.w
	w.call(c.n, to, "grant", func() any { return store.Lease{ID: store.LeaseID(w.store.Grant(ttl)), TTL: ttl} },
		func(resp any) { done(resp.(store.Lease), nil) },
		func() { done(store.Lease{}, timeout("grant", to)) })
}

func (c storeClient) KeepAlive(id store.LeaseID, to time.Duration, done func(time.Duration, error)) {
	w := c.w
	w.call(c.n, to, "keepalive", func() any { return w.store.KeepAlive(int64(id)) },
		func(resp any) {
			if !resp.(bool) {
				done(0, store.ErrLeaseNotFound)
				return
			}
			done(w.cfg.TTL, nil)
		},
		func() { done(0, timeout("keepalive", to)) })
}

func (c storeClient) Revoke(id store.LeaseID, to time.Duration, done func(error)) {
	w := c.w
	w.call(c.n, to, "revoke", func() any { return w.store.Revoke(int64(id)) },
		func(resp any) {
			if done == nil {
				return
			}
			if !resp.(bool) {
				done(store.ErrLeaseNotFound)
				return
			}
			done(nil)
		},
		func() {
			if done != nil {
				done(timeout("revoke", to))
			}
		})
}

// Txn runs t at the store, as etcd would: refused whole if it has more
// operations than MaxTxnOps or more bytes than MaxRequestBytes.
func (c storeClient) Txn(t store.Txn, to time.Duration, done func(store.TxnResponse, error)) {
	w := c.w
	type answer struct {
		resp store.TxnResponse
		err  error
	}
	w.call(c.n, to, "txn", func() any {
		if n := max(len(t.If), t.Ops()); n > w.cfg.MaxTxnOps {
			return answer{err: fmt.Errorf("%w (%d > %d)", store.ErrTooManyOps, n, w.cfg.MaxTxnOps)}
		}
		if n := txnBytes(t); n > w.cfg.MaxRequestBytes {
			return answer{err: fmt.Errorf("%w (%d > %d bytes)", store.ErrTooLarge, n, w.cfg.MaxRequestBytes)}
		}
		resp, err := w.store.txnBytes(t)
		return answer{resp, err}
	}, func(resp any) {
		a := resp.(answer)
		done(a.resp, a.err)
	}, func() { done(store.TxnResponse{}, timeout("txn", to)) })
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
