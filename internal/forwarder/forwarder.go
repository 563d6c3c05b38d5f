// Package forwarder is the forwarding logic of a driver domain in the
// multipath disk scenario (DESIGN §8): the disk sends each block request
// (package block, carrying the disk's encoded token) to a driver as an idc
// channel call, and the driver forwards it, byte for byte, to the shared
// storage over a resource connection, then returns the storage's encoded
// answer as the call's response. The token reaches the storage's guard
// unchanged, so the guard, not the driver, decides whether the request may
// be applied.
//
// The resource connection is a plain framed connection over
// network.Network, not an idc channel: each frame to the storage is one
// encoded block request, each frame back one encoded answer
// (block.AppendAnswer) carrying the request's ID. Answers may come in any
// order; the forwarder matches them to requests by ID.
//
// There is one connection per epoch: it is dialed at the epoch's first
// request (requests arriving meanwhile wait for it) and closed when the
// epoch ends here (EndEpoch) or a request of a newer epoch arrives. Ending
// an epoch fails its pending requests at once, so that the driver quiesces
// promptly (DESIGN §4 step 2); requests already sent stay in the network,
// and the storage's guard refuses them once it holds the next epoch's
// fence — which is the reason fencing exists.
//
// A storage connection that fails (the dial, a reset, an orderly close by
// the storage, an answer that is not one) fails every request pending on
// it with an error wrapping ErrStorageLost, and every later request of the
// same epoch too: the forwarder does not redial within an epoch. The
// requests in flight on a lost connection may or may not be applied; a
// driver that quietly carried on over a new connection would look like a
// healthy path while their fate is unknown. Failing the epoch's requests
// instead makes the disk see this driver as a faulty path: it reports the
// fault, the group moves to a new epoch whose fence settles the stale
// requests (G5), and the disk re-issues them through the other driver. A
// new epoch dials afresh.
//
// Like the other drivers (internal/channel, internal/fencer), the
// forwarder is event-driven: it reaches the network and time only through
// network.Network and clock.Clock, runs their callbacks under one lock,
// calls no callback of its own under it, and never blocks, so the
// deterministic simulator can run it unchanged.
package forwarder

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors of a forwarded request, for errors.Is.
var (
	// ErrInvalid: the request is not a well-formed block request (it
	// also wraps the block package's error saying why), it does not fit
	// in a frame, or another request with its ID is in flight on the
	// epoch's connection. It was not forwarded.
	ErrInvalid = errors.New("idc: forwarder: invalid block request")
	// ErrEpochEnded: the request's epoch ended here (EndEpoch, or a
	// request of a newer epoch arrived) before its answer came. It is
	// proto.ErrEpochEnded itself. A request already sent may still reach
	// the storage, whose guard refuses it once it holds the next fence.
	ErrEpochEnded = proto.ErrEpochEnded
	// ErrStorageLost: the epoch's connection to the storage failed (the
	// dial, a reset, an orderly close by the storage, a malformed
	// answer). Whether a request sent on it was applied is unknown.
	ErrStorageLost = errors.New("idc: forwarder: storage connection lost")
	// ErrClosed: the forwarder was closed.
	ErrClosed = errors.New("idc: forwarder: closed")
)

// DefaultDialTimeout is the dial timeout when Config.DialTimeout is zero.
const DefaultDialTimeout = time.Second

// Config configures a Forwarder. Storage, Network and Clock are required.
type Config struct {
	// Storage is the storage's address: "tcp://host:port" or
	// "unix:///path".
	Storage string
	// Network dials the storage (network.OS{}, or the simulator's).
	Network network.Network
	// Clock times requests and retries (clock.System(), or the
	// simulator's).
	Clock clock.Clock
	// DialTimeout bounds the dial of an epoch's connection (default
	// DefaultDialTimeout).
	DialTimeout time.Duration
	// Domain is the driver domain's ID, for logs and the metrics' domain
	// label. Optional.
	Domain string
	// Logger receives the forwarder's logs (nil: none).
	Logger *slog.Logger
	// Metrics, if set, registers the forwarder's metrics
	// (idc_forwarder_*, labelled domain).
	Metrics prometheus.Registerer
}

