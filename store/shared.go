package store

import (
	"errors"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
)

// Shared is a Store shared by the drivers of one process (or of one client
// of it): it passes every call to an inner Store, except that
//
//   - watches of the same keys from now on (Rev 0) share one watch of the
//     inner store: the memberships of a process in one group receive each
//     change of the epoch record once, not once each;
//   - transactions that only put (no compare, no other operation) and
//     arrive while another such is in flight, or while a watch response is
//     being handed to the subscribers, go out together, as one
//     transaction, when it is answered or handed: the quiesce
//     acknowledgements of a process's memberships, made as they receive
//     the record, cost one store write, not one each.
//
// Both keep every caller's view as it was. A caller's watch still starts
// with its own Created response and then delivers every change after it,
// in order; it ends with an error when the shared watch does, and Cancel
// leaves the others watching. A put that went out with others took effect
// atomically with them, at one revision, which is a point within the
// caller's request as much as a transaction of its own would be; when the
// whole fails because one of its leases is gone, or it is too large, each
// caller's transaction is sent again on its own, so that each gets its own
// outcome (ErrLeaseNotFound goes to the one whose lease is gone).
//
// A watch request with Fresh (replacing a watch found hung) gets a new
// watch of the inner store, which the next watches of the same keys
// share.
type Shared struct {
	inner  Store
	clk    clock.Clock
	maxOps int

	mu      sync.Mutex
	watches map[watchKey]*sharedWatch
	pending []*batchedPut // waiting for the write in flight
	busy    bool          // a batch is in flight
	// delivering counts watch responses being handed to subscribers: the
	// puts they cause (a process's memberships acknowledging the record
	// just delivered) wait for the last of them, to go out together.
	delivering int
}

// DefaultMaxBatchOps is the most puts Shared sends in one transaction:
// etcd's default --max-txn-ops.
const DefaultMaxBatchOps = 128

// NewShared returns a Shared over inner; clk runs the callbacks that must
// not run within a call. Batches carry at most maxOps puts (0 or less:
// DefaultMaxBatchOps).
func NewShared(inner Store, clk clock.Clock, maxOps int) *Shared {
	if maxOps <= 0 {
		maxOps = DefaultMaxBatchOps
	}
	return &Shared{inner: inner, clk: clk, maxOps: maxOps, watches: map[watchKey]*sharedWatch{}}
}

// Grant implements Store.
func (s *Shared) Grant(ttl, timeout time.Duration, done func(Lease, error)) {
	s.inner.Grant(ttl, timeout, done)
}

// KeepAlive implements Store.
func (s *Shared) KeepAlive(id LeaseID, timeout time.Duration, done func(time.Duration, error)) {
	s.inner.KeepAlive(id, timeout, done)
}

// Revoke implements Store.
func (s *Shared) Revoke(id LeaseID, timeout time.Duration, done func(error)) {
	s.inner.Revoke(id, timeout, done)
}

// batchedPut is one caller's put-only transaction.
type batchedPut struct {
	t        Txn
	deadline time.Duration
	timeout  time.Duration
	done     func(TxnResponse, error)
}

// putsOnly reports whether t only puts.
func putsOnly(t Txn) bool {
	if len(t.If) > 0 || len(t.Else) > 0 || len(t.Then) == 0 {
		return false
	}
	for _, o := range t.Then {
		if o.Type != OpPut {
			return false
		}
	}
	return true
}

// Txn implements Store.
func (s *Shared) Txn(t Txn, timeout time.Duration, done func(TxnResponse, error)) {
	if !putsOnly(t) || len(t.Then) >= s.maxOps {
		s.inner.Txn(t, timeout, done)
		return
	}
	s.mu.Lock()
	s.pending = append(s.pending, &batchedPut{t: t, deadline: s.clk.Now() + timeout, timeout: timeout, done: done})
	s.kick()
}

// kick sends the puts that wait unless a batch is in flight or a watch
// response is being handed out; called with s.mu held, it releases it.
func (s *Shared) kick() {
	if s.busy || s.delivering > 0 || len(s.pending) == 0 {
		s.mu.Unlock()
		return
	}
	s.busy = true
	b := s.take()
	s.mu.Unlock()
	s.send(b)
}

// take removes the next batch from pending: the oldest puts, up to
// maxOps. Called with s.mu held.
func (s *Shared) take() []*batchedPut {
	n, ops := 0, 0
	for n < len(s.pending) && ops+len(s.pending[n].t.Then) <= s.maxOps {
		ops += len(s.pending[n].t.Then)
		n++
	}
	b := s.pending[:n:n]
	s.pending = s.pending[n:]
	return b
}

