// Package multipath holds the decisions of the multipath disk (DESIGN §8)
// as a pure state, the way etcd's raft library holds a node's: no
// goroutines, clocks or I/O. The disk's driver (internal/disk) feeds it
// events — a client's request, an epoch connected or disconnected, an
// answer, a failed call, the time — and carries out what Ready returns:
// requests to send through a path, outcomes to give the client, paths to
// report as faulty.
//
// The rules, each the answer to a way a write could land stale or be lost:
//
//   - A request is sent through one path (a driver domain) in one connected
//     epoch, carrying that epoch's token. Its outcome is known only from
//     the answer to its latest sending; an answer to an earlier one is
//     ignored, since acknowledging it while a later copy is still in flight
//     would let that copy overwrite a newer write.
//   - A failed call, or one unanswered for Config.Timeout, makes its path
//     suspect: the machine reports it (once per epoch and path) and sends
//     nothing more of that request in this epoch. Sending it through the
//     other path at once would race the copy that may still be in the
//     failed path. It waits for the next connected epoch instead, whose
//     fence at the storage guarantees the old copy is applied before it or
//     never (G5), and is sent again there, through a path that did not
//     fail.
//   - A request the storage refused (its guard: fenced, or the storage
//     stopping) was not applied; it is sent again after Config.RetryDelay
//     in the same epoch, and in any case in the next one.
//   - An outcome is given to the client only from the storage's answer, so
//     a write is acknowledged only once the storage applied it.
//   - A request whose client went away (Abandon: an NBD connection closed,
//     and a client such as qemu with reconnect-delay will send it again on
//     a new connection) is still carried to a known outcome, and requests
//     submitted meanwhile wait until every abandoned one has its outcome,
//     so the abandoned copy cannot overtake a newer write.
//
// Nothing is dropped for want of a path: with no path connected, requests
// wait, as a disk with every path down queues its I/O.
package multipath

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/internal/mutation"
)

// Config configures a Machine.
type Config struct {
	// Paths names the driver domains usable as paths, in order of
	// preference. Empty: every peer of the epoch, by ID.
	Paths []string
	// Timeout is how long a sent request may go unanswered before its path
	// is reported faulty; required.
	Timeout time.Duration
	// RetryDelay is how long after the storage refused a request (fenced,
	// or stopping) it is sent again in the same epoch; required.
	RetryDelay time.Duration
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Timeout <= 0 || c.RetryDelay <= 0 {
		return fmt.Errorf("multipath: timeout %v and retry delay %v must be positive", c.Timeout, c.RetryDelay)
	}
	seen := map[string]bool{}
	for _, p := range c.Paths {
		if p == "" || seen[p] {
			return fmt.Errorf("multipath: path %q empty or listed twice", p)
		}
		seen[p] = true
	}
	return nil
}

// ErrState reports an event that does not fit the machine's state: a
// request ID submitted twice, or zero.
var ErrState = errors.New("multipath: event out of turn")

// Send asks the driver to send request ID through Path as a call of Epoch,
// with that epoch's token. Attempt numbers the sendings of one request:
// the answer must be reported with it.
type Send struct {
	ID      uint64
	Attempt uint32
	Epoch   uint64
	Path    string
}

// Done gives a request's outcome to its client: StatusOK, StatusIO or
// StatusInvalid from the storage, or StatusShutdown after Close.
type Done struct {
	ID     uint64
	Status block.Status
	// Abandoned: the client went away; the outcome is for nobody, but the
	// request is finished.
	Abandoned bool
}

// Report asks the driver to report Path as faulty in Epoch.
type Report struct {
	Epoch uint64
	Path  string
}

// Ready is what the driver must carry out, in order: reports, then sends,
// then outcomes.
type Ready struct {
	Reports []Report
	Sends   []Send
	Done    []Done
}

// Empty says whether there is nothing to do.
func (r Ready) Empty() bool { return len(r.Reports) == 0 && len(r.Sends) == 0 && len(r.Done) == 0 }

// state is where a request is.
type state uint8

const (
	held    state = iota // submitted while abandoned requests are unfinished
	waiting              // to be sent in the connected epoch (or the next)
	sent                 // sent in epoch; its answer is awaited
	retry                // refused by the storage; sent again at retryAt
	stuck                // its path failed in epoch; sent again in the next
)

var stateNames = [...]string{held: "held", waiting: "waiting", sent: "sent", retry: "retry", stuck: "stuck"}

func (s state) String() string { return stateNames[s] }

