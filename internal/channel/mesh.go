package channel

import (
	"cmp"
	"fmt"
	"github.com/idc-dev/idc/internal/bufpool"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
	protocol "github.com/idc-dev/idc/core/channel"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/wire"
)

// maxHeld bounds the accepted connections whose handshake is not done.
const maxHeld = 1024

// Mesh is one membership's channels: a listener, and in each connected
// epoch one link to every peer of the epoch. Its methods are safe for
// concurrent use; no callback (Host, Handler, OnMessage, Op.Done) runs
// under its lock.
type Mesh struct {
	cfg  Config
	host Host
	log  *slog.Logger
	met  *metrics
	ln   network.Listener
	addr string
	me   proto.Ref

	mu        sync.Mutex
	after     []func() // run once the lock is released (rare paths)
	completed *opList  // to complete once the lock is released (nil: none)
	serial    uint64   // of the last link
	epoch     uint64   // the epoch of the links: connected, or ended if !connected
	connected bool
	stopped   bool
	members   map[string]proto.Member // of epoch
	links     map[string]*link        // of epoch, by peer ID
	held      map[*link]struct{}      // accepted, handshake not done
	inbox     queue[inMsg]            // messages of epoch, not yet received
	nextCall  uint64
	bufs      bufpool.Classes // frame buffers to reuse
	tick      clock.Timer
	tickFn    func()
	det       protocol.Detector
	stats     Stats
	peerBuf   []string   // sortedPeers'
	freeReqs  []*Request // answered, for reuse
	heldBuf   []*link    // sortedHeld's
}

type inMsg struct {
	l     *link
	data  []byte
	frame []byte // data's frame
}

// Message is a message received from a peer. Data is the receiver's; once
// done with it, the receiver may hand it back with Release, for a later
// message to be read into (a stream of large messages then allocates
// nothing). A message never released is garbage collected.
type Message struct {
	Epoch uint64
	From  string
	Data  []byte

	frame []byte
	rel   network.Releaser
}

// Release hands the message's bytes back to its connection for reuse and
// clears Data. Neither Data nor any slice of it may be used afterwards,
// and no copy of the message may be released again.
func (msg *Message) Release() {
	if msg.rel != nil {
		msg.rel.Release(msg.frame)
	}
	msg.Data, msg.frame, msg.rel = nil, nil, nil
}

// Stats counts what a mesh did, for tests and tools.
type Stats struct {
	// Delivered counts messages received and requests handed to the
	// handler.
	Delivered uint64
	// DroppedEpoch counts frames whose epoch was not the link's;
	// DroppedDuplicate frames already received (a sequence number not
	// above the last); DroppedEnded messages and requests whose epoch
	// ended before they were delivered.
	DroppedEpoch, DroppedDuplicate, DroppedEnded uint64
	// Faults counts peers reported lost; Protocol the channels closed for
	// a frame that broke the protocol.
	Faults, Protocol uint64
	// Opened counts channels opened.
	Opened uint64
	// Stalls counts heartbeat ticks that came more than Heartbeat/2 late
	// (this process was starved), at which nobody was suspected.
	Stalls uint64
}

// Start listens at cfg.Listen and returns the mesh; host is its
// membership. Nothing is connected until Connect.
func Start(cfg Config, host Host) (*Mesh, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Mesh{
		cfg: cfg, host: host,
		log:   cfg.Logger.With("group", cfg.Group, "domain", cfg.ID),
		met:   newMetrics(cfg.Metrics, cfg.Group, cfg.ID),
		me:    proto.Ref{ID: cfg.ID, Incarnation: cfg.Incarnation},
		links: map[string]*link{}, held: map[*link]struct{}{},
		bufs: bufpool.Classes{MinClass: 9}, // 512 bytes: a frame's header and a small message
	}
	m.tickFn = m.onTick
	m.det = protocol.Detector{Heartbeat: cfg.Heartbeat, Misses: cfg.Misses}
	ln, err := cfg.Network.Listen(cfg.Listen, m.accept)
	if err != nil {
		return nil, fmt.Errorf("%w: channels: %w", proto.ErrConfig, err)
	}
	m.ln, m.addr = ln, ln.Addr()
	if cfg.Advertise != "" {
		m.addr = cfg.Advertise
	}
	return m, nil
}