func (c *Config) validate() error {
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Network == nil || c.Clock == nil:
		return fmt.Errorf("%w: forwarder: Network and Clock are required", proto.ErrConfig)
	case c.DialTimeout < 0:
		return fmt.Errorf("%w: forwarder: dial timeout %v must be positive", proto.ErrConfig, c.DialTimeout)
	}
	return CheckAddress(c.Storage)
}

// CheckAddress checks that addr is an address the storage can be dialed
// at, "tcp://host:port" or "unix:///path"; its error wraps proto.ErrConfig.
func CheckAddress(addr string) error {
	u, err := url.Parse(addr)
	if err != nil {
		return fmt.Errorf("%w: storage address %q: %v", proto.ErrConfig, addr, err)
	}
	switch {
	case u.Scheme == "tcp" && u.Host != "" && u.Port() != "" && (u.Path == "" || u.Path == "/"):
		return nil
	case u.Scheme == "unix" && u.Host == "" && u.Path != "":
		return nil
	}
	return fmt.Errorf("%w: storage address %q: want tcp://host:port or unix:///path", proto.ErrConfig, addr)
}

// Answer is the storage's answer to a forwarded request: one encoded
// block answer (block.ParseAnswer), exactly as the storage sent it.
//
// Frame belongs to the receiver of the answer, who may keep it as long as
// it likes (it is never reused by the forwarder). Once done with it, the
// receiver may hand it back with Release, so that a later answer is read
// into its buffer; that is optional (a frame never released is garbage
// collected), and after Release neither Frame nor a slice of it may be
// used.
type Answer struct {
	Frame []byte
	rel   network.Releaser
}

// Release hands Frame back to the connection it was read from (if that
// connection takes frames back). Release an answer at most once.
func (a Answer) Release() {
	if a.rel != nil && a.Frame != nil {
		a.rel.Release(a.Frame)
	}
}

// Stats counts what a forwarder did.
type Stats struct {
	// Forwarded: requests handed to a storage connection (one refused
	// with network.ErrBusy and handed again counts twice).
	Forwarded uint64
	// Answered: requests completed with the storage's answer.
	Answered uint64
	// Queued: requests that waited for room in a connection's send
	// window (network.SendWindow frames handed to it and not written
	// yet), or were handed back with network.ErrBusy.
	Queued uint64
	// Failed requests, by reason (the sentinel their error wraps).
	Invalid, Ended, Lost, Closed uint64
	// Unmatched: answers that matched no pending request (a late answer
	// of a request that failed meanwhile, or an ID never sent); they are
	// dropped.
	Unmatched uint64
	// Dials: connections dialed (one per epoch that forwarded anything).
	Dials uint64
	// Pending: requests waiting for their answer now.
	Pending int
}

// Forwarder forwards block requests to the storage, one connection per
// epoch. Its methods are safe for concurrent use and never block.
type Forwarder struct {
	cfg Config
	log *slog.Logger
	met *metrics

	mu     sync.Mutex
	closed bool
	// floor is the lowest epoch whose requests are forwarded: every
	// earlier one ended here.
	floor uint64
	cur   *conn // the connection of the newest epoch, if any
	stats Stats
	free  []*request // finished requests, for reuse
	// To do once the lock is released, in order: network calls (which may
	// call back at once), the requests' completions, and the releases of
	// their bytes.
	after    []func()
	dones    []completion
	releases []func()
}

// completion is a request's done call, made once the lock is released.
type completion struct {
	done   func(Answer, error)
	answer Answer
	err    error
}

// connState is where a connection stands.
type connState uint8

const (
	dialing connState = iota
	open
	failed // lost: its epoch's requests fail with err
	closed // its epoch ended here, or the forwarder closed
)

// conn is the storage connection of one epoch.
type conn struct {
	epoch   uint64
	state   connState
	err     error // why it failed (state failed)
	c       network.Conn
	now     nowSender
	rel     network.Releaser
	pending map[uint64]*request // by ID: sent or waiting to be sent
	queue   []*request          // waiting for the dial or for room in the send window
	// inflight counts requests handed to c whose send callback has not
	// run; busy is set when c refused one with network.ErrBusy, until a
	// send completes or the retry timer fires.
	inflight int
	busy     bool
	retry    clock.Timer
}

