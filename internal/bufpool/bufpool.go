// Package bufpool keeps byte buffers for reuse in power-of-two size
// classes, bounded in bytes and per class: once the bytes are reached, a
// buffer returned takes the place of one of the other class that holds
// the most, so that what is kept follows the traffic. The storage's
// answers and the disk's payloads and frames use a Pool, and a channel
// mesh its frames through Classes (under its own lock), so that a stream
// of requests allocates nothing per request.
package bufpool

import (
	"math/bits"
	"sync"
)

// Bounds of a Pool.
const (
	// DefaultMinClass is the smallest buffer's class (64 bytes) when
	// MinClass is zero.
	DefaultMinClass = 6
	// MaxBytes is what all kept buffers may hold, MaxPerClass how many of
	// one class are kept.
	MaxBytes    = 16 << 20
	MaxPerClass = 256
)

// Classes keeps buffers as Pool does, without a lock: not safe for
// concurrent use (a driver that holds its own lock uses it directly). Its
// zero value is ready.
type Classes struct {
	// MinClass is the smallest buffer's class: buffers of class c have
	// capacity 1<<c. Set it before the first use (0: DefaultMinClass).
	MinClass int

	free  [bits.UintSize][][]byte
	bytes [bits.UintSize]int
	total int
}

func (p *Classes) class(n int) int {
	min := DefaultMinClass
	if p != nil && p.MinClass > 0 {
		min = p.MinClass
	}
	return max(min, bits.Len(uint(n-1)))
}

// Get returns a buffer of length n, a kept one if there is one; its bytes
// are not cleared.
func (p *Classes) Get(n int) []byte {
	c := p.class(n)
	if k := len(p.free[c]); k > 0 {
		b := p.free[c][k-1]
		p.free[c][k-1] = nil
		p.free[c] = p.free[c][:k-1]
		p.bytes[c] -= cap(b)
		p.total -= cap(b)
		return b[:n]
	}
	return make([]byte, n, 1<<c)
}

// Put keeps b for reuse, if it is of a class's size and the bounds allow.
// b must not be used afterwards.
func (p *Classes) Put(b []byte) {
	n := cap(b)
	if n < 1<<p.class(1) || n > MaxBytes {
		return
	}
	c := p.class(n)
	if n != 1<<c || len(p.free[c]) >= MaxPerClass {
		return
	}
	for p.total+n > MaxBytes {
		// Make room from the other class that holds the most.
		big := -1
		for i := range p.bytes {
			if i != c && p.bytes[i] > 0 && (big < 0 || p.bytes[i] > p.bytes[big]) {
				big = i
			}
		}
		if big < 0 {
			return
		}
		k := len(p.free[big]) - 1
		p.bytes[big] -= cap(p.free[big][k])
		p.total -= cap(p.free[big][k])
		p.free[big][k] = nil
		p.free[big] = p.free[big][:k]
	}
	p.free[c] = append(p.free[c], b[:0])
	p.bytes[c] += n
	p.total += n
}

// Pool keeps buffers. Its zero value is ready; safe for concurrent use. A
// nil *Pool allocates every buffer and keeps none.
type Pool struct {
	// MinClass is the smallest buffer's class: buffers of class c have
	// capacity 1<<c. Set it before the first use (0: DefaultMinClass).
	MinClass int

	mu sync.Mutex
	c  Classes
}

// Get returns a buffer of length n, a kept one if there is one; its bytes
// are not cleared.
func (p *Pool) Get(n int) []byte {
	if p == nil {
		return make([]byte, n, 1<<(*Classes)(nil).class(n))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.c.MinClass = p.MinClass // the field is the Pool's, set before first use
	return p.c.Get(n)
}

// Put keeps b for reuse, if it is of a class's size and the bounds allow.
// b must not be used afterwards.
func (p *Pool) Put(b []byte) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.c.MinClass = p.MinClass
	p.c.Put(b)
}
