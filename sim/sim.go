// Package sim is idc's deterministic simulator. It runs the real drivers
// — the member driver (internal/membership, what idc.Membership runs) with
// its channel driver (internal/channel), the coordinator's Candidate and
// Leader (what coordinator.Run runs), guarded resources (guard with the
// fence driver, internal/fencer), and with them the pure machines of
// core/ — over a simulated store, network and clocks, in a single
// goroutine, with no real time and no real I/O. The drivers reach the
// world only through store.Store, network.Network and clock.Clock; here
// those are a simulated etcd (client.go, txn.go, store.go), a simulated
// network (netconn.go) and each node's drifting local clock, whose
// answers, frames and timers are events of the node. One int64 seed
// decides everything through one PCG source: message delays and losses,
// watch delays, clock rates, the workload, and the nemesis (pauses,
// partitions, crashes, early lease revocation by the store, coordinator
// crashes, a middlebox on the channels).
//
// After every step the checks (G1–G6 and no-stale-write; see check.go)
// read the history; at the end of a run L1 and a bounded store are
// checked. A violation comes back as an error that errors.Is
// ErrViolation, with the seed and the last steps.
//
// With Config.Storage the run is the storage scenario (DESIGN §8) with
// its real drivers: the shared storage (storage.Storage on storage.Memory
// and storage.Server, its guard fenced by the fence driver with the disk
// as the writer), two driver domains whose channel handler is the
// forwarder (internal/forwarder), the multipath disk (internal/disk) with
// a transport over its membership's mesh, and the disk's client, which
// writes unique payloads, reads, and reconnects now and then (abandoning
// its requests and sending them again). The group is in fence or both
// mode, the storage its expected resource. Besides the nemesis' faults,
// the storage is paused, crashed and cut off, a driver's storage
// connections are held and their requests released late, and crashed
// domains restart. G5 is checked at the storage from its apply log,
// no-stale-write at the block level after every step; at the end every
// request of the client must have its outcome (L1) and every block hold
// its last acknowledged write (blocks).
//
// Files: clock.go (event queue, local clocks), client.go and txn.go (the
// store.Store and clock.Clock the drivers see), net.go (delays, loss,
// partitions, store calls), netconn.go (the network.Network the drivers
// see), store.go (the simulated etcd), domain.go, work.go and chat.go (the
// application around the member driver and its channels), resource.go
// (guarded resources), coord.go (the coordinator driver), faults.go
// (nemesis), storage.go, blockpath.go and blockclient.go (the storage
// scenario), history.go (history, trace), check.go (the checks).
package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/internal/disk"
	"github.com/idc-dev/idc/internal/forwarder"
	"github.com/idc-dev/idc/proto"
)

