package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.b.Bytes())
}

// gate is an Exec that holds the requests it is told to hold until
// released, and counts how many run at once.
type gate struct {
	mu      sync.Mutex
	hold    int           // the next hold calls are held
	release chan struct{} // closed to release them
	held    atomic.Int32  // held now
	running atomic.Int32
	most    atomic.Int32 // most ever running at once
}

func newGate(hold int) *gate { return &gate{hold: hold, release: make(chan struct{})} }

func (g *gate) exec(fn func()) {
	g.mu.Lock()
	wait := g.hold > 0
	if wait {
		g.hold--
	}
	g.mu.Unlock()
	go func() {
		n := g.running.Add(1)
		for m := g.most.Load(); n > m && !g.most.CompareAndSwap(m, n); m = g.most.Load() {
		}
		if wait {
			g.held.Add(1)
			<-g.release
			g.held.Add(-1)
		}
		g.running.Add(-1)
		fn()
	}()
}

// value is a counter's or gauge's value.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// waitFor polls cond until it holds or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// rig is a store served over network.OS with its guard wired to the apply
// log, fenced at epoch 2 of group disk1 (members ft and drv-a).
type rig struct {
	t    *testing.T
	st   *Storage
	g    *guard.Guard
	srv  *Server
	addr string
	path string
	log  *syncBuffer
	reg  *prometheus.Registry
}

// listenAddrs are the addresses the server tests listen at.
func listenAddrs(t *testing.T) map[string]string {
	return map[string]string{"unix": "unix://" + filepath.Join(shortDir(t), "s.sock"), "tcp": "tcp://127.0.0.1:0"}
}

func newRig(t *testing.T, listen string, cfg ServerConfig) *rig {
	t.Helper()
	r := &rig{t: t, log: &syncBuffer{}, path: filepath.Join(t.TempDir(), "disk.img"), reg: prometheus.NewRegistry()}
	r.g = guard.New(guard.Config{Name: "storage", OnFence: func(group string, f guard.Fence) { r.st.Fenced(group, f) }})
	st, err := Open(Config{Path: r.path, Size: 1 << 20, Guard: r.g, Log: r.log})
	if err != nil {
		t.Fatal(err)
	}
	r.st = st
	r.fence(2)
	cfg.Storage, cfg.Network, cfg.Metrics, cfg.Name = st, network.OS{}, r.reg, "storage"
	if r.srv, err = NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	if r.addr, err = r.srv.Listen(listen); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.srv.Close()
		st.Close()
	})
	return r
}

func (r *rig) fence(e uint64) {
	r.t.Helper()
	if err := r.g.Fence(context.Background(), "disk1", guard.Fence{Epoch: e, Members: []proto.Ref{{ID: "ft", Incarnation: 3}, {ID: "drv-a", Incarnation: 1}}}); err != nil {
		r.t.Fatal(err)
	}
}

