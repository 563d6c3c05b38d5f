package sim

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/internal/fencer"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/storage"
)

// The storage scenario (DESIGN §8; Config.Storage): the shared block
// store, two driver domains forwarding the disk's block requests to it,
// the multipath disk, and a client of the disk (blockpath.go,
// blockclient.go), all real drivers on the simulated store, network and
// clocks.

// Names and sizes of the storage scenario.
const (
	storageName = "storage"
	// storageAddr is where the storage's server listens in the simulated
	// network (an address the forwarder's CheckAddress accepts).
	storageAddr = "tcp://storage:1"
	diskID      = "disk"
	driverA     = "driver-a"
	driverB     = "driver-b"
	// blockSize is the storage's block size and the client's write size.
	blockSize = 512
	// storageInFlight is the storage server's MaxInFlight per connection.
	storageInFlight = 8
	// serveMaxDelay bounds how long the storage takes to start serving a
	// request it received (a slow queue, while faults run, takes up to
	// slowQueueMax): requests of one connection may so be applied out of
	// order, as a real store serving them on several threads may.
	serveMaxDelay = 2 * time.Millisecond
	// While faults run, a request now and then waits in a slow queue, for
	// less than the disk's timeout mostly.
	storageSlowP   = 0.02
	storageSlowMax = 1500 * time.Millisecond
	storageFault   = 0.15 // of the nemesis' faults, one at the storage or its connections
)

// StorageNode is the storage scenario's shared block store: the real
// storage.Storage on storage.Memory (which, like a file, outlives a crash
// of the process), its guard fenced by the real fence driver
// (internal/fencer) with the disk as the fences' writer, and the real
// storage.Server on the simulated network, each request served as an
// event of the node (ServerConfig.Exec) after a delay of its own (so
// requests of one connection may be applied out of order, as a store
// serving them on several threads may apply them) — now and then, while
// faults run, much later, from a slow queue. The
// apply log, timed by the node's clock, is read as it is written: every
// write applied (and what it put in each block, read back from the
// memory), every fence that holds, every request the guard refused — the
// records the G5 and no-stale-write checks read.
type StorageNode struct {
	w   *World
	n   *node
	mem *storage.Memory
	st  *storage.Storage
	srv *storage.Server
	g   *guard.Guard
	drv *fencer.Driver
	log applyLog
}

func newStorageNode(w *World, n *node) *StorageNode {
	s := &StorageNode{w: w, n: n, mem: storage.NewMemory(int64(w.cfg.Blocks) * blockSize)}
	s.log.s = s
	return s
}

// start starts the storage's process: a guard that knows no fence, the
// store on the memory, its server and its fence driver.
func (s *StorageNode) start() {
	w := s.w
	var st *storage.Storage
	s.g = guard.New(guard.Config{Name: storageName, OnFence: func(group string, f guard.Fence) {
		st.Fenced(group, f)
		st.FlushLog()
	}})
	clk := nodeClock{w, s.n.id}
	st, err := storage.Open(storage.Config{
		Backing: s.mem, Size: int64(w.cfg.Blocks) * blockSize, BlockSize: blockSize, Guard: s.g,
		Log: &s.log, Now: func() int64 { return int64(clk.Now()) },
	})
	if err != nil {
		w.fail("sim", "storage: "+err.Error())
		return
	}
	s.st = st
	srv, err := storage.NewServer(storage.ServerConfig{
		Storage: st, Network: resourceNet{nodeNet{w, s.n.id}}, Exec: s.exec, MaxInFlight: storageInFlight, Name: storageName,
	})
	if err == nil {
		_, err = srv.Listen(storageAddr)
	}
	if err != nil {
		w.fail("sim", "storage server: "+err.Error())
		return
	}
	s.srv = srv
	drv, err := fencer.Start(fencer.Config{
		Resource: storageName, Groups: []string{group}, Writer: diskID,
		Store: storeClient{w, s.n.id}, Clock: clk, Keys: keys, Logger: quiet,
		OpTimeout: w.cfg.OpTimeout, WatchCheck: w.cfg.WatchCheck,
	}, s.g)
	if err != nil {
		w.fail("sim", "storage fencer: "+err.Error())
		return
	}
	s.drv = drv
}

// exec is the server's Exec: the request is served (checked by the guard
// and applied in one step, and answered) as an event of the node, a
// little later — now and then, while faults run, much later.
func (s *StorageNode) exec(fn func()) {
	w := s.w
	wait := w.uniform(0, serveMaxDelay)
	if w.faulty() && w.chance(storageSlowP) {
		wait = w.uniform(0, storageSlowMax)
	}
	st := s.st
	w.afterLocal(s.n.id, wait, "storage serves", 0, 0, func() {
		fn()
		st.FlushLog() // the apply log's line is read now, with the bytes applied
	})
}

