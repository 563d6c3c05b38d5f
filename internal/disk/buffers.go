package disk

import (
	"math/bits"
	"sync"
)

// Bounds of the buffers a disk keeps for reuse.
const (
	minBufClass    = 9        // 512 bytes: the smallest buffer
	maxBufFree     = 16 << 20 // what all kept buffers may hold
	maxBufPerClass = 256      // buffers kept of one class
)

// buffers keeps the disk's buffers — writes' payloads, request frames,
// reads' data — once they are no longer used, for the requests that
// follow, in power-of-two size classes, so that a stream of requests
// allocates nothing per request. What is kept is bounded (maxBufFree,
// maxBufPerClass); once the bytes are reached, a buffer returned takes
// the place of one of the other class that holds the most, so that what
// is kept follows the traffic. Safe for concurrent use.
type buffers struct {
	mu    sync.Mutex
	free  [bits.UintSize][][]byte
	bytes [bits.UintSize]int
	total int
}

// bufClass returns the size class of a buffer for n bytes: buffers of
// class c have capacity 1<<c.
func bufClass(n int) int { return max(minBufClass, bits.Len(uint(n-1))) }

// get returns a buffer of length n, a kept one if there is one; its bytes
// are not cleared.
func (p *buffers) get(n int) []byte {
	c := bufClass(n)
	p.mu.Lock()
	if k := len(p.free[c]); k > 0 {
		b := p.free[c][k-1]
		p.free[c][k-1] = nil
		p.free[c] = p.free[c][:k-1]
		p.bytes[c] -= cap(b)
		p.total -= cap(b)
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, 1<<c)
}

// put keeps b for reuse, if it is of a class's size and the bounds allow.
// b must not be used afterwards.
func (p *buffers) put(b []byte) {
	n := cap(b)
	if n < 1<<minBufClass || n > maxBufFree {
		return
	}
	c := bufClass(n)
	if n != 1<<c {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free[c]) >= maxBufPerClass {
		return
	}
	for p.total+n > maxBufFree {
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
