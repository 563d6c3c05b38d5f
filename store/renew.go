package store

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/internal/mutation"
)

// KeepAliveStream is one long-lived keep-alive stream to the store (etcd's
// LeaseKeepAlive RPC): renewal requests go out in the order they are sent,
// and the store answers each, in the order it received them, with the
// lease's TTL (0: no such lease). A stream that fails ends once, through
// the StreamHandler it was opened with.
type KeepAliveStream interface {
	// Send sends a renewal of lease id. It never blocks: a stream not yet
	// open, or one that cannot take the request now, queues it.
	Send(id LeaseID)
	// Close ends the stream; answers still on their way are dropped.
	Close()
}

// StreamHandler receives what a KeepAliveStream delivers. Its functions
// are called one at a time, never within a call of the stream's (Send,
// Close) and never after End.
type StreamHandler struct {
	// Answer delivers the answer to the oldest unanswered request for id.
	Answer func(id LeaseID, ttl time.Duration)
	// End says the stream failed, with an error of the Store's kinds.
	End func(err error)
}

// OpenStream opens a keep-alive stream. It returns at once; a stream that
// cannot be opened ends through h.End.
type OpenStream func(h StreamHandler) KeepAliveStream

// ErrClosed is returned for renewals of a Renewer closed before they were
// answered; it wraps ErrUnavailable.
var ErrClosed error = &kindOf{"idc: store: closed", ErrUnavailable}

// Renewer renews leases over one long-lived keep-alive stream, shared by
// every lease its owner renews (a membership driver per lease, a
// coordinator candidate, ...), instead of a stream per renewal: on etcd a
// stream per renewal costs four times the CPU (docs/BENCHMARKS.md).
//
// Each renewal is one request on the stream, paired with the stream's
// answer by order: the store answers a stream's requests in the order it
// received them, so the oldest request of a lease still waiting on the
// stream owns the next answer for that lease. A renewal that timed out
// stays in its place until its answer comes, so that a late answer is
// never taken for a newer request's: the caller counts validity from the
// time it sent its request (core/lease), and an older request's answer
// proves less.
//
// A stream that has answered nothing for a quarter of a waiting renewal's
// timeout since it was sent is taken for dead (a connection that went
// silent stays open to gRPC for its keep-alive time, 12 s by default) and
// replaced by a new one: every renewal still waiting is sent again on it,
// and the old stream, with the answers it still owes, is dropped. A stream
// that ends fails the renewals waiting on it; the next renewal opens a new
// stream.
//
// Callbacks run on the stream's or the clock's goroutines (events of the
// node, in the simulator), never within KeepAlive and never with the
// Renewer's lock held.
type Renewer struct {
	open OpenStream
	clk  clock.Clock

	mu     sync.Mutex
	cur    *rstream
	closed bool
	// opened counts streams opened, replaced counts streams taken for
	// dead: for tests and metrics.
	opened, replaced int
	seq              uint64 // of the last renewal
}

// rstream is one stream and the renewals sent on it, per lease in the
// order sent.
type rstream struct {
	s       KeepAliveStream
	pending map[LeaseID][]*renewal
	// heard is when the stream last answered (answered: it has).
	heard    time.Duration
	answered bool
}

// renewal is one KeepAlive call.
type renewal struct {
	seq      uint64 // the order of the KeepAlive calls
	id       LeaseID
	done     func(time.Duration, error)
	deadline time.Duration // start + timeout, on the Renewer's clock
	sentAt   time.Duration // the last send, on st
	st       *rstream
	finished bool // done has been called (answered, failed or timed out)
	timer    clock.Timer
}

// NewRenewer returns a Renewer that opens its streams with open and keeps
// time with clk.
func NewRenewer(open OpenStream, clk clock.Clock) *Renewer {
	return &Renewer{open: open, clk: clk}
}

// Streams returns how many streams the Renewer opened and how many of
// them it took for dead.
func (r *Renewer) Streams() (opened, replaced int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opened, r.replaced
}

// KeepAlive renews lease id once (Store.KeepAlive): done receives the TTL
// the store answered, ErrLeaseNotFound, the stream's error, or, after
// timeout, an error wrapping ErrUnavailable.
func (r *Renewer) KeepAlive(id LeaseID, timeout time.Duration, done func(time.Duration, error)) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.clk.AfterFunc(0, func() { done(0, ErrClosed) })
		return
	}
	now := r.clk.Now()
	r.seq++
	rn := &renewal{seq: r.seq, id: id, done: done, deadline: now + timeout}
	r.send(rn, r.stream(), now)
	r.mu.Unlock()
}

// stream returns the current stream, opening one if there is none.
// Called with r.mu held.
func (r *Renewer) stream() *rstream {
	if r.cur != nil {
		return r.cur
	}
	st := &rstream{pending: map[LeaseID][]*renewal{}}
	r.opened++
	r.cur = st
	st.s = r.open(StreamHandler{
		Answer: func(id LeaseID, ttl time.Duration) { r.answer(st, id, ttl) },
		End:    func(err error) { r.end(st, err) },
	})
	return st
}

