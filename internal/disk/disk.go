// Package disk is the multipath disk's driver (DESIGN §8): the FT
// domain's virtual disk, which sends block requests (package block) to the
// shared storage through one driver domain at a time and fails over to the
// other when that path fails, following the pure machine of
// core/multipath. It holds each request's bytes until the request has an
// outcome, builds the request anew with the epoch's token for every
// sending, and gives the client the storage's answer.
//
// Like the other drivers it is event-driven: it reaches its paths only
// through a Transport and time only through clock.Clock, runs every event
// under one lock, and never blocks, so the deterministic simulator can run
// it unchanged. Backend adapts it to package nbd, so that stock clients
// use the disk.
package disk

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/core/multipath"
	"github.com/idc-dev/idc/internal/bufpool"
	"github.com/idc-dev/idc/token"
)

// Transport is how the disk reaches its paths: the real one calls over
// idc channels (Epoch.Call), the simulator's over its mesh.
type Transport interface {
	// Call sends req to peer as a call of epoch e and calls done once, with
	// the response or an error; done may run within Call (the disk calls
	// Call without its lock). req is not used after done (the disk reuses
	// its buffer), and resp need not outlive done: the disk copies what it
	// keeps of it, so the transport may reuse resp's buffer once done
	// returned.
	Call(e uint64, peer string, req []byte, done func(resp []byte, err error))
	// Report reports peer as a faulty path in epoch e (a fault report: the
	// coordinator drops it in the next epoch).
	Report(e uint64, peer string)
}

// Config configures a Disk.
type Config struct {
	// Size is the disk's size in bytes; required. It must not exceed the
	// storage's: the storage refuses requests beyond its end.
	Size uint64
	// Multipath configures the failover decisions: preferred paths, the
	// timeout after which a silent path is reported, the delay before a
	// refused request is sent again. Zero durations take DefaultTimeout
	// and DefaultRetryDelay.
	Multipath multipath.Config
	// Transport reaches the paths; required.
	Transport Transport
	// Clock is the disk's time; required.
	Clock clock.Clock
	// EpochEnded tells whether a call failed only because its epoch ended
	// (then the path is not reported); required.
	EpochEnded func(error) bool
	// FirstID is the ID of the disk's first request; later ones count up.
	// A process should start from a value no earlier process of the disk
	// used (the command uses the wall clock in nanoseconds), so that every
	// write in the storage's apply log has its own ID. Default 1.
	FirstID uint64
	// Logger receives the disk's logs; default discards.
	Logger *slog.Logger
}

// Defaults of Config.Multipath.
const (
	DefaultTimeout    = time.Second
	DefaultRetryDelay = 50 * time.Millisecond
)

// ErrConfig wraps every configuration error of New.
var ErrConfig = errors.New("idc: disk: invalid config")

// Result is a request's outcome: the storage's status and, for a read
// that succeeded, the data. Data is the disk's to give: the receiver may
// keep it.
type Result struct {
	Status block.Status
	Data   []byte
}

// Stats counts what the disk did.
type Stats struct {
	Epoch     uint64 // the connected epoch, or the last one
	Connected bool
	Path      string // the active path ("" if none)
	Pending   int    // requests without an outcome
	Sent      uint64 // sendings, re-sendings included
	Resent    uint64 // sendings after the first of a request
	Reports   uint64 // paths reported faulty
	Failovers uint64 // epochs whose path differs from the previous one's
	Done      uint64 // requests finished
}

// pending is a request waiting for its outcome.
type pending struct {
	req     block.Request // Data owned by the disk (a write's, from d.bufs)
	done    func(Result)
	attempt uint32 // its latest sending
	// A read's destination: the client's buffer (dst), if it gave one,
	// and the data of the answer to its latest sending (data: dst, or a
	// buffer of its own).
	dst, data []byte
	abandoned bool // its client went away: its buffer is no longer ours
}

// Disk is the multipath disk. Its methods are safe for concurrent use.
type Disk struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	m        *multipath.Machine
	reqs     map[uint64]*pending
	nextID   uint64
	epoch    uint64
	tok      []byte // the encoded token of the connected epoch
	path     string // the path of the last epoch that had one
	timer    clock.Timer
	timerAt  time.Duration
	timerGen uint64
	stats    Stats
	closed   bool
	bufs     bufpool.Pool // payloads and request frames, for reuse (512 bytes and up)
}

