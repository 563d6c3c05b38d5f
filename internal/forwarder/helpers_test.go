package forwarder

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/token"
)

// fakeStorage is a storage server for tests, over network.OS on a unix
// socket: it records every frame it receives, per connection, and answers
// each at once (auto) or holds it until the test answers.
type fakeStorage struct {
	t    *testing.T
	addr string
	ln   network.Listener
	auto bool // answer every request at once, StatusOK with answerData

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every event
	conns   []*fakeConn
}

// fakeConn is one connection the fake storage accepted.
type fakeConn struct {
	c      network.Conn
	frames [][]byte // copies of the frames received, in order
	ended  error    // how the connection ended (nil while open)
}

func newFakeStorage(t *testing.T, auto bool) *fakeStorage {
	t.Helper()
	s := &fakeStorage{t: t, auto: auto, changed: make(chan struct{})}
	ln, err := network.OS{}.Listen("unix://"+filepath.Join(t.TempDir(), "storage.sock"), s.accept)
	if err != nil {
		t.Fatal(err)
	}
	s.ln, s.addr = ln, ln.Addr()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, fc := range s.conns {
			fc.c.Close()
		}
	})
	return s
}

// answerData is what the auto mode answers a request with ID id.
func answerData(id uint64) []byte { return fmt.Appendf(nil, "answer to %d", id) }

func (s *fakeStorage) accept(c network.Conn) {
	fc := &fakeConn{c: c}
	s.mu.Lock()
	s.conns = append(s.conns, fc)
	s.notify()
	s.mu.Unlock()
	c.Receive(func(b []byte, err error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		defer s.notify()
		if err != nil {
			fc.ended = err
			return
		}
		fc.frames = append(fc.frames, bytes.Clone(b))
		if s.auto {
			r, err := block.Parse(b)
			if err != nil {
				s.t.Errorf("the storage received a malformed request: %v", err)
				return
			}
			c.Send(block.AppendAnswer(nil, block.Answer{Status: block.StatusOK, ID: r.ID, Data: answerData(r.ID)}), nil)
		}
	})
}

// notify wakes those waiting for an event. Called with s.mu held.
func (s *fakeStorage) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// wait waits until ok, called with s.mu held, holds.
func (s *fakeStorage) wait(what string, ok func() bool) {
	s.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		done, ch := ok(), s.changed
		s.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			s.t.Fatalf("storage: %s never happened", what)
		}
	}
}

// conn waits for the storage's i-th connection and returns it.
func (s *fakeStorage) conn(i int) *fakeConn {
	s.t.Helper()
	s.wait(fmt.Sprintf("connection %d", i), func() bool { return len(s.conns) > i })
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[i]
}

// waitFrames waits until fc received n frames and returns them.
func (s *fakeStorage) waitFrames(fc *fakeConn, n int) [][]byte {
	s.t.Helper()
	s.wait(fmt.Sprintf("%d frames", n), func() bool { return len(fc.frames) >= n })
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), fc.frames...)
}

// waitEnded waits until fc ended and returns how.
func (s *fakeStorage) waitEnded(fc *fakeConn) error {
	s.t.Helper()
	s.wait("the connection's end", func() bool { return fc.ended != nil })
	s.mu.Lock()
	defer s.mu.Unlock()
	return fc.ended
}

// numConns returns how many connections the storage accepted.
func (s *fakeStorage) numConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// answer sends an answer on fc.
func (fc *fakeConn) answer(st block.Status, id uint64, data []byte) {
	fc.c.Send(block.AppendAnswer(nil, block.Answer{Status: st, ID: id, Data: data}), nil)
}

// testToken is the encoded token the requests of the tests carry.
func testToken(epoch uint64) []byte {
	return token.Token{Group: "g", Epoch: epoch, Domain: "disk", Incarnation: 0x1234}.Append(nil)
}

// write returns an encoded write request.
func write(epoch, id uint64, data []byte) []byte {
	return block.AppendRequest(nil, block.Request{Op: block.OpWrite, Length: uint32(len(data)), Offset: 4096 * id, ID: id, Token: testToken(epoch), Data: data})
}

