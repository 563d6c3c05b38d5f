package nbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
)

// Backend is the storage behind an export. The server calls it from many
// goroutines at once: one per request in flight, on every connection.
// The server checks every request against Size and the block size limits
// before calling the backend, so offsets and lengths passed in are always
// within the export.
//
// Every method receives the context of the connection; it is cancelled
// when the client has gone away or when Server.Shutdown runs out of time.
// An error from a method is sent to the client as an NBD error: see ErrIO,
// ErrNoSpace, ErrInvalid, ErrPermission and ErrShutdown. Any other error is
// sent as NBD_EIO.
type Backend interface {
	// Size returns the size of the export in bytes. The server reads it
	// once per connection, when the client selects the export.
	Size() uint64
	// Features tells which optional commands the backend implements. The
	// server reads it once per connection and advertises only those
	// commands; it never calls a method the backend does not support.
	Features() Features
	// ReadAt fills p with the bytes at off.
	ReadAt(ctx context.Context, p []byte, off uint64) error
	// WriteAt writes p at off. If fua is true the data must be on stable
	// storage when WriteAt returns (it is true only if Features.FUA).
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	// Flush makes every write that has returned durable (Features.Flush).
	Flush(ctx context.Context) error
	// Trim discards the range; later reads of it may return anything
	// (Features.Trim). Trim is a hint: doing nothing is correct.
	Trim(ctx context.Context, off, length uint64) error
	// Zero makes the range read back as zeroes (Features.Zero). If noHole
	// is true the range must stay allocated.
	Zero(ctx context.Context, off, length uint64, noHole bool) error
}

// Features says which optional parts of the protocol a backend implements.
type Features struct {
	// ReadOnly makes the export read-only: writes, trims and zeroes fail
	// with NBD_EPERM.
	ReadOnly bool
	// Flush: the backend implements Flush (NBD_FLAG_SEND_FLUSH).
	Flush bool
	// FUA: WriteAt honours fua (NBD_FLAG_SEND_FUA). It requires Flush,
	// which the server calls after a trim or zero sent with the FUA flag.
	FUA bool
	// Trim: the backend implements Trim (NBD_FLAG_SEND_TRIM).
	Trim bool
	// Zero: the backend implements Zero (NBD_FLAG_SEND_WRITE_ZEROES).
	Zero bool
	// MultiConn: a flush, and a write with fua, on any connection covers
	// the writes replied to on every connection, so clients may spread
	// their requests over several connections (NBD_FLAG_CAN_MULTI_CONN).
	MultiConn bool
}

// Errors a backend returns to choose the NBD error the client receives.
// A backend may wrap them (fmt.Errorf with %w).
var (
	// ErrIO is an I/O error (NBD_EIO). Unrecognised errors are sent as EIO too.
	ErrIO = errors.New("nbd: I/O error")
	// ErrNoSpace reports that the storage is out of space (NBD_ENOSPC).
	ErrNoSpace = errors.New("nbd: no space left")
	// ErrInvalid reports a request the backend cannot accept (NBD_EINVAL).
	ErrInvalid = errors.New("nbd: invalid request")
	// ErrPermission reports a write the backend refuses (NBD_EPERM).
	ErrPermission = errors.New("nbd: operation not permitted")
	// ErrShutdown reports that the export is going away, for instance
	// because the disk has been fenced (NBD_ESHUTDOWN). After a backend
	// returns it, the connection answers every later request with
	// NBD_ESHUTDOWN without calling the backend, and clients then
	// disconnect (the protocol's soft disconnect).
	ErrShutdown = errors.New("nbd: export is shutting down")
)

// errno maps a backend error to the protocol's error value.
func errno(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrShutdown):
		return errnoShutdown
	case errors.Is(err, ErrNoSpace):
		return errnoNoSpc
	case errors.Is(err, ErrInvalid):
		return errnoInval
	case errors.Is(err, ErrPermission):
		return errnoPerm
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return errnoShutdown
	}
	return errnoIO
}