// crash ends the storage's process: its connections reset, requests not
// yet served are lost, the guard forgets its fences; the memory keeps
// what was written. It restarts after restart (global).
func (s *StorageNode) crash(restart time.Duration) {
	w := s.w
	s.n.down = true
	s.n.gen++
	s.n.backlog, s.n.pausedUntil = nil, 0
	w.store.unwatch(s.n.id)
	w.resetConns(s.n.id)
	s.st, s.srv, s.g, s.drv = nil, nil, nil, nil
	w.after(worldNode, restart, "restart "+s.n.name, 0, 0, func() {
		s.n.down = false
		w.note(s.n.id, "storage restarts")
		s.start()
	})
}

// applyLog reads the storage's apply log as the storage writes it (the
// node flushes it after every request served and every fence).
type applyLog struct {
	s   *StorageNode
	buf []byte
}

func (l *applyLog) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.s.line(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) == 0 {
		l.buf = l.buf[:0:0]
	}
	return len(p), nil
}

// line takes one line of the apply log.
func (s *StorageNode) line(b []byte) {
	w := s.w
	var a storage.Applied
	if err := json.Unmarshal(b, &a); err != nil {
		w.fail("sim", fmt.Sprintf("storage: apply log line %q: %v", b, err))
		return
	}
	ref := proto.Ref{ID: a.Domain, Incarnation: a.Inc}
	st := &w.storageStats
	switch a.Op {
	case "fence":
		st.Fences++
		w.hist.add(Rec{Kind: HFenced, At: w.now, Epoch: a.Epoch, Note: storageName})
		w.note(s.n.id, "fence of epoch %d holds", a.Epoch)
	case "refused":
		st.Refused++
		if a.Request == "write" && (a.Reason == "stale" || a.Reason == "aborted") {
			st.StaleRefused++
			w.note(s.n.id, "refused a stale write: request %d of %v's epoch %d (%s)", a.ID, ref, a.Epoch, a.Reason)
		}
	case "write":
		st.Applied++
		w.hist.add(Rec{Kind: HApply, At: w.now, Ref: ref, Epoch: a.Epoch, Msg: a.ID, Note: storageName})
		w.hist.add(Rec{Kind: HApplied, At: w.now, Ref: ref, Epoch: a.Epoch, Msg: a.ID, Note: storageName})
		// What the write put in each block it covers, from the memory.
		for off := a.Offset &^ (blockSize - 1); off < a.Offset+uint64(a.Length); off += blockSize {
			buf := make([]byte, blockSize)
			s.mem.ReadAt(buf, int64(off))
			blk := int(off / blockSize)
			seq, err := decodePayload(blk, buf)
			rec := Rec{Kind: HWritten, At: w.now, Ref: ref, Epoch: a.Epoch, Op: a.ID, Block: blk, Msg: seq, Note: storageName}
			if err != nil {
				rec.Note = err.Error()
			}
			w.hist.add(rec)
		}
	default:
		w.fail("sim", fmt.Sprintf("storage applied a %s, which the client never sends (request %d)", a.Op, a.ID))
	}
}

// payload is what the client's write number seq puts in block blk: a
// 16-byte unit (magic, block, write) repeated over the block, so that
// every byte names the write and its block.
func payload(blk int, seq uint64) []byte {
	var unit [16]byte
	copy(unit[:4], "idcw")
	binary.BigEndian.PutUint32(unit[4:8], uint32(blk))
	binary.BigEndian.PutUint64(unit[8:], seq)
	return bytes.Repeat(unit[:], blockSize/len(unit))
}

// decodePayload returns the write block b holds (0: none, the block is
// still zeros), or an error if its bytes are not one write's payload for
// block blk.
func decodePayload(blk int, b []byte) (uint64, error) {
	if len(b) != blockSize {
		return 0, fmt.Errorf("block %d: %d bytes", blk, len(b))
	}
	if bytes.Count(b, []byte{0}) == len(b) {
		return 0, nil
	}
	if string(b[:4]) != "idcw" || int(binary.BigEndian.Uint32(b[4:8])) != blk {
		return 0, fmt.Errorf("block %d holds bytes that are no write's for it: % x", blk, b[:16])
	}
	seq := binary.BigEndian.Uint64(b[8:16])
	if !bytes.Equal(b, payload(blk, seq)) {
		return seq, fmt.Errorf("block %d holds a torn write (it begins as write %d's)", blk, seq)
	}
	return seq, nil
}

