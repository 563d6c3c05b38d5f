package storage

import (
	"encoding/binary"
	"math/bits"
	"sync"

	"github.com/idc-dev/idc/block"
)

// answerHeader is the size of an encoded answer's fixed part.
var answerHeader = len(block.AppendAnswer(nil, block.Answer{}))

// putAnswerHeader writes the fixed part of an answer carrying n bytes of
// payload into b[:answerHeader], as block.AppendAnswer encodes it: so
// that a read's data can be read straight into the answer, after its
// header, instead of being read and then copied into it.
func putAnswerHeader(b []byte, st block.Status, id uint64, n int) {
	b[0], b[1], b[2], b[3] = block.Version, byte(st), 0, 0
	binary.BigEndian.PutUint32(b[4:], uint32(n))
	binary.BigEndian.PutUint64(b[8:], id)
}

// Bounds of the answer buffers a server keeps for reuse.
const (
	minAnswerClass    = 6        // 64 bytes: the smallest buffer (an answer without data is 16)
	maxAnswerFree     = 16 << 20 // what all kept buffers may hold
	maxAnswerPerClass = 256      // buffers kept of one class
)

// answerBufs keeps answers' buffers once they were written, for the
// answers that follow, in power-of-two size classes: so that a stream of
// reads allocates nothing per answer (an answer of 64 KiB read into a new
// buffer every time costs the garbage collector more than the read
// itself). What is kept is bounded (maxAnswerFree, maxAnswerPerClass);
// once the bytes are reached, a buffer returned takes the place of one of
// the other class that holds the most, so that what is kept follows the
// traffic. Safe for concurrent use. A nil *answerBufs allocates every
// buffer and keeps none.
type answerBufs struct {
	mu    sync.Mutex
	free  [bits.UintSize][][]byte
	bytes [bits.UintSize]int
	total int
}

// answerClass returns the size class of a buffer for n bytes: buffers of
// class c have capacity 1<<c.
func answerClass(n int) int { return max(minAnswerClass, bits.Len(uint(n-1))) }

// get returns a buffer of length n, a kept one if there is one; its bytes
// are not cleared.
func (p *answerBufs) get(n int) []byte {
	c := answerClass(n)
	if p != nil {
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
	}
	return make([]byte, n, 1<<c)
}

// put keeps b for reuse, if it is of a class's size and the bounds allow.
// b must not be used afterwards.
func (p *answerBufs) put(b []byte) {
	n := cap(b)
	if p == nil || n < 1<<minAnswerClass || n > maxAnswerFree {
		return
	}
	c := answerClass(n)
	if n != 1<<c {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free[c]) >= maxAnswerPerClass {
		return
	}
	for p.total+n > maxAnswerFree {
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