type request struct {
	id        uint64
	state     state
	attempt   uint32
	epoch     uint64 // of the latest sending
	path      string
	sentAt    time.Duration
	retryAt   time.Duration
	abandoned bool
}

// Machine is the multipath disk's state. It is not safe for concurrent
// use: its driver serialises the events.
type Machine struct {
	cfg       Config
	epoch     uint64 // the connected epoch, or the last one
	connected bool
	path      string          // active path in the connected epoch ("" if none)
	last      string          // the path of the last epoch that had one
	peers     []string        // of the connected epoch
	failed    map[string]bool // paths that failed since the last choice
	reported  map[string]bool // paths reported in the connected epoch
	reqs      map[uint64]*request
	orphans   int // abandoned requests without an outcome
	closed    bool
	ready     Ready
}

// New returns a machine; cfg must be valid.
func New(cfg Config) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Machine{cfg: cfg, failed: map[string]bool{}, reported: map[string]bool{}, reqs: map[uint64]*request{}}, nil
}

// Ready returns what to carry out and forgets it.
func (m *Machine) Ready() Ready {
	r := m.ready
	m.ready = Ready{}
	return r
}

// Path returns the active path ("" if none) and whether an epoch is
// connected.
func (m *Machine) Path() (string, bool) { return m.path, m.connected }

// Epoch returns the connected epoch, or the last one.
func (m *Machine) Epoch() uint64 { return m.epoch }

// Pending returns how many requests have no outcome yet.
func (m *Machine) Pending() int { return len(m.reqs) }

// Submit adds a client's request. IDs are unique and not zero.
func (m *Machine) Submit(id uint64, now time.Duration) error {
	if id == 0 || m.reqs[id] != nil {
		return fmt.Errorf("%w: request %d submitted twice or zero", ErrState, id)
	}
	if m.closed {
		m.ready.Done = append(m.ready.Done, Done{ID: id, Status: block.StatusShutdown})
		return nil
	}
	r := &request{id: id, state: waiting}
	if m.orphans > 0 && !mutation.On(mutation.NoReplayBarrier) {
		r.state = held
	}
	m.reqs[id] = r
	if r.state == waiting {
		m.send(r, now)
	}
	return nil
}

// Abandon says the client of request id went away. The request is still
// carried to an outcome, and requests submitted from now on wait for it.
// An unknown id (finished already) is ignored.
func (m *Machine) Abandon(id uint64) {
	r := m.reqs[id]
	if r == nil || r.abandoned {
		return
	}
	r.abandoned = true
	if r.state == held {
		// Never sent: it cannot overtake anything; it simply ends.
		m.finish(r, block.StatusShutdown, 0)
		return
	}
	m.orphans++
}

// Connected says epoch e is connected with these peers (the other members
// of the epoch, any order).
func (m *Machine) Connected(e uint64, peers []string, now time.Duration) {
	if e <= m.epoch && (m.connected || e < m.epoch) {
		return // not news
	}
	prev := m.last
	m.epoch, m.connected = e, true
	clear(m.reported)
	m.peers = slices.Clone(peers)
	m.path = m.choose(prev, peers)
	if m.path != "" {
		m.last = m.path
	}
	for _, r := range m.sorted() {
		if r.state != held {
			r.state = waiting
		}
	}
	for _, r := range m.sorted() {
		if r.state == waiting {
			m.send(r, now)
		}
	}
}

// choose picks the path for a new epoch: the previous one if it is still
// a peer and has not failed since it was chosen; else the first usable
// path by preference that has not failed; else the first usable one.
// Once a path is chosen the failures are forgotten: a path that failed
// long ago is as good as any when the other fails too.
func (m *Machine) choose(prev string, peers []string) string {
	var usable []string
	if len(m.cfg.Paths) > 0 {
		for _, p := range m.cfg.Paths {
			if slices.Contains(peers, p) {
				usable = append(usable, p)
			}
		}
	} else {
		usable = slices.Clone(peers)
		slices.Sort(usable)
	}
	if len(usable) == 0 {
		return ""
	}
	defer clear(m.failed)
	if prev != "" && slices.Contains(usable, prev) && !m.failed[prev] {
		return prev
	}
	for _, p := range usable {
		if !m.failed[p] {
			return p
		}
	}
	return usable[0]
}

// Disconnected says epoch e ended here. Requests sent in it wait for the
// next connected epoch; their calls end with errors the driver reports
// with Failed, or not at all.
func (m *Machine) Disconnected(e uint64) {
	if e != m.epoch || !m.connected {
		return
	}
	m.connected, m.path = false, ""
	for _, r := range m.reqs {
		if r.state != held {
			r.state = waiting
		}
	}
}

