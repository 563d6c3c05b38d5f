package channel

import "math/bits"

// Bounds of the frame buffers a mesh keeps for reuse.
const (
	minBufferClass = 9        // 512 bytes: the smallest buffer
	maxFreeBytes   = 16 << 20 // what all kept buffers may hold
	maxFreePerSize = 256      // buffers kept of one size
)

// buffers keeps written frames' buffers for reuse, in power-of-two size
// classes, so that a frame never takes a buffer much larger than it needs
// and a stream of large frames is not starved by small ones. What is kept
// is bounded (maxFreeBytes, maxFreePerSize); once the bytes are reached, a
// buffer returned takes the place of one of the other class that holds the
// most, so that what is kept follows the traffic. Not safe for concurrent
// use: the mesh calls it under its lock.
type buffers struct {
	free  [bits.UintSize][][]byte
	bytes [bits.UintSize]int
	total int
}

// class returns the size class of a buffer for n bytes: buffers of class
// c have capacity 1<<c.
func class(n int) int { return max(minBufferClass, bits.Len(uint(n-1))) }

// get returns an empty buffer of capacity at least n.
func (p *buffers) get(n int) []byte {
	c := class(n)
	if k := len(p.free[c]); k > 0 {
		b := p.free[c][k-1]
		p.free[c][k-1] = nil
		p.free[c] = p.free[c][:k-1]
		p.bytes[c] -= cap(b)
		p.total -= cap(b)
		return b[:0]
	}
	return make([]byte, 0, 1<<c)
}

// put keeps b for reuse, if it is of a class size and the bounds allow.
func (p *buffers) put(b []byte) {
	n := cap(b)
	if n < 1<<minBufferClass {
		return
	}
	c := class(n)
	if n != 1<<c || len(p.free[c]) >= maxFreePerSize || n > maxFreeBytes {
		return
	}
	for p.total+n > maxFreeBytes {
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