// request is a forwarded request in progress. Requests are reused: one
// is recycled once it finished and its send callback (if any) ran.
type request struct {
	cn       *conn
	id       uint64
	data     []byte
	done     func(Answer, error)
	release  func()        // called once data is no longer used (nil: none)
	start    time.Duration // when Forward took it (with Config.Metrics only)
	wired    bool          // handed to cn (and not refused with network.ErrBusy)
	sending  bool          // handed to cn, its send callback not run yet
	finished bool
	sentFn   func(error) // the send callback, made once per request
}

// nowSender is a connection that can write a frame at once: SendNow is
// Send, except that it returns true, and calls no callback, when the frame
// was written before it returned (network.OS's connections and the
// simulator's have it).
type nowSender interface {
	SendNow(frame []byte, done func(error)) bool
}

// retryBusy is how long a connection that refused a frame with
// network.ErrBusy, while nothing else was in flight on it, is left before
// the frame is sent again.
const retryBusy = time.Millisecond

// maxFree bounds the finished requests kept for reuse.
const maxFree = 256

// New returns a forwarder to cfg.Storage. It dials nothing until the first
// request.
func New(cfg Config) (*Forwarder, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("storage", cfg.Storage)
	if cfg.Domain != "" {
		log = log.With("domain", cfg.Domain)
	}
	return &Forwarder{cfg: cfg, log: log, met: newMetrics(cfg.Metrics, cfg.Domain)}, nil
}

// Forward forwards req, a block request of epoch epoch, to the storage and
// calls done once with the storage's answer to it (err nil), or with why
// there is none: an error wrapping ErrInvalid (req was not forwarded),
// ErrEpochEnded, ErrStorageLost or ErrClosed. done is called without the
// forwarder's lock, possibly before Forward returns; it must not block for
// long (it runs on the connection's reading goroutine, or within
// EndEpoch).
//
// req is sent unchanged, so it must not be modified once Forward is
// called: the connection may still be writing it after done has run (when
// the epoch ended or the connection failed first).
//
// A request of an epoch older than the newest forwarded, or of an epoch
// that ended here, fails at once with ErrEpochEnded; one of a newer epoch
// ends the older one (as EndEpoch) and opens the new epoch's connection.
func (f *Forwarder) Forward(epoch uint64, req []byte, done func(Answer, error)) {
	f.ForwardThen(epoch, req, done, nil)
}

// ForwardThen is Forward, and then calls release, if not nil, once the
// forwarder no longer uses req: once the request has its outcome (done)
// and its connection no longer writes it — so that the caller may reuse
// req's bytes (a driver domain hands them back to the channel they came
// on). release is called once, without the forwarder's lock, before or
// after done.
func (f *Forwarder) ForwardThen(epoch uint64, req []byte, done func(Answer, error), release func()) {
	br, err := block.Parse(req)
	switch {
	case err != nil:
		f.fail(done, reasonInvalid, fmt.Errorf("%w: %w", ErrInvalid, err))
		if release != nil {
			release()
		}
		return
	case len(req) > network.MaxFrame:
		f.fail(done, reasonInvalid, fmt.Errorf("%w: %d bytes, above the largest frame %d", ErrInvalid, len(req), network.MaxFrame))
		if release != nil {
			release()
		}
		return
	}
	f.mu.Lock()
	reason, ferr := f.admit(epoch, br.ID)
	if ferr != nil {
		f.count(reason)
		f.unlock()
		done(Answer{}, ferr)
		if release != nil {
			release()
		}
		return
	}
	cn := f.cur
	r := f.newRequest()
	r.cn, r.id, r.data, r.done, r.release = cn, br.ID, req, done, release
	if f.cfg.Metrics != nil {
		r.start = f.cfg.Clock.Now() // for the latency histogram only
	}
	cn.pending[r.id] = r
	f.stats.Pending++
	switch {
	case cn.state == open && len(cn.queue) == 0 && !cn.busy && cn.inflight < network.SendWindow:
		f.send(r)
	case cn.state == open:
		f.stats.Queued++
		f.met.queued.Inc()
		cn.queue = append(cn.queue, r)
	default: // dialing
		cn.queue = append(cn.queue, r)
	}
	f.unlock()
}

