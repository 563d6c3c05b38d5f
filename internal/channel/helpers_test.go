package channel

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
)

// fakeHost is a membership as the mesh sees it: connected in one epoch
// at a time, counting operations per epoch and the faults reported.
type fakeHost struct {
	mu        sync.Mutex
	epoch     uint64
	connected bool
	ops       map[uint64]int
	faults    []string
	faulted   chan string
	ctxs      map[uint64]context.CancelFunc
	ctx       map[uint64]context.Context
}

func newFakeHost() *fakeHost {
	return &fakeHost{ops: map[uint64]int{}, faulted: make(chan string, 100), ctxs: map[uint64]context.CancelFunc{}, ctx: map[uint64]context.Context{}}
}

func (h *fakeHost) Begin(e uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.connected || e != h.epoch {
		return fmt.Errorf("%w: epoch %d (connected: %v in %d)", proto.ErrEpochEnded, e, h.connected, h.epoch)
	}
	h.ops[e]++
	return nil
}

func (h *fakeHost) End(e uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ops[e] <= 0 {
		panic(fmt.Sprintf("End(%d) without Begin", e))
	}
	h.ops[e]--
}

func (h *fakeHost) ReportFault(e uint64, peer string) {
	h.mu.Lock()
	h.faults = append(h.faults, fmt.Sprintf("%d/%s", e, peer))
	h.mu.Unlock()
	h.faulted <- peer
}

func (h *fakeHost) Context(e uint64) context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.ctx[e]; ok {
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.ctx[e], h.ctxs[e] = ctx, cancel
	if !h.connected || e != h.epoch {
		cancel()
	}
	return ctx
}

func (h *fakeHost) set(e uint64, connected bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.epoch, h.connected = e, connected
	for n, cancel := range h.ctxs {
		if !connected || n != e {
			cancel()
		}
	}
}

func (h *fakeHost) inFlight(e uint64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ops[e]
}

// node is a mesh with its fake host, as its membership would drive it.
type node struct {
	id   string
	inc  uint64
	host *fakeHost
	m    *Mesh
}

func (n *node) member() proto.Member {
	return proto.Member{ID: n.id, Incarnation: n.inc, Addr: n.m.Addr()}
}

// connect connects n in epoch e with members, as the membership does.
func (n *node) connect(e uint64, members ...*node) {
	var ms []proto.Member
	for _, x := range members {
		ms = append(ms, x.member())
	}
	n.host.set(e, true)
	n.m.Connect(e, ms)
}

func (n *node) disconnect(e uint64) {
	n.host.set(e, false)
	n.m.Disconnect(e)
}

// testConfig is a mesh configuration for tests, on net.
func testConfig(t testing.TB, id string, net network.Network, unix bool) Config {
	listen := "tcp://127.0.0.1:0"
	if unix {
		listen = "unix://" + filepath.Join(t.TempDir(), id+".sock")
	}
	return Config{
		Group: "g", ID: id, Incarnation: uint64(len(id)*1000 + int(id[0])),
		Network: net, Clock: clock.System(), Logger: testenv.Logger(t),
		Listen: listen, Heartbeat: 20 * time.Millisecond, Misses: 6, Window: 8, MaxMessage: 1 << 16,
		DialTimeout: time.Second, HandshakeTimeout: time.Second, SetupTimeout: 5 * time.Second,
	}
}

func newNode(t testing.TB, cfg Config) *node {
	t.Helper()
	h := newFakeHost()
	m, err := Start(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return &node{id: cfg.ID, inc: cfg.Incarnation, host: h, m: m}
}

// quiet is a logger that drops everything.
var quiet = slog.New(slog.DiscardHandler)

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// send sends data from n to peer in epoch e and waits for the outcome.
func send(n *node, e uint64, peer string, data []byte, call bool) ([]byte, error) {
	done := make(chan struct{})
	op := &Op{Done: func(*Op) { close(done) }}
	if call {
		n.m.Call(e, peer, data, op)
	} else {
		n.m.Send(e, peer, data, op)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		n.m.Cancel(op, context.DeadlineExceeded)
		<-done
	}
	return op.Resp, op.Err
}

// recv waits for the next message of epoch e at n.
func recv(t testing.TB, n *node, e uint64, timeout time.Duration) (Message, error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg, ok, err := n.m.Recv(e)
		if err != nil || ok {
			return msg, err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no message within %v", n.id, timeout)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
