package multipath

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/idc-dev/idc/block"
)

// TestModel runs the machine in a small model of its world, many seeds
// over, and checks the property it exists for: no write lands after a
// newer write to the same block was acknowledged, and every acknowledged
// write is what its block holds once everything settled.
//
// The world: two paths (a, b) to a storage whose guard admits only the
// current epoch's token (its fence is raised as each change begins, as
// the fence driver does; a stale copy is refused); a coordinator that
// changes the epoch when a path is reported or at random, dropping the
// reported path and letting it back later; a network that delays, holds
// (releases much later, after the epoch changed) and loses requests and
// answers on a broken path; calls that end when their epoch ends; and a
// client that writes unique payloads (one write in flight per block),
// reads, and now and then abandons a request and sends it again, as qemu
// does after a reconnect.
func TestModel(t *testing.T) {
	seeds := 3000
	if testing.Short() {
		seeds = 300
	}
	var total modelStats
	for s := range seeds {
		st, err := runModel(uint64(s), 400)
		if err != nil {
			t.Fatalf("seed %d: %v", s, err)
		}
		total.add(st)
	}
	t.Logf("%+v", total)
	// The model must reach what it is meant to check.
	if total.staleRefused == 0 || total.failovers == 0 || total.replays == 0 || total.retries == 0 {
		t.Errorf("the model did not exercise every rule: %+v", total)
	}
}

// modelStats counts what a run exercised.
type modelStats struct {
	acked, staleRefused, failovers, replays, retries int
}

func (s *modelStats) add(o modelStats) {
	s.acked += o.acked
	s.staleRefused += o.staleRefused
	s.failovers += o.failovers
	s.replays += o.replays
	s.retries += o.retries
}

// modelMsg is a request or an answer in the model's network.
type modelMsg struct {
	at      time.Duration
	answer  bool
	id      uint64
	attempt uint32
	epoch   uint64 // of the call
	path    string
	status  block.Status
	failed  bool // an answer that is the call's failure
}

type modelReq struct {
	op      block.Op
	blk     int
	payload int // writes: the payload; reads: the least payload the read may see
	got     int // reads: what the storage returned (at its latest apply)
}

type model struct {
	rng  *rand.Rand
	m    *Machine
	now  time.Duration
	next uint64

	epoch     uint64 // decided
	connected bool
	members   []string
	dropped   map[string]bool // paths out of the group until they rejoin
	broken    map[string]bool // paths whose network holds and loses
	floor     uint64          // the storage's fence

	net     []modelMsg
	change_ time.Duration // a reported fault changes the epoch then (0: none pending)
	refence time.Duration // a restarted storage knows its fence again then
	reqs    map[uint64]*modelReq
	// client side
	inflight map[int]uint64 // block → the write in flight (client's view)
	acked    map[int]int    // block → latest acknowledged payload
	payload  int
	// storage
	blocks map[int]int
	stats  modelStats
}

func runModel(seed uint64, steps int) (modelStats, error) {
	w, err := newModel(seed)
	if err != nil {
		return modelStats{}, err
	}
	err = w.run(steps)
	return w.stats, err
}

