package sim

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	netw "github.com/idc-dev/idc/network"
)

// bareWorld is a world with no domains or coordinators, for testing the
// simulated store, network and clocks on their own.
func bareWorld(seed uint64) *World {
	cfg := Config{Seed: int64(seed), NoFaults: true}.WithDefaults()
	w := &World{cfg: cfg, rng: rand.New(rand.NewPCG(seed, 2)), hist: &History{}, trace: newTrace(40)}
	w.addNode("world", clock{rate: 1})
	w.addNode("store", clock{rate: 1})
	w.net = newNetwork(w)
	w.store = newStore(w)
	w.end = time.Hour
	return w
}

// runFor runs w's events for d of simulated time.
func (w *World) runFor(d time.Duration) {
	end := w.now + d
	for len(w.q) > 0 && w.q[0].at <= end {
		ev := w.q.pop()
		w.now = ev.at
		w.exec(ev)
	}
	w.now = end
}

// TestSimNetwork: the simulated network keeps the contract of
// network.Network as the OS implementation does: frames in order both
// ways, the send window, refused dials, io.EOF at the peer of a close or
// of a crash, and frames held (not lost) while a node is cut off.
func TestSimNetwork(t *testing.T) {
	w := bareWorld(1)
	a := w.addNode("a", clock{rate: 1.01})
	b := w.addNode("b", clock{rate: 0.99})
	var server netw.Conn
	var got []string
	var serverEnd error
	if _, err := (nodeNet{w, b.id}).Listen("b:1", func(c netw.Conn) {
		server = c
		c.Receive(func(f []byte, err error) {
			if err != nil {
				serverEnd = err
				return
			}
			got = append(got, string(f))
			c.Send(append([]byte("re:"), f...), nil)
		})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := (nodeNet{w, b.id}).Listen("b:1", nil); !errors.Is(err, netw.ErrAddress) {
		t.Fatalf("listening twice: %v", err)
	}
	var refused error
	nodeNet{w, a.id}.Dial("b:2", time.Second, func(_ netw.Conn, err error) { refused = err })
	var client netw.Conn
	nodeNet{w, a.id}.Dial("b:1", time.Second, func(c netw.Conn, err error) {
		if err != nil {
			t.Errorf("dial: %v", err)
		}
		client = c
	})
	w.runFor(time.Second)
	if !errors.Is(refused, netw.ErrUnreachable) || client == nil || server == nil {
		t.Fatalf("refused=%v client=%v server=%v", refused, client, server)
	}
	var replies []string
	client.Receive(func(f []byte, err error) {
		if err == nil {
			replies = append(replies, string(f))
		}
	})
	for i := range 50 {
		client.Send([]byte(fmt.Sprint(i)), nil)
		if i == 20 {
			// The network drops everything to and from a for a while:
			// frames wait, in order.
			w.net.partitioned[a.id] = w.now + 500*time.Millisecond
		}
	}
	var busy error
	for range netw.SendWindow {
		client.Send([]byte("x"), func(err error) {
			if err != nil {
				busy = err
			}
		})
	}
	w.runFor(2 * time.Second)
	if !errors.Is(busy, netw.ErrBusy) {
		t.Errorf("more than SendWindow frames waiting: %v, want ErrBusy", busy)
	}
	for i := range 50 {
		if i >= len(got) || got[i] != fmt.Sprint(i) || replies[i] != "re:"+fmt.Sprint(i) {
			t.Fatalf("frame %d: got %v, replies %v", i, got, replies)
		}
	}
	client.Close()
	w.runFor(time.Second)
	if !errors.Is(serverEnd, io.EOF) {
		t.Errorf("peer of a close: %v, want io.EOF", serverEnd)
	}

	// A crash of the listening node resets the connections to it.
	var crashEnd error
	nodeNet{w, a.id}.Listen("a:1", func(c netw.Conn) {})
	nodeNet{w, b.id}.Dial("a:1", time.Second, func(c netw.Conn, err error) {
		if err != nil {
			t.Fatal(err)
		}
		c.Receive(func(_ []byte, err error) { crashEnd = err })
	})
	w.runFor(time.Second)
	w.nodes[a.id].down = true
	w.resetConns(a.id)
	w.runFor(time.Second)
	if !errors.Is(crashEnd, io.EOF) {
		t.Errorf("peer of a crashed node: %v, want io.EOF", crashEnd)
	}
}