// applyLog flushes nothing: it reads what Close flushed.
func (r *rig) applyLog() []Applied {
	r.t.Helper()
	var out []Applied
	sc := bufio.NewScanner(bytes.NewReader(r.log.Bytes()))
	for sc.Scan() {
		var a Applied
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			r.t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// client is a resource connection's other end, as a driver holds it.
type client struct {
	t       *testing.T
	c       network.Conn
	answers chan block.Answer
	ended   chan error
	window  chan struct{} // a token per frame waiting to be written
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	return dialWith(t, addr, func(c network.Conn) network.Conn { return c })
}

func dialWith(t *testing.T, addr string, wrap func(network.Conn) network.Conn) *client {
	t.Helper()
	type result struct {
		c   network.Conn
		err error
	}
	done := make(chan result, 1)
	network.OS{}.Dial(addr, 5*time.Second, func(c network.Conn, err error) { done <- result{c, err} })
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	cl := &client{t: t, c: wrap(res.c), answers: make(chan block.Answer, 4096), ended: make(chan error, 1), window: make(chan struct{}, network.SendWindow)}
	cl.c.Receive(func(f []byte, err error) {
		if err != nil {
			cl.ended <- err
			return
		}
		a, err := block.ParseAnswer(f)
		if err != nil {
			t.Errorf("an answer that does not parse: %v", err)
			return
		}
		a.Data = slices.Clone(a.Data)
		cl.answers <- a
	})
	t.Cleanup(func() { cl.c.Close() })
	return cl
}

// sendRaw sends a frame, waiting for room in the send window.
func (cl *client) sendRaw(frame []byte) {
	cl.window <- struct{}{}
	cl.c.Send(frame, func(err error) {
		<-cl.window
		if err != nil {
			cl.t.Errorf("send: %v", err)
		}
	})
}

func (cl *client) send(r block.Request) { cl.sendRaw(block.AppendRequest(nil, r)) }

func (cl *client) recv() block.Answer {
	cl.t.Helper()
	select {
	case a := <-cl.answers:
		return a
	case err := <-cl.ended:
		cl.t.Fatalf("the connection ended: %v", err)
	case <-time.After(10 * time.Second):
		cl.t.Fatal("no answer within 10 s")
	}
	return block.Answer{}
}

// call sends r and waits for its answer.
func (cl *client) call(r block.Request) block.Answer {
	cl.t.Helper()
	cl.send(r)
	a := cl.recv()
	if a.ID != r.ID {
		cl.t.Fatalf("answer to %d for request %d", a.ID, r.ID)
	}
	return a
}

// TestServerRoundTrips: over unix and TCP sockets, every operation is
// applied and answered with its ID, reads see what writes, trims and
// zeroes did, and the metrics count them.
func TestServerRoundTrips(t *testing.T) {
	for name, addr := range listenAddrs(t) {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, addr, ServerConfig{})
			cl := dial(t, r.addr)
			data := bytes.Repeat([]byte("0123456789abcdef"), 512) // 8 KiB
			for _, tc := range []struct {
				name string
				req  block.Request
				data []byte // what a read must return
			}{
				{"write", block.Request{Op: block.OpWrite, Flags: block.FlagFUA, Length: 8192, Offset: 4096, Token: tokenOf(2), Data: data}, nil},
				{"read back", block.Request{Op: block.OpRead, Length: 8192, Offset: 4096, Token: tokenOf(2)}, data},
				{"flush", block.Request{Op: block.OpFlush, Token: tokenOf(2)}, nil},
				{"trim", block.Request{Op: block.OpTrim, Length: 100, Offset: 4096, Token: tokenOf(2)}, nil},
				{"zero", block.Request{Op: block.OpZero, Length: 1000, Offset: 8192, Token: tokenOf(2)}, nil},
				{"read after trim and zero", block.Request{Op: block.OpRead, Length: 8192, Offset: 4096, Token: tokenOf(2)},
					slices.Concat(make([]byte, 100), data[100:4096], make([]byte, 1000), data[5096:])},
				{"read at the end", block.Request{Op: block.OpRead, Length: 16, Offset: 1<<20 - 16, Token: tokenOf(2)}, make([]byte, 16)},
			} {
				tc.req.ID = uint64(100 + len(tc.name))
				a := cl.call(tc.req)
				if a.Status != block.StatusOK {
					t.Fatalf("%s: %s: %s", tc.name, a.Status, a.Data)
				}
				if tc.req.Op == block.OpRead && !bytes.Equal(a.Data, tc.data) {
					t.Fatalf("%s: read %d bytes, not what was written", tc.name, len(a.Data))
				}
			}
			if n := value(r.srv.met.requests[block.OpRead][block.StatusOK]); n != 3 {
				t.Errorf("reads counted ok: %v, want 3", n)
			}
			if n := value(r.srv.met.conns); n != 1 {
				t.Errorf("connections open: %v, want 1", n)
			}
		})
	}
}