// send writes batch b, then the next one.
func (s *Shared) send(b []*batchedPut) {
	if len(b) == 1 {
		p := b[0]
		s.inner.Txn(p.t, p.timeout, func(resp TxnResponse, err error) {
			p.done(resp, err)
			s.next()
		})
		return
	}
	var t Txn
	timeout := b[0].timeout
	now := s.clk.Now()
	for _, p := range b {
		t.Then = append(t.Then, p.t.Then...)
		timeout = min(timeout, max(p.deadline-now, 0))
	}
	s.inner.Txn(t, timeout, func(resp TxnResponse, err error) {
		switch {
		case err == nil:
			for _, p := range b {
				p.done(TxnResponse{Succeeded: true, Revision: resp.Revision}, nil)
			}
		case errors.Is(err, ErrLeaseNotFound), errors.Is(err, ErrTooManyOps), errors.Is(err, ErrTooLarge):
			// One of them, or their number: each on its own, for its own
			// outcome.
			now := s.clk.Now()
			for _, p := range b {
				s.inner.Txn(p.t, max(p.deadline-now, time.Millisecond), p.done)
			}
		default:
			for _, p := range b {
				p.done(TxnResponse{}, err)
			}
		}
		s.next()
	})
}

// next sends the puts that gathered meanwhile, if any.
func (s *Shared) next() {
	s.mu.Lock()
	s.busy = false
	s.kick()
}

// watchKey names the keys a watch covers.
type watchKey struct{ key, end string }

// sharedWatch is one watch of the inner store and its subscribers.
type sharedWatch struct {
	s       *Shared
	k       watchKey
	inner   Watch
	created bool // the inner watch said Created
	ended   bool
	subs    []*subscriber
}

// subscriber is one caller's watch on a shared one. Its responses go out
// in order, one at a time, from whichever goroutine queued them.
type subscriber struct {
	w  *sharedWatch
	fn func(WatchResponse)

	mu        sync.Mutex
	queue     []WatchResponse
	draining  bool
	cancelled bool
}

// Watch implements Store.
func (s *Shared) Watch(r WatchRequest, fn func(WatchResponse)) Watch {
	if r.Rev != 0 {
		return s.inner.Watch(r, fn)
	}
	k := watchKey{r.Key, r.End}
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.watches[k]
	if w == nil || w.ended || r.Fresh {
		w = &sharedWatch{s: s, k: k}
		s.watches[k] = w
		w.inner = s.inner.Watch(WatchRequest{Key: r.Key, End: r.End, Fresh: r.Fresh}, w.deliver)
	}
	sub := &subscriber{w: w, fn: fn}
	w.subs = append(w.subs, sub)
	if w.created {
		// It missed the inner watch's Created: its own comes now, later,
		// before anything the watch delivers from here on.
		sub.queue = append(sub.queue, WatchResponse{Created: true})
		sub.draining = true
		s.clk.AfterFunc(0, sub.drain)
	}
	return sub
}

// deliver hands a response of the inner watch to every subscriber.
func (w *sharedWatch) deliver(resp WatchResponse) {
	s := w.s
	s.mu.Lock()
	if w.ended {
		s.mu.Unlock()
		return
	}
	if resp.Created {
		w.created = true
	}
	if resp.Err != nil {
		w.ended = true
		if s.watches[w.k] == w {
			delete(s.watches, w.k)
		}
	}
	subs := w.subs
	s.delivering++
	s.mu.Unlock()
	for _, sub := range subs {
		sub.push(resp)
	}
	s.mu.Lock()
	s.delivering--
	s.kick()
}

// push queues resp and delivers the queue unless another goroutine is.
func (sub *subscriber) push(resp WatchResponse) {
	sub.mu.Lock()
	if sub.cancelled {
		sub.mu.Unlock()
		return
	}
	sub.queue = append(sub.queue, resp)
	if sub.draining {
		sub.mu.Unlock()
		return
	}
	sub.draining = true
	sub.mu.Unlock()
	sub.drain()
}

// drain delivers the queue in order until it is empty.
func (sub *subscriber) drain() {
	for {
		sub.mu.Lock()
		if len(sub.queue) == 0 || sub.cancelled {
			sub.queue = nil
			sub.draining = false
			sub.mu.Unlock()
			return
		}
		resp := sub.queue[0]
		sub.queue = sub.queue[1:]
		sub.mu.Unlock()
		sub.fn(resp)
	}
}

// RequestProgress implements Watch: the shared watch asks, and every
// subscriber gets the notification.
func (sub *subscriber) RequestProgress() {
	sub.w.inner.RequestProgress()
}

// Cancel implements Watch: the last subscriber to leave cancels the
// shared watch.
func (sub *subscriber) Cancel() {
	sub.mu.Lock()
	sub.cancelled = true
	sub.mu.Unlock()
	w := sub.w
	s := w.s
	s.mu.Lock()
	for i, o := range w.subs {
		if o == sub {
			w.subs = append(w.subs[:i:i], w.subs[i+1:]...)
			break
		}
	}
	last := len(w.subs) == 0 && !w.ended
	if last {
		w.ended = true
		if s.watches[w.k] == w {
			delete(s.watches, w.k)
		}
	}
	s.mu.Unlock()
	if last {
		w.inner.Cancel()
	}
}