// Config is one simulation run. Zero fields take the defaults documented
// on each; Run validates the result.
type Config struct {
	// Seed decides everything.
	Seed int64
	// Domains is the number of domains (default 4).
	Domains int
	// Coordinators is the number of coordinators acting at once, 1 or 2
	// (default: 1 or 2, decided by the seed). With two, both act, as with
	// coordinator.Config.NoElection.
	Coordinators int
	// Election says whether coordinators campaign in the election
	// (coordinator.Candidate, as coordinator.Run does) or act without it
	// (as with NoElection): 1 campaign, -1 no election, 0 the seed decides.
	Election int
	// ElectionTTL is the election lease's TTL (default 2 s).
	ElectionTTL time.Duration
	// Mode is the group's mode (default: lease, fence or both, decided by
	// the seed).
	Mode proto.Mode
	// Resources is the number of guarded resources (Resource) in fence and
	// both modes: 0 lets the seed decide (1 or 2 in most runs, none in
	// some, where fence mode must wait departed members' leases out); -1
	// none. Lease mode has none.
	Resources int
	// Duration is how long faults are injected (default 20 s); then Quiet
	// (default Bound()) passes without faults before L1 is checked.
	Duration, Quiet time.Duration
	// TTL is the membership lease TTL (default 2 s) and Rho the clock-rate
	// drift bound (default 0.01): each node's clock runs at a rate drawn
	// from [1−Rho, 1+Rho].
	TTL time.Duration
	Rho float64
	// MemberMargin (default 250 ms) and CoordinatorMargin (default 500 ms)
	// are the lease safety margins, as in the real drivers' defaults.
	MemberMargin, CoordinatorMargin time.Duration
	// QuiesceTimeout is the coordinator's quiesce deadline (default 3 s).
	QuiesceTimeout time.Duration
	// OpTimeout bounds each store request of the drivers (default 1 s).
	OpTimeout time.Duration
	// WatchCheck is the drivers' watch watchdog interval (default 1 s).
	WatchCheck time.Duration
	// Damping is the coordinators' flap damping (default: 3 departures in
	// 1 min hold a domain back for 3 s, shorter than the real default of
	// 15 s so that runs stay short; the L1 bound includes the hold).
	Damping coordinator.Damping
	// Heartbeat and Misses are the channels' heartbeat interval and the
	// misses after which a silent peer is reported (default 200 ms and 3);
	// SetupTimeout how long a channel may take to open before its peer is
	// reported (default 2 s).
	Heartbeat    time.Duration
	Misses       int
	SetupTimeout time.Duration
	// RejoinDelay is the longest a fenced or departed domain waits before it
	// joins again with a new incarnation (default 1 s).
	RejoinDelay time.Duration
	// MaxDelay is the longest a slow message takes (default 0.4·TTL).
	MaxDelay time.Duration
	// MaxTxnOps and MaxRequestBytes are the simulated store's limits on a
	// transaction (etcd's --max-txn-ops, default 128, and
	// --max-request-bytes, 1.5 MiB): smaller by default (6 and 64 KiB) so
	// that runs with a few domains reach them.
	MaxTxnOps, MaxRequestBytes int
	// NoFaults turns the nemesis off (the workload still runs).
	NoFaults bool
	// Storage runs the storage scenario (DESIGN §8) instead of the
	// generic application: the shared storage (storage.Storage on
	// storage.Memory, storage.Server, its guard fenced by the fence
	// driver), two driver domains forwarding block requests to it
	// (internal/forwarder), the multipath disk (internal/disk) and the
	// disk's client (storage.go, blockpath.go, blockclient.go). Domains
	// and Resources are then ignored (three domains: driver-a, driver-b,
	// disk; the storage is the group's expected resource); Mode must be
	// fence or both (default: the seed decides).
	Storage bool
	// Blocks is the number of blocks of the storage scenario's disk
	// (default 6).
	Blocks int
	// TraceLen is how many of the last steps a violation shows (default 40).
	TraceLen int
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("sim: invalid config")

// WithDefaults returns c with zero fields set to their defaults (Quiet and
// Coordinators excepted: they depend on the rest and on the seed).
func (c Config) WithDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Domains == 0 {
		c.Domains = 4
	}
	def(&c.Duration, 20*time.Second)
	def(&c.TTL, 2*time.Second)
	if c.Rho == 0 {
		c.Rho = 0.01
	}
	def(&c.MemberMargin, 250*time.Millisecond)
	def(&c.CoordinatorMargin, 500*time.Millisecond)
	def(&c.QuiesceTimeout, 3*time.Second)
	def(&c.OpTimeout, time.Second)
	def(&c.WatchCheck, time.Second)
	def(&c.ElectionTTL, 2*time.Second)
	def(&c.RejoinDelay, time.Second)
	def(&c.Heartbeat, 200*time.Millisecond)
	def(&c.SetupTimeout, 2*time.Second)
	if c.Misses == 0 {
		c.Misses = 3
	}
	def(&c.Damping.Hold, 3*time.Second)
	def(&c.MaxDelay, c.TTL*2/5)
	if c.TraceLen == 0 {
		c.TraceLen = 40
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = 6
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = 64 << 10
	}
	if c.Blocks == 0 {
		c.Blocks = 6
	}
	if c.Storage {
		c.Domains = 3
	}
	return c
}