// New returns a disk; it does nothing until Connected.
func New(cfg Config) (*Disk, error) {
	if cfg.Multipath.Timeout == 0 {
		cfg.Multipath.Timeout = DefaultTimeout
	}
	if cfg.Multipath.RetryDelay == 0 {
		cfg.Multipath.RetryDelay = DefaultRetryDelay
	}
	if cfg.FirstID == 0 {
		cfg.FirstID = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.Size == 0:
		return nil, fmt.Errorf("%w: size 0", ErrConfig)
	case cfg.Transport == nil || cfg.Clock == nil || cfg.EpochEnded == nil:
		return nil, fmt.Errorf("%w: transport, clock and EpochEnded are required", ErrConfig)
	}
	m, err := multipath.New(cfg.Multipath)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d := &Disk{cfg: cfg, log: cfg.Logger, m: m, reqs: map[uint64]*pending{}, nextID: cfg.FirstID}
	d.bufs.MinClass = 9 // 512 bytes: the smallest request
	return d, nil
}

// Size returns the disk's size in bytes.
func (d *Disk) Size() uint64 { return d.cfg.Size }

// Submit starts a request: r's Op, Flags, Offset and Length (and Data for
// a write, which Submit copies: the caller may reuse it at once); Token
// and ID are the disk's to set. For a read, Data may be the buffer to
// read into (Length bytes): the disk copies the data into it as the
// storage's answer arrives, and the Result's Data is then that buffer;
// it is the disk's until done runs or Abandon returns. done is called
// once with the outcome, never within Submit and never under the disk's
// lock. It returns the request's ID, for Abandon.
func (d *Disk) Submit(r block.Request, done func(Result)) uint64 {
	var dst []byte
	switch {
	case r.Op == block.OpWrite:
		data := d.bufs.Get(len(r.Data))
		copy(data, r.Data)
		r.Data = data
	case r.Op == block.OpRead && len(r.Data) == int(r.Length) && r.Data != nil:
		dst, r.Data = r.Data, nil
	default:
		r.Data = nil
	}
	r.Token = nil
	d.mu.Lock()
	id := d.nextID
	d.nextID++
	r.ID = id
	d.reqs[id] = &pending{req: r, done: done, dst: dst}
	if err := d.m.Submit(id, d.cfg.Clock.Now()); err != nil {
		panic(err) // IDs are the disk's own and count up
	}
	d.unlock()
	return id
}

// Abandon says the client of request id went away: its outcome will not
// be delivered, but the request is still carried to one, and requests
// submitted from now on wait for it (core/multipath). Once it returns,
// the disk no longer writes into a read's buffer.
func (d *Disk) Abandon(id uint64) {
	d.mu.Lock()
	if p := d.reqs[id]; p != nil {
		p.abandoned, p.dst, p.data = true, nil, nil
	}
	d.m.Abandon(id)
	d.unlock()
}

// Connected says the disk's membership is connected in epoch e with tok
// as its token and these peers (the other members of the epoch: the
// driver domains).
func (d *Disk) Connected(e uint64, tok token.Token, peers []string) {
	d.mu.Lock()
	if e > d.epoch {
		d.epoch, d.tok = e, tok.Append(nil)
		d.m.Connected(e, peers, d.cfg.Clock.Now())
		if p, _ := d.m.Path(); p != "" {
			if d.path != "" && p != d.path {
				d.stats.Failovers++
			}
			d.path = p
			d.log.Info("disk: epoch connected", "epoch", e, "path", p, "pending", d.m.Pending())
		} else {
			d.log.Warn("disk: epoch connected with no path; requests wait", "epoch", e, "peers", peers, "pending", d.m.Pending())
		}
	}
	d.unlock()
}

// Disconnected says epoch e ended at the disk's membership.
func (d *Disk) Disconnected(e uint64) {
	d.mu.Lock()
	d.m.Disconnected(e)
	if e == d.epoch {
		d.tok = nil
	}
	d.unlock()
}

// Close ends the disk: every request without an outcome ends with
// StatusShutdown, and later ones at once.
func (d *Disk) Close() {
	d.mu.Lock()
	d.closed = true
	d.m.Close()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.unlock()
}

// Stats returns the disk's counters.
func (d *Disk) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Epoch = d.epoch
	s.Path, s.Connected = d.m.Path()
	s.Pending = d.m.Pending()
	return s
}