// send sends rn on st and arms its timer: the stall check a quarter of
// the time left from now, then the timeout. Called with r.mu held.
func (r *Renewer) send(rn *renewal, st *rstream, now time.Duration) {
	rn.st, rn.sentAt = st, now
	st.pending[rn.id] = append(st.pending[rn.id], rn)
	if rn.timer != nil {
		rn.timer.Stop()
	}
	left := max(rn.deadline-now, 0)
	if stall := left / 4; stall > 0 {
		rn.timer = r.clk.AfterFunc(stall, func() { r.stalled(rn) })
	} else {
		rn.timer = r.clk.AfterFunc(left, func() { r.timedOut(rn) })
	}
	st.s.Send(rn.id)
}

// finish marks rn finished and returns its callback with the outcome.
// Called with r.mu held.
func (r *Renewer) finish(rn *renewal, ttl time.Duration, err error) func() {
	rn.finished = true
	if rn.timer != nil {
		rn.timer.Stop()
	}
	return func() { rn.done(ttl, err) }
}

// answer pairs an answer of st with the oldest request for its lease.
func (r *Renewer) answer(st *rstream, id LeaseID, ttl time.Duration) {
	r.mu.Lock()
	if st != r.cur {
		r.mu.Unlock()
		return // a stream replaced or ended: its answers are dropped
	}
	st.heard, st.answered = r.clk.Now(), true
	q := st.pending[id]
	if len(q) == 0 {
		// The store answered a request this stream never sent: nothing it
		// says can be trusted to belong to a request.
		r.mu.Unlock()
		r.end(st, fmt.Errorf("%w: keep-alive stream answered lease %x, which it has no request for", ErrUnavailable, int64(id)))
		return
	}
	rn := q[0]
	if len(q) == 1 {
		delete(st.pending, id)
	} else {
		st.pending[id] = q[1:]
	}
	var cb func()
	if !rn.finished { // else it timed out: the answer is its, and nobody's
		err := error(nil)
		if ttl <= 0 {
			err = ErrLeaseNotFound
		}
		cb = r.finish(rn, ttl, err)
	}
	r.mu.Unlock()
	if cb != nil {
		cb()
	}
}

// end fails every renewal waiting on st, which has ended.
func (r *Renewer) end(st *rstream, err error) {
	r.mu.Lock()
	if st != r.cur {
		r.mu.Unlock()
		return
	}
	r.cur = nil
	cbs := r.drop(st, err)
	r.mu.Unlock()
	st.s.Close()
	for _, cb := range cbs {
		cb()
	}
}

// drop fails the renewals waiting on st with err, in the order they were
// made. Called with r.mu held.
func (r *Renewer) drop(st *rstream, err error) []func() {
	var cbs []func()
	for _, rn := range waiting(st) {
		cbs = append(cbs, r.finish(rn, 0, err))
	}
	st.pending = nil
	return cbs
}

// waiting returns the renewals on st not yet finished, in the order they
// were made (so in each lease's order on the stream).
func waiting(st *rstream) []*renewal {
	var out []*renewal
	for _, q := range st.pending {
		for _, rn := range q {
			if !rn.finished {
				out = append(out, rn)
			}
		}
	}
	slices.SortFunc(out, func(a, b *renewal) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// stalled is rn's stall check: if its stream has answered nothing since
// rn was sent, the stream is taken for dead and replaced, and every
// renewal waiting on it is sent again on the new one. Then rn waits for
// its timeout.
func (r *Renewer) stalled(rn *renewal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rn.finished || r.closed {
		return
	}
	now := r.clk.Now()
	old := rn.st
	if old == r.cur && (!old.answered || old.heard < rn.sentAt) {
		r.replaced++
		r.cur = nil
		st := r.stream()
		moved := waiting(old)
		old.pending = nil
		old.s.Close()
		for _, w := range moved {
			r.send(w, st, now)
		}
		if rn.st == st {
			return // its new stall check is armed
		}
	}
	rn.timer = r.clk.AfterFunc(max(rn.deadline-now, 0), func() { r.timedOut(rn) })
}

// timedOut fails rn, which got no answer in time. It keeps its place on
// its stream: the answer it may still get is its own.
func (r *Renewer) timedOut(rn *renewal) {
	r.mu.Lock()
	if rn.finished {
		r.mu.Unlock()
		return
	}
	cb := r.finish(rn, 0, fmt.Errorf("%w: lease %x: keep-alive not answered in time", ErrUnavailable, int64(rn.id)))
	if mutation.On(mutation.ForgetTimedOutRenewal) {
		// As a renewer that forgets a request once its caller gave up: the
		// late answer is taken for the next request's.
		q := rn.st.pending[rn.id]
		for i, w := range q {
			if w == rn {
				rn.st.pending[rn.id] = append(q[:i:i], q[i+1:]...)
				break
			}
		}
	}
	r.mu.Unlock()
	cb()
}

// Close closes the stream and fails every renewal still waiting with
// ErrClosed.
func (r *Renewer) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	st := r.cur
	r.cur = nil
	var cbs []func()
	if st != nil {
		cbs = r.drop(st, ErrClosed)
	}
	r.mu.Unlock()
	if st != nil {
		st.s.Close()
	}
	for _, cb := range cbs {
		cb()
	}
}