// Validate checks c after defaults.
func (c Config) Validate() error {
	switch {
	case c.Domains < 1 || c.Domains > 64:
		return fmt.Errorf("%w: %d domains (want 1..64)", ErrConfig, c.Domains)
	case c.Coordinators < 0 || c.Coordinators > 2:
		return fmt.Errorf("%w: %d coordinators (want 1 or 2, or 0 for the seed to decide)", ErrConfig, c.Coordinators)
	case c.Mode != "" && !c.Mode.Valid():
		return fmt.Errorf("%w: mode %q (want lease, fence or both)", ErrConfig, c.Mode)
	case c.Duration < 0 || c.Quiet < 0:
		return fmt.Errorf("%w: negative duration", ErrConfig)
	case c.MaxDelay <= 0 || c.OpTimeout <= 0 || c.RejoinDelay <= 0 || c.Heartbeat <= 0 || c.SetupTimeout <= 0 || c.Misses < 1:
		return fmt.Errorf("%w: delays and timeouts must be positive", ErrConfig)
	case c.TraceLen < 0:
		return fmt.Errorf("%w: negative trace length", ErrConfig)
	case c.Storage && c.Mode == proto.ModeLease:
		return fmt.Errorf("%w: the storage scenario runs in fence or both mode, not lease", ErrConfig)
	case c.Blocks < 1 || c.Blocks > 1024:
		return fmt.Errorf("%w: %d blocks (want 1..1024)", ErrConfig, c.Blocks)
	}
	if err := c.memberLease().Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if c.renewInterval() >= c.memberLease().Valid() {
		return fmt.Errorf("%w: renew interval %v is not below the lease validity %v", ErrConfig, c.renewInterval(), c.memberLease().Valid())
	}
	if c.CoordinatorMargin < c.MemberMargin {
		return fmt.Errorf("%w: coordinator margin %v below the members' %v", ErrConfig, c.CoordinatorMargin, c.MemberMargin)
	}
	return c.coordConfig().Validate()
}

func (c Config) memberLease() lease.Config {
	return lease.Config{TTL: c.TTL, Rho: c.Rho, Margin: c.MemberMargin}
}

func (c Config) renewInterval() time.Duration { return c.TTL / 5 }

func (c Config) coordConfig() coordinator.Config {
	return coordinator.Config{
		Group: group, Mode: c.Mode, QuiesceTimeout: c.QuiesceTimeout,
		Rho: c.Rho, Margin: c.CoordinatorMargin,
		Damping: c.Damping,
	}.WithDefaults()
}

// Bound is the L1 bound for c (after defaults): once faults stop, a new
// epoch with every live domain connects within detection (a lease TTL) +
// the quiesce deadline + the coordinator's lease wait (TTL·(1+ρ)+margin by
// a clock that may run slow) + the flap damping hold (by a slow clock too) +
// the time to notice a hung watch (2·WatchCheck, by a slow clock) +
// the rejoin delay + the slowest message still
// in flight + a store request timeout and the drivers' longest retry backoff
// (1 s) + a few store round trips + a channel that could not open or went
// silent at the end of the faults (setup timeout, heartbeat misses).
func (c Config) Bound() time.Duration {
	wait := lease.Config{TTL: c.TTL, Rho: c.Rho, Margin: c.CoordinatorMargin}.Wait()
	wait = time.Duration(float64(wait) / (1 - c.Rho))
	hold := time.Duration(float64(c.coordConfig().Damping.Hold) / (1 - c.Rho))
	watch := time.Duration(float64(2*c.WatchCheck) / (1 - c.Rho))
	// A leader that crashed or stalled at the end of the faults holds the
	// election until its lease expires; its successor notices within a
	// watch check.
	var election time.Duration
	if c.Election > 0 {
		election = c.ElectionTTL + c.WatchCheck + c.OpTimeout
	}
	channels := max(c.SetupTimeout, c.Heartbeat*time.Duration(c.Misses+1))
	// In the storage scenario, once the last epoch connected, the disk's
	// requests go through its path: a driver dials the storage (a dial
	// that fails fails the epoch's requests through it, whose path is
	// reported) and a request unanswered for the disk's timeout reports
	// its path; either is one more detection.
	var blocks time.Duration
	if c.Storage {
		blocks = disk.DefaultTimeout + forwarder.DefaultDialTimeout
	}
	return c.TTL + c.QuiesceTimeout + wait + hold + c.RejoinDelay + c.MaxDelay + c.OpTimeout + watch + election + channels + blocks + time.Second + 200*time.Millisecond
}

// maxSteps bounds a run: a driver that loops without time passing (a
// timer armed for a moment already past, a retry without backoff) is a
// bug, reported rather than run forever. Runs take some 10^4 steps.
const maxSteps = 2_000_000

// group is the one group simulated (the machines support several; the
// drivers keep per-group state where the real ones do).
const group = "g"

var keys = proto.Keys{}