// answered handles the end of a sending.
func (d *Disk) answered(s multipath.Send, resp []byte, err error) {
	d.mu.Lock()
	switch {
	case err != nil:
		report := !d.cfg.EpochEnded(err)
		if report {
			d.log.Warn("disk: path failed", "path", s.Path, "epoch", s.Epoch, "request", s.ID, "err", err)
		}
		d.m.Failed(s.ID, s.Attempt, report)
	default:
		a, perr := block.ParseAnswer(resp)
		if perr == nil && a.ID != s.ID {
			perr = fmt.Errorf("answer for request %d", a.ID)
		}
		if perr != nil {
			// A path that garbles answers is faulty.
			d.log.Warn("disk: malformed answer", "path", s.Path, "epoch", s.Epoch, "request", s.ID, "err", perr)
			d.m.Failed(s.ID, s.Attempt, true)
			break
		}
		if p := d.reqs[s.ID]; p != nil && s.Attempt == p.attempt && a.Status == block.StatusOK && p.req.Op == block.OpRead && !p.abandoned {
			// The answer that counts (the machine takes only the latest
			// sending's): its data is copied now, as resp is the
			// transport's once this returns.
			if len(a.Data) == len(p.dst) {
				p.data = p.dst
			} else {
				p.data = make([]byte, len(a.Data))
			}
			copy(p.data, a.Data)
		}
		if a.Status != block.StatusOK && a.Status != block.StatusFenced {
			d.log.Debug("disk: request failed at the storage", "request", s.ID, "status", a.Status, "text", string(a.Data))
		}
		d.m.Answered(s.ID, s.Attempt, a.Status, d.cfg.Clock.Now())
	}
	d.unlock()
}

// tick is the event of the timer armed as generation gen.
func (d *Disk) tick(gen uint64) {
	d.mu.Lock()
	if gen != d.timerGen {
		d.mu.Unlock() // stopped too late; a later timer stands
		return
	}
	d.timer = nil
	if !d.closed {
		d.m.Tick(d.cfg.Clock.Now())
	}
	d.unlock()
}

// unlock takes what the machine decided, arms the timer, releases the
// lock, and then carries it out: reports and sendings through the
// transport, outcomes to their clients.
func (d *Disk) unlock() {
	var calls, done []func()
	for {
		rd := d.m.Ready()
		if rd.Empty() {
			break
		}
		for _, r := range rd.Reports {
			d.stats.Reports++
			d.log.Warn("disk: reporting a faulty path", "path", r.Path, "epoch", r.Epoch)
			calls = append(calls, func() { d.cfg.Transport.Report(r.Epoch, r.Path) })
		}
		for _, s := range rd.Sends {
			p := d.reqs[s.ID]
			if s.Attempt > 1 {
				d.stats.Resent++
			}
			d.stats.Sent++
			p.data, p.attempt = nil, s.Attempt
			r := p.req
			r.Token = d.tok
			frame := block.AppendRequest(d.bufs.Get(64 + len(d.tok) + len(r.Data))[:0], r)
			calls = append(calls, func() {
				d.cfg.Transport.Call(s.Epoch, s.Path, frame, func(resp []byte, err error) {
					d.answered(s, resp, err)
					d.bufs.Put(frame) // not used after done
				})
			})
		}
		for _, dn := range rd.Done {
			p := d.reqs[dn.ID]
			delete(d.reqs, dn.ID)
			d.stats.Done++
			if p != nil && p.req.Op == block.OpWrite {
				// Every sending copied the payload into its frame.
				d.bufs.Put(p.req.Data)
				p.req.Data = nil
			}
			if dn.Abandoned || p == nil {
				continue
			}
			res := Result{Status: dn.Status}
			if dn.Status == block.StatusOK {
				res.Data = p.data
			}
			f := p.done
			done = append(done, func() { f(res) })
		}
	}
	d.arm()
	d.mu.Unlock()
	for _, f := range calls {
		f()
	}
	for _, f := range done {
		f()
	}
}

// arm sets the timer to the machine's next deadline. Called with d.mu
// held.
func (d *Disk) arm() {
	at, ok := d.m.Deadline()
	if !ok || d.closed {
		return
	}
	if d.timer != nil {
		if d.timerAt <= at {
			return
		}
		d.timer.Stop()
	}
	d.timerAt = at
	d.timerGen++
	gen := d.timerGen
	d.timer = d.cfg.Clock.AfterFunc(max(at-d.cfg.Clock.Now(), 0), func() { d.tick(gen) })
}