func newModel(seed uint64) (*model, error) {
	m, err := New(Config{Timeout: 300 * time.Millisecond, RetryDelay: 50 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	return &model{
		rng: rand.New(rand.NewPCG(seed, 7)), m: m, dropped: map[string]bool{}, broken: map[string]bool{},
		reqs: map[uint64]*modelReq{}, inflight: map[int]uint64{}, acked: map[int]int{}, blocks: map[int]int{},
	}, nil
}

func (w *model) run(steps int) error {
	w.change()
	for range steps {
		w.now += time.Duration(w.rng.IntN(30)) * time.Millisecond
		if err := w.step(true); err != nil {
			return err
		}
	}
	// Heal: no more faults; let everything settle.
	clear(w.broken)
	clear(w.dropped)
	w.change()
	for i := 0; i < 2000 && (w.m.Pending() > 0 || len(w.net) > 0); i++ {
		w.now += 10 * time.Millisecond
		if err := w.step(false); err != nil {
			return err
		}
	}
	if n := w.m.Pending(); n > 0 {
		return fmt.Errorf("%d requests never finished", n)
	}
	for b, p := range w.acked {
		if w.blocks[b] != p {
			return fmt.Errorf("block %d holds payload %d, the last acknowledged write is %d", b, w.blocks[b], p)
		}
	}
	return nil
}

func (w *model) step(faults bool) error {
	r := w.rng.IntN(100)
	switch {
	case r < 35:
		w.submit()
	case r < 40 && faults:
		w.abandon()
	case r < 45 && faults:
		p := []string{"a", "b"}[w.rng.IntN(2)]
		w.broken[p] = !w.broken[p]
	case r < 48 && faults:
		w.change()
	case r < 50 && faults && w.refence == 0:
		// The storage restarts: it refuses everything until its fence
		// driver has read the fence again.
		w.floor, w.refence = 0, w.now+time.Duration(20+w.rng.IntN(200))*time.Millisecond
	case r < 54:
		for _, p := range []string{"a", "b"} {
			if w.dropped[p] && !w.broken[p] {
				delete(w.dropped, p) // it rejoins
				w.change()
				break
			}
		}
	}
	if w.refence != 0 && w.now >= w.refence {
		w.floor, w.refence = w.epoch, 0
	}
	if w.change_ != 0 && w.now >= w.change_ {
		w.change()
	}
	w.m.Tick(w.now)
	if err := w.drain(); err != nil {
		return err
	}
	return w.deliver()
}

// change is an epoch change: disconnect, fence, connect.
func (w *model) change() {
	if p, _ := w.m.Path(); p != "" && w.dropped[p] {
		w.stats.failovers++
	}
	if w.connected {
		w.m.Disconnected(w.epoch)
		// The calls of the epoch end; their frames may still be in the
		// network.
		for _, msg := range w.net {
			if !msg.answer && msg.epoch == w.epoch {
				w.m.Failed(msg.id, msg.attempt, false)
			}
		}
		w.net = slices.DeleteFunc(w.net, func(msg modelMsg) bool { return msg.answer && msg.epoch == w.epoch })
	}
	w.change_ = 0
	w.epoch++
	w.floor, w.refence = w.epoch, 0 // the fence holds before the epoch connects
	w.members = nil
	for _, p := range []string{"a", "b"} {
		if !w.dropped[p] {
			w.members = append(w.members, p)
		}
	}
	w.connected = true
	w.m.Connected(w.epoch, w.members, w.now)
}

func (w *model) submit() {
	w.next++
	id := w.next
	b := w.rng.IntN(4)
	if w.rng.IntN(3) == 0 || w.inflight[b] != 0 {
		w.reqs[id] = &modelReq{op: block.OpRead, blk: b, payload: w.acked[b]}
	} else {
		w.payload++
		w.reqs[id] = &modelReq{op: block.OpWrite, blk: b, payload: w.payload}
		w.inflight[b] = id
	}
	if err := w.m.Submit(id, w.now); err != nil {
		panic(err)
	}
}

// abandon abandons a write in flight and sends it again as a new
// request, as a client does after a reconnect.
func (w *model) abandon() {
	for b := range 4 {
		id := w.inflight[b]
		if id == 0 {
			continue
		}
		r := w.reqs[id]
		w.m.Abandon(id)
		w.next++
		w.stats.replays++
		w.reqs[w.next] = &modelReq{op: block.OpWrite, blk: b, payload: r.payload}
		w.inflight[b] = w.next
		if err := w.m.Submit(w.next, w.now); err != nil {
			panic(err)
		}
		return
	}
}

// drain carries out the machine's Ready.
func (w *model) drain() error {
	for {
		rd := w.m.Ready()
		if rd.Empty() {
			return nil
		}
		for _, rep := range rd.Reports {
			// The coordinator drops the suspect a little later, after
			// store round trips.
			if rep.Epoch == w.epoch && w.connected {
				w.dropped[rep.Path] = true
				if w.change_ == 0 {
					w.change_ = w.now + time.Duration(5+w.rng.IntN(500))*time.Millisecond
				}
			}
		}
		for _, s := range rd.Sends {
			if s.Epoch < w.epoch {
				// A report above changed the epoch: the call fails at once.
				w.m.Failed(s.ID, s.Attempt, false)
				continue
			}
			if !w.connected || s.Epoch != w.epoch || !slices.Contains(w.members, s.Path) {
				return fmt.Errorf("send %+v outside the connected epoch %d %v", s, w.epoch, w.members)
			}
			delay := time.Duration(1+w.rng.IntN(20)) * time.Millisecond
			if w.broken[s.Path] && w.rng.IntN(2) == 0 {
				delay += time.Duration(50+w.rng.IntN(3000)) * time.Millisecond // held
				if w.rng.IntN(2) == 0 {
					// The channel breaks: the call fails, the copy stays
					// in the network.
					w.net = append(w.net, modelMsg{at: w.now + time.Duration(1+w.rng.IntN(20))*time.Millisecond,
						answer: true, failed: true, id: s.ID, attempt: s.Attempt, epoch: s.Epoch, path: s.Path})
				}
			}
			w.net = append(w.net, modelMsg{at: w.now + delay, id: s.ID, attempt: s.Attempt, epoch: s.Epoch, path: s.Path})
		}
		for _, d := range rd.Done {
			r := w.reqs[d.ID]
			delete(w.reqs, d.ID)
			if d.Abandoned {
				continue
			}
			if d.Status != block.StatusOK {
				return fmt.Errorf("request %d ended %s", d.ID, d.Status)
			}
			switch r.op {
			case block.OpWrite:
				if w.acked[r.blk] > r.payload {
					return fmt.Errorf("write %d acknowledged after a newer one", r.payload)
				}
				w.acked[r.blk] = r.payload
				w.stats.acked++
				if w.inflight[r.blk] == d.ID {
					delete(w.inflight, r.blk)
				}
			case block.OpRead:
				if r.got < r.payload {
					return fmt.Errorf("read of block %d saw %d, older than %d acknowledged before it", r.blk, r.got, r.payload)
				}
			}
		}
	}
}

// deliver delivers the messages due.
func (w *model) deliver() error {
	slices.SortStableFunc(w.net, func(x, y modelMsg) int { return int(x.at - y.at) })
	for len(w.net) > 0 && w.net[0].at <= w.now {
		msg := w.net[0]
		w.net = w.net[1:]
		if msg.answer {
			if msg.failed {
				w.m.Failed(msg.id, msg.attempt, true)
			} else {
				w.m.Answered(msg.id, msg.attempt, msg.status, w.now)
			}
			if err := w.drain(); err != nil {
				return err
			}
			continue
		}
		// A request reaches the storage; its guard admits the fenced epoch only.
		r := w.reqs[msg.id]
		st := block.StatusFenced
		if msg.epoch == w.floor && r != nil {
			st = block.StatusOK
			switch r.op {
			case block.OpWrite:
				if w.acked[r.blk] > r.payload {
					return fmt.Errorf("stale write: payload %d of request %d (epoch %d via %s) landed on block %d after %d was acknowledged",
						r.payload, msg.id, msg.epoch, msg.path, r.blk, w.acked[r.blk])
				}
				w.blocks[r.blk] = r.payload
			case block.OpRead:
				r.got = w.blocks[r.blk]
			}
		}
		if st == block.StatusFenced {
			if msg.epoch < w.floor {
				w.stats.staleRefused++
			} else {
				w.stats.retries++
			}
		}
		if r == nil && msg.epoch == w.floor {
			return fmt.Errorf("request %d of the current epoch arrived after it finished", msg.id)
		}
		if w.broken[msg.path] && w.rng.IntN(2) == 0 {
			continue // the answer is lost
		}
		if msg.epoch == w.epoch && w.connected {
			w.net = append(w.net, modelMsg{at: w.now + time.Duration(1+w.rng.IntN(10))*time.Millisecond, answer: true,
				id: msg.id, attempt: msg.attempt, epoch: msg.epoch, path: msg.path, status: st})
		}
	}
	return nil
}