// Faults counts the faults injected in a run, by kind.
type Faults struct {
	Pauses, Partitions, SlowLinks, Crashes, EarlyRevocations, CoordinatorCrashes, FaultReports, Leaves int
	HungWatches, NoLeader, Compactions, Suspends                                                       int
	// Resources: crashes, and writes held in the network and released late.
	ResourceCrashes, HeldWrites int
	// The storage scenario: drivers' storage connections held (their
	// requests released late), and the disk's client reconnecting (the
	// requests it had in flight abandoned and sent again).
	HeldConns, Reconnects int
	// Frame faults of the channels' middlebox (netconn.go).
	FrameDrops, FrameDups, FrameReplays, FrameSwaps int
}

// Total is the number of faults injected.
func (f Faults) Total() int {
	return f.Pauses + f.Partitions + f.SlowLinks + f.Crashes + f.EarlyRevocations + f.CoordinatorCrashes + f.FaultReports + f.Leaves +
		f.HungWatches + f.NoLeader + f.Compactions + f.Suspends + f.FrameDrops + f.FrameDups + f.FrameReplays + f.FrameSwaps +
		f.ResourceCrashes + f.HeldWrites + f.HeldConns + f.Reconnects
}

// Result summarises a run.
type Result struct {
	Seed         int64
	Coordinators int
	// Steps is the number of events executed.
	Steps int
	// Epochs is the number of epochs that connected (store writes).
	Epochs int
	// IOs counts the I/Os done and Refused those the machine refused.
	IOs, Refused int
	// Sent counts the messages and requests sent over channels, Delivered
	// those delivered (the rest were dropped: their epoch ended first).
	Sent, Delivered int
	// Resources is the number of guarded resources; Writes counts the
	// write requests sent to them, Applied those applied, Rejected those
	// their guards refused (on arrival or at the apply).
	Resources, Writes, Applied, Rejected int
	// Storage is what the storage scenario did (zero in other runs).
	Storage StorageResult
	Faults  Faults
	// Simulated is the simulated time the run covered.
	Simulated time.Duration
	// TraceHash hashes every step of the run: same seed, same hash.
	TraceHash uint64
	// Violation is the first violation (nil if none); Run also returns it.
	Violation error
}

// StorageResult is what a run of the storage scenario did.
type StorageResult struct {
	// The client's requests that completed, its reconnects and the
	// requests it sent again (after a reconnect or a restart of the disk).
	Writes, Reads, Flushes, Reconnects, Resubmitted int
	// At the storage: writes applied, requests refused by the guard, of
	// them writes of an ended epoch (the fence doing its job), and fences
	// that held.
	Applied, Refused, StaleRefused, Fences int
	// The disk's sendings, sendings again, paths reported, failovers.
	Sent, Resent, Reports, Failovers uint64
	// DiskRestarts counts the disk's processes after the first.
	DiskRestarts int
}

// Run runs one simulation. It returns the first violation of a guarantee
// as an error wrapping ErrViolation (see Violation), or a configuration
// error wrapping ErrConfig.
func Run(cfg Config) (Result, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return Result{Seed: cfg.Seed}, err
	}
	w := newWorld(cfg)
	w.run()
	res := Result{
		Seed: cfg.Seed, Coordinators: w.cfg.Coordinators, Steps: w.steps, Epochs: w.epochs,
		IOs: w.ios, Refused: w.refused, Sent: w.sent, Delivered: w.delivered, Faults: w.faults, Simulated: w.now,
		Resources: len(w.resources), Writes: w.writes, Applied: w.applied, Rejected: w.rejected,
		TraceHash: w.trace.hash, Violation: w.violation,
	}
	if w.storage != nil {
		res.Resources = 1
		res.Storage = w.storageResult()
	}
	if w.violation != nil {
		return res, w.violation
	}
	return res, nil
}

// node is the simulator's part of every node: its clock, its generation
// (events for an older generation are dropped), whether it crashed, and
// while it is paused the events it has not processed yet.
type node struct {
	id          NodeID
	name        string
	clock       clock
	gen         uint64
	down        bool // crashed (domains: for good; coordinators: until restart)
	pausedUntil time.Duration
	backlog     []*event
	// suspended is the local time the node's host spent suspended: a
	// clock that stops during suspend (CLOCK_MONOTONIC) is behind by it.
	suspended time.Duration
}