// injectStorage is the nemesis' share of faults for the storage scenario:
// pause or crash the storage, cut it off, or hold a driver's storage
// connection — the requests it forwarded wait in the network and are
// released late, after the disk failed over (DESIGN §8's own example).
func (w *World) injectStorage() {
	s := w.storage
	switch r := w.rng.Float64(); {
	case r < 0.2:
		if s.n.down {
			return
		}
		until := w.until(w.uniform(10*time.Millisecond, time.Duration(maxPauseTTL*float64(w.cfg.TTL))))
		w.faults.Pauses++
		w.note(s.n.id, "nemesis: pause for %v", until-w.now)
		w.pause(s.n, until)
	case r < 0.4:
		if s.n.down {
			return
		}
		w.faults.ResourceCrashes++
		restart := w.until(w.uniform(50*time.Millisecond, 3*time.Second)) - w.now
		w.note(s.n.id, "nemesis: storage crash, restart in %v", restart)
		s.crash(restart)
	case r < 0.5:
		if w.net.cut(s.n.id) {
			return
		}
		until := w.until(w.uniform(50*time.Millisecond, time.Duration(maxPartitionTTL*float64(w.cfg.TTL))))
		w.faults.Partitions++
		w.note(s.n.id, "nemesis: storage cut off for %v", until-w.now)
		w.net.partitioned[s.n.id] = until
	default:
		// Hold a driver's connections to the storage — those open and
		// those it opens meanwhile: the one the disk uses, mostly.
		d := w.domains[w.rng.IntN(2)]
		if dk := w.disk.dk; dk != nil && w.chance(0.8) {
			if p := dk.Stats().Path; p == driverB {
				d = w.domains[1]
			} else if p == driverA {
				d = w.domains[0]
			}
		}
		until := w.until(w.uniform(heldMin, 3*w.cfg.TTL))
		if w.net.holdStorage[d.n.id] >= until {
			return
		}
		w.net.holdStorage[d.n.id] = until
		for _, c := range w.conns[d.n.id] {
			if c.plain && !c.closed {
				c.holdUntil = max(c.holdUntil, until)
			}
		}
		w.faults.HeldConns++
		w.note(d.n.id, "nemesis: its storage connections held for %v", until-w.now)
	}
}

// newStorageScenario adds the storage scenario's nodes: the two driver
// domains and the disk (domains with their roles), the storage and the
// disk's client; and writes the group's configuration — its mode, and the
// storage as its expected resource — to the store, as idc group set
// would before anything starts.
func (w *World) newStorageScenario() {
	for _, id := range []string{driverA, driverB} {
		n := w.addNode("drv-"+id[len(id)-1:], w.drawClock())
		d := newDomain(w, n, id)
		d.role = &driverRole{w: w, d: d}
		w.domains = append(w.domains, d)
	}
	n := w.addNode("disk", w.drawClock())
	d := newDomain(w, n, diskID)
	w.disk = &diskRole{w: w, d: d}
	d.role = w.disk
	w.domains = append(w.domains, d)
	w.storage = newStorageNode(w, w.addNode("stor", w.drawClock()))
	w.client = newBlockClient(w, w.addNode("cli", clock{rate: 1}), w.disk)
	w.disk.client = w.client
	cfg, err := json.Marshal(proto.GroupConfig{Mode: w.cfg.Mode, Resources: []string{storageName}})
	if err != nil {
		panic(err)
	}
	w.store.apply([]Op{{Kind: OpPut, Key: keys.Config(group), Val: cfg}})
}

// storageResult sums up what the storage scenario did.
func (w *World) storageResult() StorageResult {
	r := w.storageStats
	cs := w.client.stats
	r.Writes, r.Reads, r.Flushes, r.Reconnects, r.Resubmitted = cs.Writes, cs.Reads, cs.Flushes, cs.Reconnects, cs.Resubmitted
	ds := w.disk.stats()
	r.Sent, r.Resent, r.Reports, r.Failovers = ds.Sent, ds.Resent, ds.Reports, ds.Failovers
	r.DiskRestarts = int(w.disk.proc) - 1
	return r
}

// checkBlocks is checked at the end of a storage scenario's run, after
// L1: every block holds the client's last acknowledged write to it, read
// from the storage's bytes (no acknowledged write was lost or overwritten
// by an older one).
func (w *World) checkBlocks() error {
	if w.storage == nil {
		return nil
	}
	var bad []string
	for b, want := range w.client.acked {
		buf := make([]byte, blockSize)
		w.storage.mem.ReadAt(buf, int64(b)*blockSize)
		got, err := decodePayload(b, buf)
		switch {
		case err != nil:
			bad = append(bad, err.Error())
		case got != want:
			bad = append(bad, fmt.Sprintf("block %d holds write %d, the last acknowledged is %d", b, got, want))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("after the quiet period: %s", strings.Join(bad, "; "))
}