// read returns an encoded read request.
func read(epoch, id uint64, n uint32) []byte {
	return block.AppendRequest(nil, block.Request{Op: block.OpRead, Length: n, Offset: 4096 * id, ID: id, Token: testToken(epoch)})
}

// result is what a Forward's done received.
type result struct {
	a   Answer
	err error
}

// forward forwards req and returns a channel that receives its result.
func forward(f *Forwarder, epoch uint64, req []byte) chan result {
	ch := make(chan result, 1)
	f.Forward(epoch, req, func(a Answer, err error) { ch <- result{a, err} })
	return ch
}

// get waits for a result.
func get(t *testing.T, ch chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no result")
		return result{}
	}
}

// now returns a result if one is there already.
func now(ch chan result) (result, bool) {
	select {
	case r := <-ch:
		return r, true
	default:
		return result{}, false
	}
}

// answerOf decodes a result that must be an answer.
func answerOf(t *testing.T, r result) block.Answer {
	t.Helper()
	if r.err != nil {
		t.Fatalf("forward failed: %v", r.err)
	}
	a, err := block.ParseAnswer(r.a.Frame)
	if err != nil {
		t.Fatalf("answer %x: %v", r.a.Frame, err)
	}
	return a
}

// newForwarder returns a forwarder to addr over nw (network.OS if nil).
func newForwarder(t *testing.T, addr string, nw network.Network) *Forwarder {
	t.Helper()
	if nw == nil {
		nw = network.OS{}
	}
	f, err := New(Config{Storage: addr, Network: nw, Clock: clock.System(), Domain: "driver-a", Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// mustFail checks that r failed with an error wrapping want.
func mustFail(t *testing.T, what string, r result, want error) {
	t.Helper()
	if !errors.Is(r.err, want) {
		t.Fatalf("%s: err = %v (answer %x), want %v", what, r.err, r.a.Frame, want)
	}
}

// gatedNet wraps a network so that the connections it dials hold every
// send callback until the gate opens, have no SendNow (so every frame has
// a callback), refuse with network.ErrBusy a frame beyond
// network.SendWindow of frames whose callback has not run, as a
// connection must, and refuse the first busy frames with ErrBusy anyway.
// It records the most frames outstanding at once.
type gatedNet struct {
	network.Network

	mu      sync.Mutex
	open    bool
	held    []func()
	out     int // frames whose callback has not run
	maxOut  int
	busy    int // frames still to refuse with ErrBusy
	refused int // frames refused with ErrBusy
}

func (g *gatedNet) Dial(addr string, timeout time.Duration, done func(network.Conn, error)) {
	g.Network.Dial(addr, timeout, func(c network.Conn, err error) {
		if c != nil {
			c = &gatedConn{Conn: c, g: g}
		}
		done(c, err)
	})
}

// release opens the gate: held callbacks run, and later ones are not held.
func (g *gatedNet) release() {
	g.mu.Lock()
	g.open = true
	held := g.held
	g.held = nil
	g.mu.Unlock()
	for _, fn := range held {
		fn()
	}
}

func (g *gatedNet) stats() (maxOut, refused int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.maxOut, g.refused
}

type gatedConn struct {
	network.Conn
	g *gatedNet
}

func (c *gatedConn) Send(frame []byte, done func(error)) {
	g := c.g
	g.mu.Lock()
	if g.out >= network.SendWindow || g.busy > 0 {
		if g.busy > 0 {
			g.busy--
		}
		g.refused++
		g.mu.Unlock()
		go done(network.ErrBusy) // as network.OS: never within Send
		return
	}
	g.out++
	g.maxOut = max(g.maxOut, g.out)
	g.mu.Unlock()
	c.Conn.Send(frame, func(err error) {
		g.mu.Lock()
		fn := func() {
			g.mu.Lock()
			g.out--
			g.mu.Unlock()
			done(err)
		}
		if !g.open {
			g.held = append(g.held, fn)
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		fn()
	})
}