// Addr is the address peers dial.
func (m *Mesh) Addr() string { return m.addr }

// Stats returns the counts so far.
func (m *Mesh) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

func (m *Mesh) now() time.Duration { return m.cfg.Clock.Now() }

// unlock releases the lock, then completes the operations that
// completed and runs what was left for later.
func (m *Mesh) unlock() {
	if len(m.after) == 0 && m.completed == nil {
		m.mu.Unlock()
		return
	}
	after, completed := m.after, m.completed
	m.after, m.completed = nil, nil
	m.mu.Unlock()
	if completed != nil {
		for i, op := range completed.ops {
			completed.ops[i] = nil
			m.complete(op)
		}
		completed.ops = completed.ops[:0]
		opLists.Put(completed)
	}
	for _, f := range after {
		f()
	}
}

// opList is a list of operations to complete; the lists are pooled, so
// that completing operations allocates nothing.
type opList struct{ ops []*Op }

var opLists = sync.Pool{New: func() any { return new(opList) }}

// later runs f once the lock is released. Called with m.mu held.
func (m *Mesh) later(f func()) { m.after = append(m.after, f) }

// finish completes op with err once the lock is released: the operation
// ends at the host, then op.Done runs. Called with m.mu held.
func (m *Mesh) finish(op *Op, err error) {
	op.Err = err
	op.where = opDone
	if m.completed == nil {
		m.completed = opLists.Get().(*opList)
	}
	m.completed.ops = append(m.completed.ops, op)
}

func (m *Mesh) complete(op *Op) {
	m.host.End(op.epoch)
	if op.Done != nil {
		op.Done(op)
	}
}

// Connect opens the channels of epoch e, which the membership connected
// with members. Events older than the mesh's state are ignored, so the
// membership may call Connect and Disconnect from any goroutine.
func (m *Mesh) Connect(e uint64, members []proto.Member) {
	m.mu.Lock()
	defer m.unlock()
	if m.stopped || e <= m.epoch {
		return
	}
	if m.connected {
		m.endEpoch(wire.CloseEpochEnded)
	}
	m.epoch, m.connected = e, true
	m.members = make(map[string]proto.Member, len(members))
	now := m.now()
	for _, p := range members {
		m.members[p.ID] = p
		if p.ID == m.cfg.ID {
			continue
		}
		l := m.newLink(p, e)
		l.setupBy = now + m.cfg.SetupTimeout
		m.links[p.ID] = l
		switch {
		case p.Addr == "":
			l.state = lsNone
		case m.cfg.ID < p.ID:
			m.dial(l)
		default:
			l.state = lsAwait
		}
	}
	// Handshakes held for this epoch bind now; older ones are refused.
	for _, h := range m.sortedHeld() {
		switch {
		case h.state != lsHeld:
		case h.hello.Epoch == e:
			m.bind(h, h.hello)
		case h.hello.Epoch < e:
			m.refuse(h, wire.RefuseAhead, "that epoch ended")
		}
	}
	m.arm()
	m.log.Debug("channels of the epoch", "epoch", e, "peers", len(m.links))
}

// Disconnect closes the channels of epoch e: outstanding calls and sends
// fail with proto.ErrEpochEnded, messages not yet received are dropped.
func (m *Mesh) Disconnect(e uint64) {
	m.mu.Lock()
	defer m.unlock()
	if m.stopped || e != m.epoch || !m.connected {
		return
	}
	m.connected = false
	m.endEpoch(wire.CloseEpochEnded)
}

