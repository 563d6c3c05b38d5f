package storage

import (
	"encoding/binary"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/internal/bufpool"
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

// answerBufs keeps answers' buffers once they were written, for the
// answers that follow (package bufpool): a stream of reads then allocates
// nothing per answer. A nil *answerBufs allocates every buffer.
type answerBufs = bufpool.Pool