// admit makes the connection of epoch current for a request with ID id,
// or says why the request fails. Called with f.mu held.
func (f *Forwarder) admit(epoch, id uint64) (reason int, err error) {
	switch {
	case f.closed:
		return reasonClosed, ErrClosed
	case epoch < f.floor:
		return reasonEnded, fmt.Errorf("%w: epoch %d ended at this driver", ErrEpochEnded, epoch)
	}
	if f.cur == nil || epoch > f.cur.epoch {
		if f.cur != nil {
			f.end(f.cur, reasonEnded, fmt.Errorf("%w: epoch %d ended at this driver (a request of epoch %d arrived)", ErrEpochEnded, f.cur.epoch, epoch))
		}
		f.floor = epoch
		f.dial(epoch)
	}
	switch cn := f.cur; {
	case cn.state == failed:
		return reasonLost, cn.err
	case cn.pending[id] != nil:
		return reasonInvalid, fmt.Errorf("%w: request ID %d is already in flight in epoch %d", ErrInvalid, id, epoch)
	}
	return 0, nil
}

// EndEpoch tells the forwarder that epoch e ended here: every pending
// request of an epoch up to e fails at once (its done has run when
// EndEpoch returns, unless its answer was being delivered concurrently)
// with an error wrapping ErrEpochEnded, the epoch's connection is closed,
// and later requests of those epochs fail at once.
func (f *Forwarder) EndEpoch(e uint64) {
	f.mu.Lock()
	if e < ^uint64(0) {
		f.floor = max(f.floor, e+1)
	}
	if cn := f.cur; cn != nil && cn.epoch <= e {
		f.end(cn, reasonEnded, fmt.Errorf("%w: epoch %d ended at this driver", ErrEpochEnded, cn.epoch))
		f.cur = nil
	}
	f.unlock()
}

// Close fails every pending request with ErrClosed, closes the connection
// and refuses every later request. Calling it more than once is harmless.
func (f *Forwarder) Close() {
	f.mu.Lock()
	f.closed = true
	if f.cur != nil {
		f.end(f.cur, reasonClosed, ErrClosed)
		f.cur = nil
	}
	f.unlock()
}

// Stats returns what the forwarder did so far.
func (f *Forwarder) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// fail completes a request that was not taken (without the lock).
func (f *Forwarder) fail(done func(Answer, error), reason int, err error) {
	f.mu.Lock()
	f.count(reason)
	f.mu.Unlock()
	done(Answer{}, err)
}

// count counts a failed request. Called with f.mu held.
func (f *Forwarder) count(reason int) {
	switch reason {
	case reasonInvalid:
		f.stats.Invalid++
	case reasonEnded:
		f.stats.Ended++
	case reasonLost:
		f.stats.Lost++
	case reasonClosed:
		f.stats.Closed++
	}
	f.met.failed[reason].Inc()
}

// unlock releases the lock, then makes the network calls and completions
// left for later, in order.
func (f *Forwarder) unlock() {
	after, dones, releases := f.after, f.dones, f.releases
	f.after, f.dones, f.releases = nil, nil, nil
	f.mu.Unlock()
	for _, fn := range after {
		fn()
	}
	for i := range dones {
		dones[i].done(dones[i].answer, dones[i].err)
	}
	for _, fn := range releases {
		fn()
	}
	keepDones := cap(dones) > 0 && cap(dones) <= 2*network.SendWindow
	keepReleases := cap(releases) > 0 && cap(releases) <= 2*network.SendWindow
	if keepDones || keepReleases {
		// Keep the slices for the next completions, unless another
		// goroutine left some meanwhile.
		clear(dones)
		clear(releases)
		f.mu.Lock()
		if keepDones && f.dones == nil {
			f.dones = dones[:0]
		}
		if keepReleases && f.releases == nil {
			f.releases = releases[:0]
		}
		f.mu.Unlock()
	}
}

// later runs fn once the lock is released. Called with f.mu held.
func (f *Forwarder) later(fn func()) { f.after = append(f.after, fn) }

// newRequest returns a request, a finished one if there is one. Called
// with f.mu held.
func (f *Forwarder) newRequest() *request {
	if n := len(f.free); n > 0 {
		r := f.free[n-1]
		f.free[n-1] = nil
		f.free = f.free[:n-1]
		r.finished, r.wired = false, false
		return r
	}
	r := &request{}
	r.sentFn = func(err error) { f.onSent(r, err) }
	return r
}