// TestServerOutOfOrder: pipelined requests are served at once and
// answered as they finish, each with its ID: one held back is answered
// after those sent behind it.
func TestServerOutOfOrder(t *testing.T) {
	g := newGate(1)
	r := newRig(t, "tcp://127.0.0.1:0", ServerConfig{Exec: g.exec})
	cl := dial(t, r.addr)
	const n = 16
	for i := range uint64(n) {
		cl.send(block.Request{Op: block.OpWrite, Length: 8, Offset: 8 * i, ID: 1000 + i, Token: tokenOf(2), Data: []byte("abcdefgh")})
	}
	var ids []uint64
	for range n - 1 {
		a := cl.recv()
		if a.Status != block.StatusOK {
			t.Fatalf("request %d: %s: %s", a.ID, a.Status, a.Data)
		}
		ids = append(ids, a.ID)
	}
	close(g.release)
	last := cl.recv()
	if last.ID != 1000 || last.Status != block.StatusOK {
		t.Fatalf("the request held back: answer %d %s, want 1000 ok", last.ID, last.Status)
	}
	slices.Sort(ids)
	for i, id := range ids {
		if id != 1001+uint64(i) {
			t.Fatalf("answers before the held one: %v", ids)
		}
	}
}

// TestServerMaxInFlight: no more than MaxInFlight requests of a
// connection are served at once; the rest wait and are all served.
func TestServerMaxInFlight(t *testing.T) {
	for _, max := range []int{1, 3} {
		g := newGate(1 << 30)
		r := newRig(t, "tcp://127.0.0.1:0", ServerConfig{Exec: g.exec, MaxInFlight: max})
		cl := dial(t, r.addr)
		const n = 20
		for i := range uint64(n) {
			cl.send(block.Request{Op: block.OpRead, Length: 8, Offset: 8 * i, ID: i + 1, Token: tokenOf(2)})
		}
		waitFor(t, "the first requests to be held", func() bool { return int(g.held.Load()) == max })
		time.Sleep(20 * time.Millisecond) // the others had time to start, if they could
		if got := int(g.held.Load()); got != max {
			t.Fatalf("MaxInFlight %d: %d requests served at once", max, got)
		}
		close(g.release)
		seen := map[uint64]bool{}
		for range n {
			seen[cl.recv().ID] = true
		}
		if len(seen) != n {
			t.Fatalf("MaxInFlight %d: answers to %d requests of %d", max, len(seen), n)
		}
		if most := int(g.most.Load()); most > max {
			t.Fatalf("MaxInFlight %d: %d requests ran at once", max, most)
		}
	}
}

// TestServerFenced: a request whose token's epoch a fence ended is
// answered StatusFenced and never applied — sent after the fence, or
// received before it and waiting behind MaxInFlight when it came (the
// guard checks at the apply): neither the file nor the apply log shows
// it, and no write of the old epoch is logged after the fence.
func TestServerFenced(t *testing.T) {
	g := newGate(1)
	r := newRig(t, "unix://"+filepath.Join(shortDir(t), "s.sock"), ServerConfig{Exec: g.exec, MaxInFlight: 1})
	cl := dial(t, r.addr)
	// The first request is held in Exec, before its apply; the second
	// waits behind it.
	cl.send(block.Request{Op: block.OpWrite, Length: 4, Offset: 0, ID: 1, Token: tokenOf(2), Data: []byte("held")})
	cl.send(block.Request{Op: block.OpWrite, Length: 4, Offset: 4, ID: 2, Token: tokenOf(2), Data: []byte("wait")})
	waitFor(t, "the first request to be held", func() bool { return g.held.Load() == 1 })
	r.fence(3)
	close(g.release)
	for range 2 {
		if a := cl.recv(); a.Status != block.StatusFenced || !errors.Is(a.Err(), block.ErrFenced) {
			t.Fatalf("request %d of epoch 2, applied after the fence of 3: %s", a.ID, a.Status)
		}
	}
	if a := cl.call(block.Request{Op: block.OpWrite, Length: 4, Offset: 8, ID: 3, Token: tokenOf(2), Data: []byte("late")}); a.Status != block.StatusFenced {
		t.Fatalf("a write of epoch 2 sent after the fence of 3: %s", a.Status)
	}
	if a := cl.call(block.Request{Op: block.OpWrite, Length: 4, Offset: 12, ID: 4, Token: tokenOf(3), Data: []byte("new!")}); a.Status != block.StatusOK {
		t.Fatalf("a write of epoch 3: %s: %s", a.Status, a.Data)
	}
	r.srv.Close()
	r.st.Close()
	b, err := os.ReadFile(r.path)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b[:16]); got != "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00new!" {
		t.Fatalf("the file holds %q: a fenced write landed", got)
	}
	var log, refused []Applied
	for _, l := range r.applyLog() {
		if l.Op == "refused" {
			refused = append(refused, l)
		} else {
			log = append(log, l)
		}
	}
	if len(refused) != 3 || refused[0].Reason != "stale" || refused[0].Epoch != 2 || refused[0].Request != "write" {
		t.Fatalf("refusals in the apply log %+v, want the 3 stale writes", refused)
	}
	if len(log) != 3 || log[0].Op != "fence" || log[0].Epoch != 2 || log[1].Op != "fence" || log[1].Epoch != 3 ||
		log[2].Op != "write" || log[2].ID != 4 || log[2].Epoch != 3 || log[2].Group != "disk1" {
		t.Fatalf("apply log %+v, want the fences of 2 and 3, then write 4 of epoch 3", log)
	}
	if n := value(r.srv.met.requests[block.OpWrite][block.StatusFenced]); n != 3 {
		t.Errorf("writes counted fenced: %v, want 3", n)
	}
}

