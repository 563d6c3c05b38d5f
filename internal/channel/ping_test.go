package channel

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/wire"
)

// ping pings peer from n in epoch e and waits for the outcome.
func ping(n *node, e uint64, peer string) error {
	done := make(chan struct{})
	op := &Op{Done: func(*Op) { close(done) }}
	n.m.Ping(e, peer, op)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		n.m.Cancel(op, context.DeadlineExceeded)
		<-done
	}
	if op.Resp != nil {
		return errors.New("a ping has a response")
	}
	return op.Err
}

// TestPing: a ping is answered by the peer's driver itself: with no
// handler configured, while the peer takes nothing of what it was sent
// (a ping needs no credit), and without an operation of the epoch or a
// delivery at the peer. A ping made before the channel opens waits for it.
func TestPing(t *testing.T) {
	a, b := pair(t, network.OS{}, network.OS{}, true)
	a.connect(1, a, b)
	// b is not connected yet: the ping waits for the channel to open.
	early := make(chan error, 1)
	go func() { early <- ping(a, 1, "b") }()
	time.Sleep(20 * time.Millisecond)
	b.connect(1, a, b)
	if err := <-early; err != nil {
		t.Fatalf("ping before the channel opened: %v", err)
	}
	for i := range 10 {
		if err := ping(a, 1, "b"); err != nil {
			t.Fatalf("ping %d a→b: %v", i, err)
		}
		if err := ping(b, 1, "a"); err != nil {
			t.Fatalf("ping %d b→a: %v", i, err)
		}
	}
	// Fill b's window with messages it does not take: a has no credit
	// left, and a ping still goes through.
	for i := range a.m.cfg.Window {
		if _, err := send(a, 1, "b", []byte{byte(i)}, false); err != nil {
			t.Fatal(err)
		}
	}
	blocked := &Op{Done: func(*Op) {}}
	a.m.Send(1, "b", []byte("over"), blocked)
	if err := ping(a, 1, "b"); err != nil {
		t.Fatalf("ping with no credit left: %v", err)
	}
	a.m.Cancel(blocked, context.Canceled)
	if !errors.Is(blocked.Err, context.Canceled) {
		t.Fatalf("the send beyond the window: %v, want it waiting for credit (cancelled)", blocked.Err)
	}
	if n := a.host.inFlight(1); n != 0 {
		t.Fatalf("%d operations in flight at a after the pings", n)
	}
	// b took nothing and has no handler: the pings were neither delivered
	// nor operations there.
	if s := b.m.Stats(); s.Delivered != 0 || s.Protocol != 0 || s.Faults != 0 {
		t.Fatalf("b: %+v, want nothing delivered", s)
	}
	if n := b.host.inFlight(1); n != 0 {
		t.Fatalf("%d operations in flight at b", n)
	}
	if n := b.m.Waiting(1); n != a.m.cfg.Window {
		t.Fatalf("%d messages wait at b, want the window %d", n, a.m.cfg.Window)
	}
}

// TestPingEpochEnded: a ping to a peer whose epoch ended fails with
// ErrEpochEnded, and so does one of an epoch ended here; a ping that waits
// for its channel can be cancelled.
func TestPingEpochEnded(t *testing.T) {
	a, b := pair(t, network.OS{}, network.OS{}, false)
	a.connect(1, a, b)
	b.connect(1, a, b)
	if err := ping(a, 1, "b"); err != nil {
		t.Fatal(err)
	}
	b.disconnect(1)
	waitFor(t, 5*time.Second, "a read b's close frame", func() bool {
		a.m.mu.Lock()
		defer a.m.mu.Unlock()
		return a.m.links["b"].state == lsEnded
	})
	if err := ping(a, 1, "b"); !errors.Is(err, proto.ErrEpochEnded) {
		t.Fatalf("ping to a peer whose epoch ended: %v, want ErrEpochEnded", err)
	}
	if n := a.host.inFlight(1); n != 0 {
		t.Fatalf("%d operations in flight at a", n)
	}
	a.disconnect(1)
	if err := ping(a, 1, "b"); !errors.Is(err, proto.ErrEpochEnded) {
		t.Fatalf("ping in an epoch ended here: %v, want ErrEpochEnded", err)
	}
	if len(a.host.faults)+len(b.host.faults) != 0 {
		t.Fatalf("faults reported: %v %v", a.host.faults, b.host.faults)
	}

	// Epoch 2, connected at a only: the ping waits for the channel, and
	// Cancel ends it.
	a.connect(2, a, b)
	done := make(chan struct{})
	op := &Op{Done: func(*Op) { close(done) }}
	a.m.Ping(2, "b", op)
	time.Sleep(20 * time.Millisecond)
	select {
	case <-done:
		t.Fatalf("a ping completed before the channel opened: %v", op.Err)
	default:
	}
	a.m.Cancel(op, context.Canceled)
	<-done
	if !errors.Is(op.Err, context.Canceled) || a.host.inFlight(2) != 0 {
		t.Fatalf("cancelled ping: %v, %d in flight", op.Err, a.host.inFlight(2))
	}
}

// TestPingWire: on the wire, a Ping is answered with a Pong of the same
// ID and the next sequence number, and a Pong that answers a call (or a
// Response that answers a ping) breaks the protocol.
func TestPingWire(t *testing.T) {
	b := newNode(t, testConfig(t, "b", network.OS{}, false))
	b.host.set(1, true)
	b.m.Connect(1, []proto.Member{{ID: "a", Incarnation: 1, Addr: "tcp://127.0.0.1:1"}, b.member()})
	c := dialRaw(t, b.m.Addr())
	frames := make(chan []byte, 16)
	ended := make(chan struct{})
	c.Receive(func(f []byte, err error) {
		if err != nil {
			close(ended)
			return
		}
		frames <- append([]byte(nil), f...)
	})
	next := func(want wire.Type) wire.Header {
		t.Helper()
		for {
			select {
			case f := <-frames:
				h, _, err := wire.Parse(f, 1<<16)
				if err != nil {
					t.Fatal(err)
				}
				if h.Type == wire.Heartbeat {
					continue
				}
				if h.Type != want {
					t.Fatalf("got %s (%+v), want %s", h.Type, h, want)
				}
				return h
			case <-time.After(5 * time.Second):
				t.Fatalf("no %s", want)
			}
		}
	}
	c.Send(hello(1, b.inc), nil)
	next(wire.Welcome)
	c.Send(wire.AppendFrame(nil, wire.Ping, 1, 1, 77, nil), nil)
	if h := next(wire.Pong); h.Arg != 77 || h.Epoch != 1 || h.Seq == 0 {
		t.Fatalf("pong %+v, want ID 77 in epoch 1", h)
	}
	// A call from b, answered with a Pong.
	done := make(chan struct{})
	op := &Op{Done: func(*Op) { close(done) }}
	b.m.Call(1, "a", []byte("q"), op)
	rq := next(wire.Request)
	c.Send(wire.AppendFrame(nil, wire.Pong, 1, 2, rq.Arg, nil), nil)
	<-done
	if !errors.Is(op.Err, proto.ErrPeerLost) {
		t.Fatalf("call answered with a pong: %v, want ErrPeerLost", op.Err)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the channel was not closed")
	}
	if s := b.m.Stats(); s.Protocol != 1 || s.Delivered != 0 {
		t.Fatalf("b: %+v, want one protocol error and nothing delivered", s)
	}
}