// World is one simulation run.
type World struct {
	cfg       Config
	rng       *rand.Rand
	now       time.Duration
	end       time.Duration
	seq       uint64
	q         queue
	nodes     []*node
	net       *network
	store     *Store
	coords    []*Coord
	domains   []*Domain
	resources []*Resource
	// The storage scenario's storage, disk and client (Config.Storage).
	storage      *StorageNode
	disk         *diskRole
	client       *blockClient
	storageStats StorageResult
	hist         *History
	checks       []Check
	// free holds events to reuse (World.after).
	free []*event
	// listeners and conns are the simulated network's (netconn.go).
	listeners map[string]*simListener
	conns     map[NodeID][]*simConn
	// renewers are each node's lease renewer (stream.go).
	renewers map[NodeID]*procStore
	trace    *trace
	nextID   uint64 // ops, watches, incarnations

	steps, epochs, ios, refused int
	sent, delivered             int
	writes, applied, rejected   int
	faults                      Faults
	violation                   error
}

func newWorld(cfg Config) *World {
	w := &World{
		cfg:   cfg,
		rng:   rand.New(rand.NewPCG(uint64(cfg.Seed), 0x1dc5eed)),
		hist:  &History{Mode: cfg.Mode},
		trace: newTrace(cfg.TraceLen),
	}
	if w.cfg.Coordinators == 0 {
		w.cfg.Coordinators = 1 + w.rng.IntN(2)
	}
	if w.cfg.Election == 0 {
		w.cfg.Election = []int{1, -1}[w.rng.IntN(2)]
	}
	switch {
	case w.cfg.Mode != "":
	case w.cfg.Storage:
		w.cfg.Mode = []proto.Mode{proto.ModeFence, proto.ModeBoth}[w.rng.IntN(2)]
	default:
		w.cfg.Mode = []proto.Mode{proto.ModeLease, proto.ModeFence, proto.ModeBoth}[w.rng.IntN(3)]
	}
	w.hist.Mode = w.cfg.Mode
	if w.cfg.Storage {
		w.cfg.Resources = 0 // the storage is the group's one resource
	} else if !w.cfg.Mode.UsesFence() || w.cfg.Resources < 0 {
		w.cfg.Resources = 0
	} else if w.cfg.Resources == 0 {
		w.cfg.Resources = []int{0, 1, 1, 2}[w.rng.IntN(4)]
	}
	w.hist.Resources = w.cfg.Resources
	if w.cfg.Storage {
		w.hist.Resources = 1
	}
	if w.cfg.Quiet == 0 {
		w.cfg.Quiet = w.cfg.Bound()
	}
	w.end = w.cfg.Duration + w.cfg.Quiet
	w.addNode("world", clock{rate: 1})
	w.addNode("store", clock{rate: 1})
	w.net = newNetwork(w)
	w.store = newStore(w)
	w.checks = DefaultChecks()
	for i := range w.cfg.Coordinators {
		n := w.addNode(fmt.Sprintf("c%d", i+1), w.drawClock())
		w.coords = append(w.coords, newCoord(w, n))
	}
	if w.cfg.Storage {
		w.newStorageScenario()
	} else {
		for i := range w.cfg.Domains {
			n := w.addNode(fmt.Sprintf("d%d", i+1), w.drawClock())
			w.domains = append(w.domains, newDomain(w, n, fmt.Sprintf("d%d", i+1)))
		}
	}
	for i := range w.cfg.Resources {
		n := w.addNode(fmt.Sprintf("r%d", i+1), w.drawClock())
		w.resources = append(w.resources, newResource(w, n, fmt.Sprintf("r%d", i+1)))
	}
	return w
}

func (w *World) addNode(name string, c clock) *node {
	n := &node{id: NodeID(len(w.nodes)), name: name, clock: c}
	w.nodes = append(w.nodes, n)
	return n
}

// drawClock draws a node's clock: a rate in [1−ρ, 1+ρ] (often at either
// end, where bugs live) and an arbitrary offset.
func (w *World) drawClock() clock {
	rho := w.cfg.Rho
	var rate float64
	switch w.rng.IntN(4) {
	case 0:
		rate = 1 - rho
	case 1:
		rate = 1 + rho
	default:
		rate = 1 - rho + 2*rho*w.rng.Float64()
	}
	return clock{rate: rate, offset: time.Duration(w.rng.Int64N(int64(1000 * time.Second)))}
}

// faulty reports whether faults are still being injected.
func (w *World) faulty() bool { return !w.cfg.NoFaults && w.now < w.cfg.Duration }

// uniform draws a duration in [lo, hi].
func (w *World) uniform(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(w.rng.Int64N(int64(hi-lo)+1))
}

func (w *World) chance(p float64) bool { return w.rng.Float64() < p }

