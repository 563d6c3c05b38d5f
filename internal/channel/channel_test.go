package channel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/clock/clocktest"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/wire"
)

// pair starts two meshes, a (which dials: "a" < "b") and b, on net.
func pair(t *testing.T, netA, netB network.Network, unix bool, mod ...func(*Config)) (a, b *node) {
	ca, cb := testConfig(t, "a", netA, unix), testConfig(t, "b", netB, unix)
	for _, f := range mod {
		f(&ca)
		f(&cb)
	}
	return newNode(t, ca), newNode(t, cb)
}

func echoHandler(r *Request) { r.Reply(append([]byte("re:"), r.Data...), nil) }

// TestOpenSendCall: a channel opens in the epoch both sides connected,
// whichever connects first (the acceptor holds an early handshake);
// messages arrive in order and calls are answered, over TCP and unix
// sockets.
func TestOpenSendCall(t *testing.T) {
	for _, unix := range []bool{false, true} {
		for _, acceptorFirst := range []bool{false, true} {
			t.Run(fmt.Sprintf("unix=%v/acceptor-first=%v", unix, acceptorFirst), func(t *testing.T) {
				a, b := pair(t, network.OS{}, network.OS{}, unix, func(c *Config) { c.Handler = echoHandler })
				if acceptorFirst {
					b.connect(1, a, b)
					time.Sleep(20 * time.Millisecond)
					a.connect(1, a, b)
				} else {
					a.connect(1, a, b)
					time.Sleep(20 * time.Millisecond)
					b.connect(1, a, b)
				}
				for i := range 100 {
					if _, err := send(a, 1, "b", []byte(strconv.Itoa(i)), false); err != nil {
						t.Fatal(err)
					}
					msg, err := recv(t, b, 1, 5*time.Second)
					if err != nil || string(msg.Data) != strconv.Itoa(i) || msg.From != "a" || msg.Epoch != 1 {
						t.Fatalf("message %d: %+v, %v", i, msg, err)
					}
				}
				for _, from := range []*node{a, b} {
					peer := map[string]string{"a": "b", "b": "a"}[from.id]
					resp, err := send(from, 1, peer, []byte("x"), true)
					if err != nil || string(resp) != "re:x" {
						t.Fatalf("call from %s: %q, %v", from.id, resp, err)
					}
				}
				// A handler's operation ends right after its reply is
				// written, which the caller may read first.
				waitFor(t, 5*time.Second, "no operation left in flight", func() bool { return a.host.inFlight(1) == 0 && b.host.inFlight(1) == 0 })
				if s := b.m.Stats(); s.Opened != 1 || s.Faults != 0 {
					t.Fatalf("b: %+v", s)
				}
			})
		}
	}
}

// TestBackpressure: a receiver that takes nothing stops its sender after
// Window messages; taking them lets the sender go on. Nothing queues
// without bound.
func TestBackpressure(t *testing.T) {
	a, b := pair(t, network.OS{}, network.OS{}, true)
	a.connect(1, a, b)
	b.connect(1, a, b)
	window := a.m.cfg.Window
	var mu sync.Mutex
	done := 0
	ops := make([]*Op, 3*window)
	for i := range ops {
		ops[i] = &Op{Done: func(*Op) { mu.Lock(); done++; mu.Unlock() }}
		a.m.Send(1, "b", []byte{byte(i)}, ops[i])
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return done }
	waitFor(t, 5*time.Second, "the first window sent", func() bool { return count() == window })
	time.Sleep(50 * time.Millisecond)
	if n := count(); n != window {
		t.Fatalf("%d sends completed with the receiver taking nothing, want the window %d", n, window)
	}
	if n := a.host.inFlight(1); n != 2*window {
		t.Fatalf("%d sends in flight at the sender, want %d: a blocked send is an operation", n, 2*window)
	}
	for i := range 3 * window {
		msg, err := recv(t, b, 1, 5*time.Second)
		if err != nil || msg.Data[0] != byte(i) {
			t.Fatalf("message %d: %v, %v", i, msg.Data, err)
		}
	}
	waitFor(t, 5*time.Second, "every send completed", func() bool { return count() == 3*window })
}