// Answered reports the storage's answer to a sending of request id.
func (m *Machine) Answered(id uint64, attempt uint32, st block.Status, now time.Duration) {
	r := m.current(id, attempt)
	if r == nil {
		return
	}
	switch st {
	case block.StatusOK, block.StatusIO, block.StatusInvalid:
		m.finish(r, st, now)
	default: // fenced, shutting down, or unknown: not applied
		if r.state == sent && m.connected && r.epoch == m.epoch {
			r.state, r.retryAt = retry, now+m.cfg.RetryDelay
		}
	}
}

// Failed reports that a sending of request id failed without an answer
// from the storage (the path's call failed). If report is true the path
// is reported faulty; the driver passes false when the call failed only
// because its epoch ended.
func (m *Machine) Failed(id uint64, attempt uint32, report bool) {
	r := m.current(id, attempt)
	if r == nil || r.state != sent {
		return
	}
	if !m.connected || r.epoch != m.epoch {
		return // the epoch ended: it waits for the next already
	}
	r.state = stuck
	if report {
		m.report(r.path)
	}
	if mutation.On(mutation.ResendAtOnce) {
		for _, p := range m.peers {
			if p != r.path {
				m.path = p
				r.state = waiting
				m.send(r, r.sentAt)
				return
			}
		}
	}
}

// Tick advances the machine's time: it reports the paths of requests
// unanswered for Config.Timeout and sends again refused requests whose
// delay is over.
func (m *Machine) Tick(now time.Duration) {
	if !m.connected {
		return
	}
	for _, r := range m.sorted() {
		switch {
		case r.state == sent && r.epoch == m.epoch && now-r.sentAt >= m.cfg.Timeout:
			m.report(r.path)
		case r.state == retry && now >= r.retryAt:
			r.state = waiting
			m.send(r, now)
		}
	}
}

// Deadline returns when Tick has something to do next, if ever.
func (m *Machine) Deadline() (time.Duration, bool) {
	var at time.Duration
	found := false
	if !m.connected {
		return 0, false
	}
	for _, r := range m.reqs {
		var t time.Duration
		switch {
		case r.state == sent && r.epoch == m.epoch && !m.reported[r.path]:
			t = r.sentAt + m.cfg.Timeout
		case r.state == retry:
			t = r.retryAt
		default:
			continue
		}
		if !found || t < at {
			at, found = t, true
		}
	}
	return at, found
}

// Close ends the machine: every request without an outcome is finished
// with StatusShutdown, and later ones at once.
func (m *Machine) Close() {
	m.closed = true
	for _, r := range m.sorted() {
		m.finish(r, block.StatusShutdown, 0)
	}
}

// current returns request id if attempt is its latest sending.
func (m *Machine) current(id uint64, attempt uint32) *request {
	r := m.reqs[id]
	if r == nil || attempt == 0 || r.attempt != attempt {
		return nil
	}
	return r
}

// send sends r through the active path, if the epoch has one that has
// not been reported faulty.
func (m *Machine) send(r *request, now time.Duration) {
	if !m.connected || m.path == "" || m.reported[m.path] {
		return
	}
	r.state, r.attempt, r.epoch, r.path, r.sentAt = sent, r.attempt+1, m.epoch, m.path, now
	m.ready.Sends = append(m.ready.Sends, Send{ID: r.id, Attempt: r.attempt, Epoch: r.epoch, Path: r.path})
}

// report reports path p faulty in the connected epoch, once.
func (m *Machine) report(p string) {
	if m.reported[p] {
		return
	}
	m.reported[p] = true
	m.failed[p] = true
	m.ready.Reports = append(m.ready.Reports, Report{Epoch: m.epoch, Path: p})
}

// finish gives r's outcome and forgets it; the last abandoned request to
// finish releases the held ones.
func (m *Machine) finish(r *request, st block.Status, now time.Duration) {
	delete(m.reqs, r.id)
	m.ready.Done = append(m.ready.Done, Done{ID: r.id, Status: st, Abandoned: r.abandoned})
	if !r.abandoned || r.state == held {
		return
	}
	m.orphans--
	if m.orphans > 0 || m.closed {
		return
	}
	for _, h := range m.sorted() {
		if h.state == held {
			h.state = waiting
			m.send(h, now)
		}
	}
}

// sorted returns the requests by ID (submission order).
func (m *Machine) sorted() []*request {
	out := make([]*request, 0, len(m.reqs))
	for _, r := range m.reqs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}
