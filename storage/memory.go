package storage

import (
	"fmt"
	"io"
	"sync"
)

// Memory is a Backing in memory, of fixed size: the simulator's disk. It
// outlives Close, as a file does: a store opened on it again (a restarted
// process) finds what was written. Safe for concurrent use.
type Memory struct {
	mu sync.RWMutex
	b  []byte
}

// NewMemory returns size zero bytes of memory.
func NewMemory(size int64) *Memory { return &Memory{b: make([]byte, size)} }

// Size is the memory's size in bytes.
func (m *Memory) Size() int64 { return int64(len(m.b)) }

// ReadAt implements io.ReaderAt: it reads as a file of the memory's size
// does (io.EOF at its end).
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 {
		return 0, fmt.Errorf("storage: memory: read at negative offset %d", off)
	}
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements io.WriterAt. Memory does not grow: a write past its
// end fails, and writes nothing.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off > int64(len(m.b)) || int64(len(p)) > int64(len(m.b))-off {
		return 0, fmt.Errorf("storage: memory: write of %d bytes at %d past the size %d", len(p), off, len(m.b))
	}
	return copy(m.b[off:], p), nil
}

// Sync does nothing: memory is as durable as it gets.
func (m *Memory) Sync() error { return nil }

// Close does nothing: the memory keeps its bytes for the next Open.
func (m *Memory) Close() error { return nil }

var (
	_ Backing = (*Memory)(nil)
	_ Sizer   = (*Memory)(nil)
)