// MemBackend is a Backend that keeps the export in memory. It implements
// every feature; since it has no cache, MultiConn holds. It is meant for
// tests and examples.
type MemBackend struct {
	mu   sync.RWMutex
	data []byte
}

// NewMemBackend returns a MemBackend of size bytes, all zero.
func NewMemBackend(size int) *MemBackend {
	return &MemBackend{data: make([]byte, size)}
}

// Size implements Backend.
func (m *MemBackend) Size() uint64 { return uint64(len(m.data)) }

// Features implements Backend: every feature.
func (m *MemBackend) Features() Features {
	return Features{Flush: true, FUA: true, Trim: true, Zero: true, MultiConn: true}
}

// ReadAt implements Backend.
func (m *MemBackend) ReadAt(_ context.Context, p []byte, off uint64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off > uint64(len(m.data)) || uint64(len(p)) > uint64(len(m.data))-off {
		return ErrInvalid
	}
	copy(p, m.data[off:])
	return nil
}

// WriteAt implements Backend.
func (m *MemBackend) WriteAt(_ context.Context, p []byte, off uint64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off > uint64(len(m.data)) || uint64(len(p)) > uint64(len(m.data))-off {
		return ErrNoSpace
	}
	copy(m.data[off:], p)
	return nil
}

// Flush implements Backend; memory has nothing to flush.
func (m *MemBackend) Flush(context.Context) error { return nil }

// Trim implements Backend by zeroing the range.
func (m *MemBackend) Trim(ctx context.Context, off, length uint64) error {
	return m.Zero(ctx, off, length, false)
}

// Zero implements Backend.
func (m *MemBackend) Zero(_ context.Context, off, length uint64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off > uint64(len(m.data)) || length > uint64(len(m.data))-off {
		return ErrNoSpace
	}
	clear(m.data[off : off+length])
	return nil
}

// Bytes returns a copy of the export's contents.
func (m *MemBackend) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

// FileBackend is a Backend over a regular file or a block device, opened
// by the caller. Flush and FUA use fsync; Zero writes zeroes; trim is not
// offered. A flush covers every connection, so MultiConn holds.
type FileBackend struct {
	f    *os.File
	size uint64
}

// NewFileBackend returns a FileBackend serving f, whose size is read now
// and fixed for the life of the backend.
func NewFileBackend(f *os.File) (*FileBackend, error) {
	end, err := f.Seek(0, 2)
	if err != nil {
		return nil, fmt.Errorf("nbd: size of %s: %w", f.Name(), err)
	}
	return &FileBackend{f: f, size: uint64(end)}, nil
}

// Size implements Backend.
func (b *FileBackend) Size() uint64 { return b.size }

// Features implements Backend.
func (b *FileBackend) Features() Features {
	return Features{Flush: true, FUA: true, Zero: true, MultiConn: true}
}

// ReadAt implements Backend.
func (b *FileBackend) ReadAt(_ context.Context, p []byte, off uint64) error {
	if _, err := b.f.ReadAt(p, int64(off)); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return nil
}

// WriteAt implements Backend.
func (b *FileBackend) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if _, err := b.f.WriteAt(p, int64(off)); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	if fua {
		return b.Flush(ctx)
	}
	return nil
}

// Flush implements Backend with fsync.
func (b *FileBackend) Flush(context.Context) error {
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return nil
}

// Trim implements Backend; it is never called, since Features has no Trim.
func (b *FileBackend) Trim(context.Context, uint64, uint64) error { return ErrInvalid }

// Zero implements Backend by writing zeroes, 1 MiB at a time.
func (b *FileBackend) Zero(ctx context.Context, off, length uint64, _ bool) error {
	zeroes := make([]byte, min(length, 1<<20))
	for length > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(length, uint64(len(zeroes)))
		if _, err := b.f.WriteAt(zeroes[:n], int64(off)); err != nil {
			return fmt.Errorf("%w: %w", ErrIO, err)
		}
		off += n
		length -= n
	}
	return nil
}