// shortDir is a temporary directory of a short path: a unix socket's is
// at most 107 bytes.
func shortDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "idc-storage")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestServerMalformed: a frame that is not a request is answered
// StatusInvalid — with the ID in its header when there is one, 0 when
// not — and the connection stays up; so is a read whose answer would not
// fit in a frame.
func TestServerMalformed(t *testing.T) {
	r := newRig(t, "tcp://127.0.0.1:0", ServerConfig{})
	cl := dial(t, r.addr)
	badOp := block.AppendRequest(nil, block.Request{Op: block.OpRead, Length: 4, ID: 77, Token: tokenOf(2)})
	badOp[1] = 99
	for _, tc := range []struct {
		name  string
		frame []byte
		id    uint64
	}{
		{"garbage", []byte("garbage"), 0},
		{"empty", []byte{}, 0},
		{"unknown op", badOp, 77},
		{"read too large", block.AppendRequest(nil, block.Request{Op: block.OpRead, Length: network.MaxFrame, ID: 78, Token: tokenOf(2)}), 78},
		{"bad token", block.AppendRequest(nil, block.Request{Op: block.OpRead, Length: 4, ID: 79, Token: []byte{9, 9}}), 79},
	} {
		cl.sendRaw(tc.frame)
		if a := cl.recv(); a.Status != block.StatusInvalid || a.ID != tc.id || !errors.Is(a.Err(), block.ErrInvalid) {
			t.Errorf("%s: answer %d %s (%s), want %d invalid", tc.name, a.ID, a.Status, a.Data, tc.id)
		}
	}
	if a := cl.call(block.Request{Op: block.OpRead, Length: 4, ID: 80, Token: tokenOf(2)}); a.Status != block.StatusOK {
		t.Fatalf("a good request after the bad ones: %s", a.Status)
	}
	if n := value(r.srv.met.requests[0][block.StatusInvalid]); n != 3 {
		t.Errorf("frames counted invalid: %v, want 3", n)
	}
}