// finish completes r with its answer or err and takes it off its
// connection's pending requests. Called with f.mu held.
func (f *Forwarder) finish(r *request, a Answer, err error) {
	if r.finished {
		return
	}
	r.finished = true
	if r.cn.pending[r.id] == r {
		delete(r.cn.pending, r.id)
	}
	f.stats.Pending--
	f.dones = append(f.dones, completion{r.done, a, err})
	r.done, r.data = nil, nil
	f.recycle(r)
}

// recycle keeps r for reuse once it finished and its send callback ran:
// then its bytes are no longer used, and their release is due. Called
// with f.mu held.
func (f *Forwarder) recycle(r *request) {
	if !r.finished || r.sending {
		return
	}
	if r.release != nil {
		f.releases = append(f.releases, r.release)
		r.release = nil
	}
	r.cn = nil
	if len(f.free) < maxFree {
		f.free = append(f.free, r)
	}
}

// dial opens the connection of epoch e and makes it the current one.
// Called with f.mu held.
func (f *Forwarder) dial(e uint64) {
	cn := &conn{epoch: e, pending: make(map[uint64]*request)}
	f.cur = cn
	f.stats.Dials++
	f.met.dials.Inc()
	start := f.cfg.Clock.Now()
	f.log.Debug("dialing the storage", "epoch", e)
	f.later(func() {
		f.cfg.Network.Dial(f.cfg.Storage, f.cfg.DialTimeout, func(c network.Conn, err error) {
			f.mu.Lock()
			f.dialed(cn, c, err, f.cfg.Clock.Now()-start)
			f.unlock()
		})
	})
}

// dialed takes the outcome of cn's dial. Called with f.mu held.
func (f *Forwarder) dialed(cn *conn, c network.Conn, err error, took time.Duration) {
	switch {
	case cn.state != dialing: // ended meanwhile
		if c != nil {
			f.later(func() { c.Close() })
		}
		return
	case err != nil:
		f.lose(cn, fmt.Errorf("%w: %s: %w", ErrStorageLost, f.cfg.Storage, err))
		return
	}
	cn.c, cn.state = c, open
	cn.now, _ = c.(nowSender)
	cn.rel, _ = c.(network.Releaser)
	f.log.Debug("storage connected", "epoch", cn.epoch, "remote", c.Remote(), "took", took, "waiting", len(cn.queue))
	f.later(func() { c.Receive(func(b []byte, err error) { f.onFrame(cn, b, err) }) })
	f.pump(cn)
}

// send hands r to its connection. Called with f.mu held, the connection
// open and room in its send window.
func (f *Forwarder) send(r *request) {
	cn := r.cn
	f.stats.Forwarded++
	f.met.forwarded.Inc()
	r.wired = true
	if cn.now != nil {
		if cn.now.SendNow(r.data, r.sentFn) {
			return // written: no callback follows
		}
	} else {
		cn.c.Send(r.data, r.sentFn)
	}
	r.sending = true
	cn.inflight++
}

// pump sends what waits on cn, as far as its send window allows. Called
// with f.mu held.
func (f *Forwarder) pump(cn *conn) {
	n := 0
	for cn.state == open && !cn.busy && cn.inflight < network.SendWindow && n < len(cn.queue) {
		r := cn.queue[n]
		cn.queue[n] = nil
		n++
		if !r.finished {
			f.send(r)
		}
	}
	if n > 0 {
		m := copy(cn.queue, cn.queue[n:])
		clear(cn.queue[m:])
		cn.queue = cn.queue[:m]
	}
}