// TestEpochEnd: at disconnect, calls outstanding fail with
// ErrEpochEnded, the handler's context ends (its operation lasts until it
// replies), messages not taken are dropped and counted, and the next
// epoch opens new channels without anyone redialing by hand.
func TestEpochEnd(t *testing.T) {
	started, release := make(chan *Request, 1), make(chan struct{})
	a, b := pair(t, network.OS{}, network.OS{}, false, func(c *Config) {
		c.Handler = func(r *Request) {
			started <- r
			go func() { <-release; r.Reply([]byte("late"), nil) }()
		}
	})
	a.connect(1, a, b)
	b.connect(1, a, b)
	if _, err := send(a, 1, "b", []byte("m"), false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b has the message", func() bool { return b.m.Waiting(1) == 1 })
	callDone := make(chan error, 1)
	go func() { _, err := send(a, 1, "b", []byte("q"), true); callDone <- err }()
	r := <-started
	if b.host.inFlight(1) != 1 {
		t.Fatalf("the running handler is not an operation at b")
	}
	a.disconnect(1)
	if err := <-callDone; !errors.Is(err, proto.ErrEpochEnded) {
		t.Fatalf("call outstanding at disconnect: %v, want ErrEpochEnded", err)
	}
	b.disconnect(1)
	select {
	case <-r.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context did not end")
	}
	if _, _, err := b.m.Recv(1); !errors.Is(err, proto.ErrEpochEnded) {
		t.Fatalf("Recv after disconnect: %v", err)
	}
	if s := b.m.Stats(); s.DroppedEnded != 1 || s.Delivered != 1 {
		t.Fatalf("b: %+v, want the message not taken dropped and the request delivered", s)
	}
	if b.host.inFlight(1) != 1 {
		t.Fatal("the handler's operation ended before it replied")
	}
	close(release)
	waitFor(t, 5*time.Second, "the handler's operation ended", func() bool { return b.host.inFlight(1) == 0 })
	if a.host.inFlight(1) != 0 {
		t.Fatal("the call's operation did not end")
	}
	if len(a.host.faults)+len(b.host.faults) != 0 {
		t.Fatalf("an epoch's end reported faults: %v %v", a.host.faults, b.host.faults)
	}
	b.connect(2, a, b)
	a.connect(2, a, b)
	if _, err := send(b, 2, "a", []byte("hi"), false); err != nil {
		t.Fatal(err)
	}
	if msg, err := recv(t, a, 2, 5*time.Second); err != nil || string(msg.Data) != "hi" || msg.Epoch != 2 {
		t.Fatalf("epoch 2: %+v, %v", msg, err)
	}
}

// TestG2_FaultyTransport: over a transport that drops, duplicates and
// reorders frames and slips in stale frames of earlier connections (with
// the sequence number expected next), no message is ever delivered in an
// epoch other than the one it was sent in; stale and duplicate frames are
// dropped and counted, and a broken stream is reported as a fault.
func TestG2_FaultyTransport(t *testing.T) {
	fa, fb := newFaultyNet(network.OS{}, 1), newFaultyNet(network.OS{}, 2)
	for _, f := range []*faultyNet{fa, fb} {
		f.dup, f.replay, f.drop, f.reorder = 0.02, 0.05, 0.0005, 0.0005
	}
	a, b := pair(t, fa, fb, true, func(c *Config) { c.Logger = quiet })
	const epochs, perEpoch = 30, 200
	delivered, faults := 0, 0
	for e := uint64(1); e <= epochs; e++ {
		for len(a.host.faulted)+len(b.host.faulted) > 0 { // of the epoch before
			select {
			case <-a.host.faulted:
			case <-b.host.faulted:
			}
		}
		if e%2 == 0 {
			b.connect(e, a, b)
			a.connect(e, a, b)
		} else {
			a.connect(e, a, b)
			b.connect(e, a, b)
		}
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			for i := range perEpoch {
				if _, err := send(a, e, "b", fmt.Appendf(nil, "%d:%d", e, i), false); err != nil {
					return // the stream broke: the peer was reported
				}
			}
		}()
		deadline := time.Now().Add(5 * time.Second)
	receive:
		for got := 0; got < perEpoch && time.Now().Before(deadline); {
			msg, ok, err := b.m.Recv(e)
			switch {
			case err != nil:
				t.Fatal(err)
			case !ok:
				select {
				case <-b.host.faulted:
					faults++
					break receive
				case <-a.host.faulted:
					faults++
					break receive
				default:
				}
				time.Sleep(50 * time.Microsecond)
				continue
			}
			sentIn, _, _ := strings.Cut(string(msg.Data), ":")
			if sentIn != strconv.FormatUint(e, 10) || msg.Epoch != e {
				t.Fatalf("G2: message %q, sent in epoch %s, delivered in epoch %d", msg.Data, sentIn, e)
			}
			got++
			delivered++
		}
		a.disconnect(e)
		b.disconnect(e)
		<-sent
	}
	sa, sb := a.m.Stats(), b.m.Stats()
	t.Logf("delivered %d in %d epochs; b dropped %d stale, %d duplicate, %d ended; %d faults; transport: %d replayed, %d duplicated, %d dropped, %d swapped",
		delivered, epochs, sb.DroppedEpoch, sb.DroppedDuplicate, sb.DroppedEnded, faults, fb.replayed, fb.duplicated, fb.dropped, fb.swapped)
	if sb.DroppedEpoch == 0 || sb.DroppedDuplicate == 0 || delivered < epochs*perEpoch/2 {
		t.Fatalf("the test did not exercise the checks: %+v %+v", sa, sb)
	}
}

