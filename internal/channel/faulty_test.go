package channel

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/wire"
)

// faultyNet is a test transport over a real one: the frames a connection
// delivers are sometimes dropped, duplicated, or swapped with the next
// (reordered), and stale frames — frames other connections carried, with
// the sequence number the receiver expects next — are slipped in before
// the genuine one, as a middlebox replaying an earlier connection would.
// It is what a channel must survive without delivering anything stale:
// drops and reorders break the stream (the receiver must notice), the
// rest must be dropped and counted.
type faultyNet struct {
	inner network.Network

	mu                           sync.Mutex
	rng                          *rand.Rand
	drop, dup, reorder, replay   float64
	seen                         map[uint64][][]byte // frames carried so far, by sequence number
	dropped, duplicated, swapped int
	replayed                     int
}

func newFaultyNet(inner network.Network, seed uint64) *faultyNet {
	return &faultyNet{inner: inner, rng: rand.New(rand.NewPCG(seed, 7)), seen: map[uint64][][]byte{}}
}

func (f *faultyNet) Listen(addr string, accept func(network.Conn)) (network.Listener, error) {
	return f.inner.Listen(addr, func(c network.Conn) { accept(&faultyConn{Conn: c, f: f}) })
}

func (f *faultyNet) Dial(addr string, timeout time.Duration, done func(network.Conn, error)) {
	f.inner.Dial(addr, timeout, func(c network.Conn, err error) {
		if c != nil {
			c = &faultyConn{Conn: c, f: f}
		}
		done(c, err)
	})
}

type faultyConn struct {
	network.Conn
	f *faultyNet
}

func (c *faultyConn) Receive(fn func([]byte, error)) {
	var held []byte // a frame held back behind the next one
	c.Conn.Receive(func(b []byte, err error) {
		if err != nil {
			fn(nil, err)
			return
		}
		f := c.f
		f.mu.Lock()
		var seq uint64
		if len(b) >= wire.HeaderSize {
			seq = binary.BigEndian.Uint64(b[16:24])
		}
		var stale []byte
		if olds := f.seen[seq]; seq > 0 && len(olds) > 0 && f.rng.Float64() < f.replay {
			stale = olds[f.rng.IntN(len(olds))]
			f.replayed++
		}
		if seq > 0 && len(f.seen[seq]) < 16 {
			f.seen[seq] = append(f.seen[seq], append([]byte(nil), b...))
		}
		r := f.rng.Float64()
		var out [][]byte
		if stale != nil {
			out = append(out, stale)
		}
		switch {
		case held != nil:
			out = append(out, b, held)
			held = nil
		case r < f.drop:
			f.dropped++
		case r < f.drop+f.dup:
			f.duplicated++
			out = append(out, b, b)
		case r < f.drop+f.dup+f.reorder && seq > 0:
			f.swapped++
			held = b
		default:
			out = append(out, b)
		}
		f.mu.Unlock()
		for _, x := range out {
			fn(x, nil)
		}
	})
}