func (w *World) id() uint64 { w.nextID++; return w.nextID }

// after schedules fn on node n, d of global time from now. Setting the
// event's off field cancels it.
//
// Events are recycled once they ran or were dropped (most of a run's
// allocations were events): keep a *event only while it is pending, and
// compare its seq with the one it had to know whether it still is.
func (w *World) after(n NodeID, d time.Duration, what string, a, b int64, fn func()) *event {
	w.seq++
	var ev *event
	if k := len(w.free); k > 0 {
		ev, w.free = w.free[k-1], w.free[:k-1]
	} else {
		ev = new(event)
	}
	*ev = event{at: w.now + d, seq: w.seq, node: n, gen: w.nodes[n].gen, what: what, a: a, b: b, fn: fn}
	w.q.push(ev)
	return ev
}

// recycle returns an event that ran or was dropped to the free list.
func (w *World) recycle(ev *event) {
	*ev = event{}
	w.free = append(w.free, ev)
}

// afterLocal schedules fn on node n once n's local clock has advanced by d.
func (w *World) afterLocal(n NodeID, d time.Duration, what string, a, b int64, fn func()) *event {
	return w.after(n, w.nodes[n].clock.globalDelay(d), what, a, b, fn)
}

// note adds a step of its own to the trace (for rare, interesting things).
func (w *World) note(n NodeID, format string, args ...any) {
	w.trace.add(w.now, w.nodes[n].name, fmt.Sprintf(format, args...), 0, 0)
}

func (w *World) run() {
	w.store.start()
	for _, c := range w.coords {
		c.start()
	}
	for _, r := range w.resources {
		r.start()
	}
	if w.storage != nil {
		w.storage.start()
		w.client.start()
	}
	for _, d := range w.domains {
		d.start()
	}
	w.startNemesis()
	for len(w.q) > 0 && w.violation == nil {
		ev := w.q.pop()
		if ev.at > w.end {
			break
		}
		w.now = ev.at
		w.exec(ev)
		if w.steps > maxSteps {
			w.fail("sim", fmt.Sprintf("more than %d steps by %v: something loops without time passing", maxSteps, w.now))
		}
	}
	if w.violation == nil {
		w.now = w.end
		if err := w.checkL1(); err != nil {
			w.fail("L1", err.Error())
		} else if err := w.checkBounded(); err != nil {
			w.fail("bounded", err.Error())
		} else if err := w.checkBlocks(); err != nil {
			w.fail("blocks", err.Error())
		}
	}
}

// exec runs one event: dropped if its node crashed or restarted since,
// held back while its node is paused.
func (w *World) exec(ev *event) {
	n := w.nodes[ev.node]
	if ev.off || n.down || n.gen != ev.gen {
		w.recycle(ev)
		return
	}
	if n.pausedUntil > w.now {
		n.backlog = append(n.backlog, ev)
		return
	}
	w.steps++
	w.hist.Now = w.now
	w.trace.add(w.now, n.name, ev.what, ev.a, ev.b)
	ev.fn()
	w.check()
	w.recycle(ev)
}

// check runs every check on the history after a step.
func (w *World) check() {
	if w.violation != nil {
		return
	}
	for _, c := range w.checks {
		if err := c.Observe(w.hist); err != nil {
			w.fail(c.Name(), err.Error())
			return
		}
	}
	w.hist.forget()
}

func (w *World) fail(guarantee, detail string) {
	if w.violation != nil {
		return
	}
	w.violation = &Violation{Guarantee: guarantee, At: w.now, Detail: detail, Seed: w.cfg.Seed, Trace: w.trace.String()}
}

// pause stops node n from processing anything until global time until;
// then it works off its backlog in order — timers, store answers and the
// application's own steps alike, as the goroutines of a process resumed
// from SIGSTOP run in no particular order.
func (w *World) pause(n *node, until time.Duration) {
	if n.pausedUntil > w.now || n.down {
		return
	}
	n.pausedUntil = until
	gen := n.gen
	w.after(worldNode, until-w.now, "resume "+n.name, 0, 0, func() {
		if n.gen != gen || n.down {
			return
		}
		n.pausedUntil = 0
		backlog := n.backlog
		n.backlog = nil
		w.trace.add(w.now, n.name, "resumed", int64(len(backlog)), 0)
		for _, ev := range backlog {
			if w.violation != nil {
				return
			}
			w.exec(ev)
		}
	})
}