// TestBadInput: oversized, truncated, wrong-version and garbage frames,
// before or after the handshake, close the channel with a logged reason;
// the mesh survives and the peer is reported only once it was bound.
func TestBadInput(t *testing.T) {
	b := newNode(t, testConfig(t, "b", network.OS{}, false))
	var e uint64
	for _, tc := range []struct {
		name   string
		frames func(e uint64) [][]byte
		bound  bool // the peer is reported
	}{
		{"garbage", func(uint64) [][]byte { return [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n")} }, false},
		{"truncated", func(e uint64) [][]byte { return [][]byte{hello(e, b.inc)[:20]} }, false},
		{"wrong version", func(e uint64) [][]byte { return [][]byte{append([]byte{9}, hello(e, b.inc)[1:]...)} }, false},
		{"message before hello", func(e uint64) [][]byte { return [][]byte{wire.AppendFrame(nil, wire.Message, e, 1, 0, []byte("ok"))} }, false},
		{"oversized after hello", func(e uint64) [][]byte {
			return [][]byte{hello(e, b.inc), wire.AppendFrame(nil, wire.Message, e, 1, 0, make([]byte, 1<<16+1))}
		}, true},
		{"garbage after hello", func(e uint64) [][]byte { return [][]byte{hello(e, b.inc), []byte("xyz")} }, true},
		{"gap after hello", func(e uint64) [][]byte {
			return [][]byte{hello(e, b.inc), wire.AppendFrame(nil, wire.Message, e, 5, 0, nil)}
		}, true},
		{"beyond the window", func(e uint64) [][]byte { return [][]byte{hello(e, b.inc), msgs(e, 9)} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each case in an epoch of its own: a peer whose channel
			// failed gets no second one in the same epoch.
			e++
			b.host.set(e, true)
			b.m.Connect(e, []proto.Member{{ID: "a", Incarnation: 1, Addr: "tcp://127.0.0.1:1"}, b.member()})
			frames := tc.frames(e)
			before := b.m.Stats()
			c := dialRaw(t, b.m.Addr())
			for _, f := range frames {
				c.Send(f, nil)
			}
			ended := make(chan error, 1)
			c.Receive(func(f []byte, err error) {
				if err != nil {
					ended <- err
				}
			})
			select {
			case <-ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the channel was not closed")
			}
			after := b.m.Stats()
			if after.Protocol != before.Protocol+1 {
				t.Fatalf("protocol errors %d → %d", before.Protocol, after.Protocol)
			}
			if tc.bound {
				select {
				case p := <-b.host.faulted:
					if p != "a" {
						t.Fatalf("reported %s", p)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the peer was not reported")
				}
			}
		})
	}
}

// hello is a's Hello to b (incarnation inc) in epoch e.
func hello(e, inc uint64) []byte {
	hs := wire.Handshake{Group: "g", Epoch: e, FromID: "a", FromIncarnation: 1, ToID: "b", ToIncarnation: inc, Window: 8, HeartbeatMillis: 20}
	return wire.AppendFrame(nil, wire.Hello, e, 0, 0, hs.Append(nil))
}

// msgs returns n message frames of epoch e, sequence numbers 1..n, as one
// byte slice per frame joined (the raw connection sends each frame
// separately: see dialRaw's Send).
func msgs(e uint64, n int) []byte {
	var out []byte
	for i := 1; i <= n; i++ {
		out = wire.AppendFrame(out, wire.Message, e, uint64(i), 0, []byte("m"))
	}
	return out
}

// rawConn is a connection to a mesh that sends frames as given: a slice
// holding several frames back to back is split into them.
type rawConn struct{ network.Conn }

func (c rawConn) Send(b []byte, done func(error)) {
	for len(b) >= wire.HeaderSize && b[0] == wire.Version {
		n := wire.HeaderSize + int(binary.BigEndian.Uint32(b[4:8]))
		if n >= len(b) {
			break // the last frame, or not a frame
		}
		c.Conn.Send(b[:n], nil)
		b = b[n:]
	}
	c.Conn.Send(b, done)
}

func dialRaw(t *testing.T, addr string) rawConn {
	t.Helper()
	ch := make(chan network.Conn, 1)
	network.OS{}.Dial(addr, time.Second, func(c network.Conn, err error) {
		if err != nil {
			t.Error(err)
		}
		ch <- c
	})
	c := <-ch
	if c == nil {
		t.FailNow()
	}
	t.Cleanup(func() { c.Close() })
	return rawConn{c}
}

// TestOneChannelPerEpoch: once a peer's channel of an epoch has opened,
// a second handshake for the same epoch is refused (sequence numbers
// restart on each connection, so a second one would let frames replayed
// from the first pass as new), even after the first failed.
func TestOneChannelPerEpoch(t *testing.T) {
	b := newNode(t, testConfig(t, "b", network.OS{}, false))
	b.host.set(1, true)
	b.m.Connect(1, []proto.Member{{ID: "a", Incarnation: 1, Addr: "tcp://127.0.0.1:1"}, b.member()})
	answer := func(c rawConn) wire.Header {
		t.Helper()
		got := make(chan []byte, 1)
		c.Receive(func(f []byte, err error) {
			if err == nil {
				select {
				case got <- f:
				default:
				}
			}
		})
		select {
		case f := <-got:
			h, _, err := wire.Parse(f, 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			return h
		case <-time.After(5 * time.Second):
			t.Fatal("no answer to the hello")
		}
		return wire.Header{}
	}
	first := dialRaw(t, b.m.Addr())
	first.Send(hello(1, b.inc), nil)
	if h := answer(first); h.Type != wire.Welcome {
		t.Fatalf("first hello answered with %s", h.Type)
	}
	second := dialRaw(t, b.m.Addr())
	second.Send(hello(1, b.inc), nil)
	if h := answer(second); h.Type != wire.Refuse || wire.RefuseCode(h.Arg) != wire.RefuseDuplicate {
		t.Fatalf("second hello answered with %s %d, want a refusal (duplicate)", h.Type, h.Arg)
	}
	first.Close()
	select {
	case <-b.host.faulted: // closed without a close frame: a is lost
	case <-time.After(5 * time.Second):
		t.Fatal("the reset was not reported")
	}
	third := dialRaw(t, b.m.Addr())
	third.Send(hello(1, b.inc), nil)
	if h := answer(third); h.Type != wire.Refuse || wire.RefuseCode(h.Arg) != wire.RefuseDuplicate {
		t.Fatalf("hello after the loss answered with %s %d, want a refusal (duplicate)", h.Type, h.Arg)
	}
}

// TestStallIsNotSilence: a heartbeat tick that comes late because this
// process was starved suspects nobody (what the peer sent meanwhile may
// not have been read yet); the next tick, if the peer is still silent,
// does. On time, a peer silent for Heartbeat·Misses is suspected at the
// first tick past it.
func TestStallIsNotSilence(t *testing.T) {
	for _, stall := range []bool{false, true} {
		t.Run(fmt.Sprintf("stall=%v", stall), func(t *testing.T) {
			// Each its own clock; only a's moves, so b never ticks and,
			// once the channel is open, sends nothing: a silent peer.
			clk := &clocktest.Manual{}
			ca, cb := testConfig(t, "a", network.OS{}, true), testConfig(t, "b", network.OS{}, true)
			ca.Clock, cb.Clock = clk, &clocktest.Manual{}
			a, b := newNode(t, ca), newNode(t, cb)
			a.connect(1, a, b)
			b.connect(1, a, b)
			waitFor(t, 5*time.Second, "the channel open", func() bool { return a.m.Stats().Opened == 1 && b.m.Stats().Opened == 1 })
			hb := a.m.cfg.Heartbeat
			silent := hb * time.Duration(a.m.cfg.Misses)
			if stall {
				clk.Jump(silent + hb) // one very late tick
				if n := len(a.host.faults); n != 0 || a.m.Stats().Stalls == 0 {
					t.Fatalf("a late tick: %d faults, stats %+v; want none and a stall counted", n, a.m.Stats())
				}
				clk.Jump(hb / 2)
			} else {
				for i := time.Duration(0); i <= silent/(hb/2); i++ {
					clk.Jump(hb / 2)
				}
			}
			select {
			case p := <-a.host.faulted:
				if p != "b" {
					t.Fatalf("reported %s", p)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("a silent peer was not reported: %+v", a.m.Stats())
			}
		})
	}
}

// TestPeerThatReadsNothing: a peer that sends pings and never reads the
// pongs fills the socket, then the connection's window, then what waits
// to be written; past a bound it is reported lost instead of buffered
// for without end.
func TestPeerThatReadsNothing(t *testing.T) {
	b := newNode(t, testConfig(t, "b", network.OS{}, false))
	b.host.set(1, true)
	b.m.Connect(1, []proto.Member{{ID: "a", Incarnation: 1, Addr: "tcp://127.0.0.1:1"}, b.member()})
	c := dialRaw(t, b.m.Addr())
	c.Send(hello(1, b.inc), nil)
	go func() {
		for i := uint64(1); i <= 200000; i++ {
			sent := make(chan error, 1)
			c.Send(wire.AppendFrame(nil, wire.Ping, 1, i, i, nil), func(err error) { sent <- err })
			if <-sent != nil {
				return
			}
		}
	}()
	select {
	case p := <-b.host.faulted:
		if s := b.m.Stats(); p != "a" || s.Protocol != 1 {
			t.Fatalf("reported %s, stats %+v; want a, for breaking the protocol", p, s)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("a peer that reads nothing was not reported: %+v", b.m.Stats())
	}
}