// TestServerShutdown: Shutdown answers the requests waiting StatusShutdown
// (and those arriving meanwhile), waits for the one being served, whose
// answer is written, then closes the connections and stops listening; a
// Shutdown whose context ends first says so.
func TestServerShutdown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		release bool // the held request ends before the context
	}{{"clean", true}, {"context ends", false}} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGate(1)
			r := newRig(t, "tcp://127.0.0.1:0", ServerConfig{Exec: g.exec, MaxInFlight: 1})
			cl := dial(t, r.addr)
			for i := range uint64(3) {
				cl.send(block.Request{Op: block.OpWrite, Length: 4, Offset: 4 * i, ID: i + 1, Token: tokenOf(2), Data: []byte("data")})
			}
			waitFor(t, "the first request to be held", func() bool { return g.held.Load() == 1 })
			time.Sleep(10 * time.Millisecond) // the others arrive and wait
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			if !tc.release {
				ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
			}
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- r.srv.Shutdown(ctx) }()
			for range 2 {
				if a := cl.recv(); a.Status != block.StatusShutdown || (a.ID != 2 && a.ID != 3) || !errors.Is(a.Err(), block.ErrShutdown) {
					t.Fatalf("a waiting request: %d %s, want 2 or 3 shutdown", a.ID, a.Status)
				}
			}
			cl.send(block.Request{Op: block.OpRead, Length: 4, ID: 9, Token: tokenOf(2)})
			if a := cl.recv(); a.Status != block.StatusShutdown || a.ID != 9 {
				t.Fatalf("a request during the shutdown: %d %s", a.ID, a.Status)
			}
			if !tc.release {
				if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Shutdown with a request held past its context: %v", err)
				}
				close(g.release)
				return
			}
			select {
			case err := <-done:
				t.Fatalf("Shutdown returned (%v) while a request was being served", err)
			case <-time.After(20 * time.Millisecond):
			}
			close(g.release)
			if a := cl.recv(); a.Status != block.StatusOK || a.ID != 1 {
				t.Fatalf("the request being served: %d %s", a.ID, a.Status)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-cl.ended:
				if !errors.Is(err, io.EOF) {
					t.Fatalf("the connection ended with %v, want EOF", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the connection stayed open after Shutdown")
			}
			failed := make(chan error, 1)
			network.OS{}.Dial(r.addr, time.Second, func(c network.Conn, err error) {
				if c != nil {
					c.Close()
				}
				failed <- err
			})
			if err := <-failed; !errors.Is(err, network.ErrUnreachable) {
				t.Fatalf("dial after Shutdown: %v, want unreachable", err)
			}
			if _, err := r.srv.Listen("tcp://127.0.0.1:0"); !errors.Is(err, ErrServerClosed) {
				t.Fatalf("Listen after Shutdown: %v", err)
			}
		})
	}
}

// busyConn refuses every other Send with ErrBusy, as a connection whose
// send window is full does.
type busyConn struct {
	network.Conn
	n atomic.Int32
}

func (c *busyConn) Send(frame []byte, done func(error)) {
	if c.n.Add(1)%2 == 0 {
		go done(network.ErrBusy)
		return
	}
	c.Conn.Send(frame, done)
}

// TestServerBusy: answers refused for a full send window are sent again,
// and many more answers than a send window all arrive.
func TestServerBusy(t *testing.T) {
	r := newRig(t, "tcp://127.0.0.1:0", ServerConfig{})
	cl := dial(t, r.addr)
	// The server's end of the connection refuses every other answer.
	waitFor(t, "the connection to be served", func() bool {
		r.srv.mu.Lock()
		defer r.srv.mu.Unlock()
		return len(r.srv.conns) == 1
	})
	r.srv.mu.Lock()
	for c := range r.srv.conns {
		c.c = &busyConn{Conn: c.c}
	}
	r.srv.mu.Unlock()
	const n = 4 * network.SendWindow
	for i := range uint64(n) {
		cl.send(block.Request{Op: block.OpRead, Length: 512, Offset: 512 * i, ID: i + 1, Token: tokenOf(2)})
	}
	seen := map[uint64]bool{}
	for range n {
		a := cl.recv()
		if a.Status != block.StatusOK {
			t.Fatalf("request %d: %s", a.ID, a.Status)
		}
		seen[a.ID] = true
	}
	if len(seen) != n {
		t.Fatalf("answers to %d requests of %d", len(seen), n)
	}
}

func TestNewServerRefuses(t *testing.T) {
	st, err := Open(Config{Backing: NewMemory(4096), Size: 4096, Guard: guard.New(guard.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  ServerConfig
	}{
		{"no storage", ServerConfig{}},
		{"negative MaxInFlight", ServerConfig{Storage: st, MaxInFlight: -1}},
	} {
		if _, err := NewServer(tc.cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", tc.name, err)
		}
	}
	srv, err := NewServer(ServerConfig{Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Listen("tcp://127.0.0.1:0"); !errors.Is(err, ErrConfig) {
		t.Errorf("Listen without a network: %v, want ErrConfig", err)
	}
	srv, err = NewServer(ServerConfig{Storage: st, Network: network.OS{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Listen("ftp://x"); !errors.Is(err, network.ErrAddress) {
		t.Errorf("Listen at a bad address: %v, want network.ErrAddress", err)
	}
}