// onSent is the send callback of r: its frame was written, or not. What
// it says of the connection counts even if r finished meanwhile (the
// storage may answer before the callback runs).
func (f *Forwarder) onSent(r *request, err error) {
	f.mu.Lock()
	cn := r.cn
	r.sending = false
	cn.inflight--
	switch {
	case cn.state != open:
	case errors.Is(err, network.ErrBusy):
		// The connection's window is full after all: r waits at the head
		// of the queue, and nothing is sent until a send completes (or, if
		// none is in flight, for a moment). So busy holds only while a
		// send is in flight or the retry timer is set.
		cn.busy = true
		if !r.finished {
			r.wired = false
			f.stats.Queued++
			f.met.queued.Inc()
			cn.queue = append(cn.queue, nil)
			copy(cn.queue[1:], cn.queue)
			cn.queue[0] = r
		}
		if cn.inflight == 0 && cn.retry == nil {
			cn.retry = f.cfg.Clock.AfterFunc(retryBusy, func() {
				f.mu.Lock()
				cn.retry = nil
				cn.busy = false
				f.pump(cn)
				f.unlock()
			})
		}
	case err != nil:
		f.lose(cn, fmt.Errorf("%w: %s: sending: %w", ErrStorageLost, f.cfg.Storage, err))
	default:
		cn.busy = false // a frame was written: there is room again
	}
	if r.finished {
		f.recycle(r)
	}
	f.pump(cn)
	f.unlock()
}

// onFrame takes a frame, or the end of the stream, from cn.
func (f *Forwarder) onFrame(cn *conn, b []byte, err error) {
	f.mu.Lock()
	switch {
	case err != nil:
		if cn.state == open {
			f.lose(cn, fmt.Errorf("%w: %s: %w", ErrStorageLost, f.cfg.Storage, err))
		}
	case cn.state != open:
		f.stats.Unmatched++
		f.met.unmatched.Inc()
		if cn.rel != nil {
			cn.rel.Release(b)
		}
	default:
		f.answer(cn, b)
	}
	f.unlock()
}

// answer matches an answer frame to its request. Called with f.mu held.
func (f *Forwarder) answer(cn *conn, b []byte) {
	a, err := block.ParseAnswer(b)
	if err != nil {
		if cn.rel != nil {
			cn.rel.Release(b)
		}
		// The stream cannot be trusted: nothing on it can be matched.
		f.lose(cn, fmt.Errorf("%w: %s: malformed answer: %w", ErrStorageLost, f.cfg.Storage, err))
		return
	}
	r := cn.pending[a.ID]
	if r == nil || !r.wired {
		// No such request, or one not sent yet: a storage cannot answer
		// what it never received.
		f.stats.Unmatched++
		f.met.unmatched.Inc()
		f.log.Debug("answer for no pending request dropped", "epoch", cn.epoch, "id", a.ID)
		if cn.rel != nil {
			cn.rel.Release(b)
		}
		return
	}
	f.stats.Answered++
	f.met.answered.Inc()
	if f.cfg.Metrics != nil {
		f.met.seconds.Observe((f.cfg.Clock.Now() - r.start).Seconds())
	}
	f.finish(r, Answer{Frame: b, rel: cn.rel}, nil)
}

// lose marks cn failed for err: its pending requests fail, and so will
// the later requests of its epoch. Called with f.mu held.
func (f *Forwarder) lose(cn *conn, err error) {
	if cn.state == failed || cn.state == closed {
		return
	}
	f.log.Warn("storage connection lost: failing the epoch's requests through this driver", "epoch", cn.epoch, "pending", len(cn.pending), "err", err)
	f.met.lost.Inc()
	f.drop(cn, failed, reasonLost, err)
	cn.err = err
}

// end closes cn for good (its epoch ended, or the forwarder closed),
// failing its pending requests with err. Called with f.mu held.
func (f *Forwarder) end(cn *conn, reason int, err error) {
	if cn.state == closed {
		return
	}
	if n := len(cn.pending); n > 0 {
		f.log.Info("epoch ended with requests pending at the storage: failing them", "epoch", cn.epoch, "pending", n)
	} else {
		f.log.Debug("epoch ended: closing its storage connection", "epoch", cn.epoch)
	}
	f.drop(cn, closed, reason, err)
}

// drop moves cn to state, fails every request pending on it and closes
// its connection. Called with f.mu held.
func (f *Forwarder) drop(cn *conn, state connState, reason int, err error) {
	cn.state = state
	for _, r := range cn.pending {
		f.count(reason)
		f.finish(r, Answer{}, err)
	}
	clear(cn.queue)
	cn.queue = cn.queue[:0]
	if cn.retry != nil {
		cn.retry.Stop()
		cn.retry = nil
	}
	if c := cn.c; c != nil {
		f.later(func() { c.Close() })
	}
}