// Stop closes every channel and the listener, for good.
func (m *Mesh) Stop() {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.stopped, m.connected = true, false
	m.endEpoch(wire.CloseStopping)
	for _, h := range m.sortedHeld() {
		m.refuse(h, wire.RefuseClosing, "stopping")
	}
	if m.tick != nil {
		m.tick.Stop()
		m.tick = nil
	}
	m.unlock()
	m.ln.Close()
}

// endEpoch closes every link of the epoch and drops its messages. Called
// with m.mu held.
func (m *Mesh) endEpoch(code wire.CloseCode) {
	err := fmt.Errorf("%w: epoch %d of group %s ended", proto.ErrEpochEnded, m.epoch, m.cfg.Group)
	for _, id := range m.sortedPeers() {
		m.links[id].close(code, err)
	}
	clear(m.links)
	if n := m.inbox.len(); n > 0 {
		for m.inbox.len() > 0 {
			if in := m.inbox.pop(); in.l.rel != nil {
				in.l.rel.Release(in.frame)
			}
		}
		m.stats.DroppedEnded += uint64(n)
		m.met.dropped(dropEnded, n)
	}
}

// sortedPeers lists the peers of the epoch in a fixed order, in a slice
// the next call reuses. Called with m.mu held.
func (m *Mesh) sortedPeers() []string {
	ids := m.peerBuf[:0]
	for id := range m.links {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	m.peerBuf = ids
	return ids
}

// sortedHeld lists the held connections in a fixed order (the simulator
// must replay the same run from the same seed), in a slice the next call
// reuses. Called with m.mu held.
func (m *Mesh) sortedHeld() []*link {
	hs := m.heldBuf[:0]
	for h := range m.held {
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b *link) int { return cmp.Compare(a.serial, b.serial) })
	m.heldBuf = hs
	return hs
}

// arm sets the tick timer if links need it. Called with m.mu held.
func (m *Mesh) arm() {
	if m.tick != nil || m.stopped || len(m.links) == 0 && len(m.held) == 0 {
		return
	}
	m.det.Armed(m.now())
	m.tick = m.cfg.Clock.AfterFunc(m.cfg.Heartbeat/2, m.tickFn)
}

// onTick sends heartbeats, suspects silent peers and ends handshakes that
// took too long.
func (m *Mesh) onTick() {
	m.mu.Lock()
	defer m.unlock()
	m.tick = nil
	if m.stopped {
		return
	}
	now := m.now()
	// A late tick (a starved process) suspects nobody: see
	// protocol.Detector.
	stalled := m.det.Tick(now)
	if stalled {
		m.met.stalls.Inc()
		m.stats.Stalls++
	}
	for _, id := range m.sortedPeers() {
		l := m.links[id]
		switch l.state {
		case lsOpen:
			heartbeat, err := m.det.Check(&l.ch, now, stalled)
			if err != nil {
				m.met.suspect.Inc()
				l.fail(faultSilent, err, wire.CloseSuspect)
				continue
			}
			if heartbeat {
				l.write(wire.Heartbeat, 0, nil)
			}
		case lsDialing, lsHello, lsAwait, lsRetry:
			if m.det.Overdue(l.setupBy, now, stalled) {
				l.fail(faultSetup, fmt.Errorf("no channel within %v (%s)", m.cfg.SetupTimeout, l.state), wire.CloseSuspect)
			}
		}
	}
	for _, h := range m.sortedHeld() {
		if now > h.deadline {
			if h.state == lsHeld {
				m.refuse(h, wire.RefuseBehind, "not connected in that epoch yet")
			} else {
				h.drop(nil)
			}
		}
	}
	m.arm()
}

// queue is a FIFO that reuses its storage.
type queue[T any] struct {
	items []T
	head  int
}

func (q *queue[T]) len() int { return len(q.items) - q.head }

func (q *queue[T]) push(v T) {
	if q.head > 0 && len(q.items) == cap(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, v)
}

func (q *queue[T]) peek() T { return q.items[q.head] }

func (q *queue[T]) pop() T {
	var zero T
	v := q.items[q.head]
	q.items[q.head] = zero
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return v
}
