// Package storage is the shared block store of the multipath disk
// (DESIGN §8): a store of fixed size (a file, or memory for the
// simulator) that serves block requests (package block), each checked by
// the store's guard (package guard) in one step with the start of its
// apply, so that no request of an ended epoch is applied after the fence
// of the next (G5). Every write it applies is recorded in an apply log —
// group, epoch, domain, request ID, offset, length, time — and so is every
// fence once it holds, from which a checker proves that.
//
// Requests reach it over resource connections (Server): plain framed
// connections over network.Network, one encoded request a frame, one
// encoded answer a frame back. They are not idc channels: the store is a
// guarded resource of its groups, not a member domain, so a request held
// in the network and released late does reach it, and only the guard
// stops it (DESIGN §4, §6).
package storage

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/token"
)

// Backing is what holds the store's bytes: a file (the default) or
// memory (NewMemory). Its methods must be safe for concurrent use (as
// *os.File's ReadAt and WriteAt are).
type Backing interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every write done so far durable.
	Sync() error
	// Close releases the backing.
	Close() error
}

// Sizer is a Backing that knows its size: Open then checks that it holds
// at least Config.Size bytes.
type Sizer interface {
	Size() int64
}

// Config configures a Storage.
type Config struct {
	// Path is the backing file, used when Backing is nil. Open creates it
	// with Size bytes if it does not exist or is empty; an existing one
	// must hold at least Size bytes. Nothing in it is truncated.
	Path string
	// Backing, if not nil, holds the store's bytes instead of the file at
	// Path (ignored then): it must hold at least Size bytes (checked if
	// it is a Sizer). The store owns it: Close closes it.
	Backing Backing
	// Size is the store's size in bytes: a positive multiple of BlockSize.
	Size int64
	// BlockSize is the size of a block (default 4096): requests need not
	// be aligned to it, but the size is a whole number of blocks.
	BlockSize int
	// Guard checks every request. To record fences in the apply log,
	// create it with guard.Config.OnFence calling the store's Fenced.
	// Unguarded must be set instead if it is nil.
	Guard *guard.Guard
	// Unguarded, with no Guard, makes a store that checks no token: it
	// applies every well-formed request of any epoch, like a resource
	// that cannot check tokens, the only kind lease mode alone is meant
	// for (DESIGN §4: correct only under a bound on message delay). Its
	// apply log still records each write's token. It exists to show what
	// fencing prevents; it is never what a store should be.
	Unguarded bool
	// Log, if not nil, receives the apply log: one JSON object (Applied)
	// a line, for every write, trim and zero applied, in the order of
	// their applies, and for every fence that holds (Fenced). Lines are
	// buffered: Close flushes them.
	Log io.Writer
	// Now is the apply log's clock, in Unix nanoseconds (default the wall
	// clock): the simulator passes its own.
	Now func() int64
}

// Applied is one line of the apply log: a write, trim or zero applied
// (Op "write", "trim", "zero"), or a fence that holds (Op "fence", with
// Group, Epoch and At only: {"op":"fence","group":"g","epoch":3,"at":…}).
// Every apply of an epoch below a fence's is logged before the fence's
// line, and none after it: the fence holds only once those applies ended.
type Applied struct {
	Op string `json:"op"`
	// Group is the token's group (the fence's, for a fence).
	Group  string `json:"group,omitempty"`
	Epoch  uint64 `json:"epoch"`
	Domain string `json:"domain"`
	Inc    uint64 `json:"incarnation"`
	ID     uint64 `json:"id"`
	Offset uint64 `json:"offset"`
	Length uint32 `json:"length"`
	// At is when the apply began, or when the fence held, or when the
	// request was refused (Unix nanoseconds, by Config.Now).
	At int64 `json:"at"`
	// Request and Reason, on a line with Op "refused": the operation the
	// guard refused and why (core/guard's Reason: stale, aborted, ...).
	// Every refused request is recorded, reads and flushes too.
	Request string `json:"request,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// ErrConfig is wrapped by every configuration error of Open.
var ErrConfig = errors.New("idc: storage: invalid config")

// Storage is an open block store. Its methods are safe for concurrent use.
type Storage struct {
	f     Backing
	size  uint64
	block int
	g     *guard.Guard
	now   func() int64

	logMu  sync.Mutex
	log    *bufio.Writer
	line   []byte // the line being written
	closed bool
}

// Open opens the store: its Backing, or the file at Path (created if it
// does not exist).
func Open(cfg Config) (*Storage, error) {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 4096
	}
	if cfg.Now == nil {
		cfg.Now = func() int64 { return time.Now().UnixNano() }
	}
	switch {
	case cfg.Path == "" && cfg.Backing == nil:
		return nil, fmt.Errorf("%w: no path and no backing", ErrConfig)
	case cfg.Guard == nil && !cfg.Unguarded:
		return nil, fmt.Errorf("%w: no guard (and not Unguarded)", ErrConfig)
	case cfg.Guard != nil && cfg.Unguarded:
		return nil, fmt.Errorf("%w: a guard, and Unguarded", ErrConfig)
	case cfg.BlockSize < 512 || cfg.BlockSize&(cfg.BlockSize-1) != 0:
		return nil, fmt.Errorf("%w: block size %d (want a power of two, at least 512)", ErrConfig, cfg.BlockSize)
	case cfg.Size <= 0 || cfg.Size%int64(cfg.BlockSize) != 0:
		return nil, fmt.Errorf("%w: size %d (want a positive multiple of the block size %d)", ErrConfig, cfg.Size, cfg.BlockSize)
	}
	f := cfg.Backing
	if f == nil {
		var err error
		if f, err = openFile(cfg.Path, cfg.Size); err != nil {
			return nil, err
		}
	} else if sz, ok := f.(Sizer); ok && sz.Size() < cfg.Size {
		return nil, fmt.Errorf("%w: the backing holds %d bytes, fewer than the size %d", ErrConfig, sz.Size(), cfg.Size)
	}
	s := &Storage{f: f, size: uint64(cfg.Size), block: cfg.BlockSize, g: cfg.Guard, now: cfg.Now}
	if cfg.Log != nil {
		s.log = bufio.NewWriter(cfg.Log)
	}
	return s, nil
}

// openFile opens (or creates) the backing file at path, of at least size
// bytes.
func openFile(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("storage: %w", err)
	}
	switch {
	case st.Size() == 0:
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("storage: %w", err)
		}
	case st.Size() < size:
		f.Close()
		return nil, fmt.Errorf("%w: %s holds %d bytes, fewer than the size %d", ErrConfig, path, st.Size(), size)
	}
	return f, nil
}

// Size is the store's size in bytes.
func (s *Storage) Size() uint64 { return s.size }

// BlockSize is the store's block size in bytes.
func (s *Storage) BlockSize() int { return s.block }

// Serve applies one encoded request and returns the encoded answer. A
// request the guard refuses is answered block.StatusFenced and not
// applied; a malformed or out-of-bounds one block.StatusInvalid (with the
// ID in the request's header if the header is there, else ID 0).
func (s *Storage) Serve(ctx context.Context, req []byte) []byte {
	r, err := block.Parse(req)
	if err != nil {
		return answer(nil, block.StatusInvalid, headerID(req), err.Error())
	}
	var t guard.Ticket
	a, _ := s.serve(r, &t, nil)
	return a
}

// headerID returns the request ID of an encoded request that does not
// parse, if its fixed header is there in the known version (so that the
// sender can tell which request was refused), else 0.
func headerID(req []byte) uint64 {
	if len(req) < 24 || req[0] != block.Version {
		return 0
	}
	return binary.BigEndian.Uint64(req[16:24])
}

// serve applies a parsed request and returns the encoded answer, in a
// buffer of bufs (nil: a new one), and its status. t is the request's
// ticket, idle (new, or ended).
func (s *Storage) serve(r block.Request, t *guard.Ticket, bufs *answerBufs) ([]byte, block.Status) {
	if r.Op != block.OpFlush && (r.Offset > s.size || uint64(r.Length) > s.size-r.Offset) {
		return answer(bufs, block.StatusInvalid, r.ID, fmt.Sprintf("%s of %d bytes at %d beyond the size %d", r.Op, r.Length, r.Offset, s.size)), block.StatusInvalid
	}
	t.Write = r.Op.Writes()
	n, err := s.begin(r.Token, t)
	switch {
	case errors.Is(err, guard.ErrRefused):
		s.refused(r, err)
		return answer(bufs, block.StatusFenced, r.ID, err.Error()), block.StatusFenced
	case err != nil:
		return answer(bufs, block.StatusInvalid, r.ID, "token: "+err.Error()), block.StatusInvalid
	case n != len(r.Token):
		s.end(t)
		return answer(bufs, block.StatusInvalid, r.ID, "bytes after the token"), block.StatusInvalid
	}
	var a []byte
	if r.Op == block.OpRead {
		// Read straight into the answer, after its header.
		a = bufs.Get(answerHeader + int(r.Length))
		_, err = s.f.ReadAt(a[answerHeader:], int64(r.Offset))
	} else {
		err = s.apply(r, t)
	}
	s.end(t)
	if err != nil {
		bufs.Put(a)
		return answer(bufs, block.StatusIO, r.ID, err.Error()), block.StatusIO
	}
	if a == nil {
		a = bufs.Get(answerHeader)
	}
	putAnswerHeader(a, block.StatusOK, r.ID, len(a)-answerHeader)
	return a, block.StatusOK
}

// begin checks the token at the start of enc with the guard and begins
// t's apply, or, unguarded, only decodes it into t.Token. It returns the
// token's length in enc.
func (s *Storage) begin(enc []byte, t *guard.Ticket) (int, error) {
	if s.g != nil {
		return s.g.BeginEncoded(enc, t)
	}
	tok, n, err := token.Parse(enc)
	if err != nil {
		return 0, err
	}
	t.Token = tok
	return n, nil
}

// end ends t's apply at the guard, if there is one.
func (s *Storage) end(t *guard.Ticket) {
	if s.g != nil {
		s.g.End(t)
	}
}

// zeros is what trims and zeroes write, a piece at a time; never written
// to.
var zeros = make([]byte, 256<<10)

// apply applies r, a request other than a read, admitted by the guard
// (its apply under way).
func (s *Storage) apply(r block.Request, t *guard.Ticket) error {
	if r.Op.Writes() {
		s.record(r, t)
	}
	switch r.Op {
	case block.OpWrite:
		if _, err := s.f.WriteAt(r.Data, int64(r.Offset)); err != nil {
			return err
		}
	case block.OpTrim, block.OpZero:
		// Zeros written: a trim may discard, and reading zeros is what
		// discarding shows.
		for off, end := r.Offset, r.Offset+uint64(r.Length); off < end; {
			n := min(end-off, uint64(len(zeros)))
			if _, err := s.f.WriteAt(zeros[:n], int64(off)); err != nil {
				return err
			}
			off += n
		}
	}
	if r.Op == block.OpFlush || r.Flags&block.FlagFUA != 0 {
		return s.f.Sync()
	}
	return nil
}

// record appends a write's line to the apply log.
func (s *Storage) record(r block.Request, t *guard.Ticket) {
	if s.log == nil {
		return
	}
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if s.closed {
		return
	}
	s.line = appendApplied(s.line[:0], &Applied{
		Op: r.Op.String(), Group: t.Token.Group, Epoch: t.Token.Epoch, Domain: t.Token.Domain, Inc: t.Token.Incarnation,
		ID: r.ID, Offset: r.Offset, Length: r.Length, At: s.now(),
	})
	s.log.Write(s.line)
}

// refused records a request the guard refused.
func (s *Storage) refused(r block.Request, err error) {
	if s.log == nil {
		return
	}
	tok, _, _ := token.Parse(r.Token) // what of it parses: the guard decoded it
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if s.closed {
		return
	}
	s.line = appendApplied(s.line[:0], &Applied{
		Op: "refused", Group: tok.Group, Epoch: tok.Epoch, Domain: tok.Domain, Inc: tok.Incarnation,
		ID: r.ID, Offset: r.Offset, Length: r.Length, At: s.now(), Request: r.Op.String(), Reason: guard.Reason(err),
	})
	s.log.Write(s.line)
}

// FlushLog writes out the apply log's buffered lines (a process that may
// be killed calls it now and then, so that little of the log is lost).
func (s *Storage) FlushLog() error {
	if s.log == nil {
		return nil
	}
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if s.closed {
		return nil
	}
	return s.log.Flush()
}

// Fenced records in the apply log that the fence f holds in group. Pass
// it as the guard's Config.OnFence, through a closure since the guard is
// made first:
//
//	var st *storage.Storage
//	g := guard.New(guard.Config{OnFence: func(group string, f guard.Fence) { st.Fenced(group, f) }})
//	st, err := storage.Open(storage.Config{Guard: g, ...})
//	// only now start the fencing (idc.Fence)
//
// On a nil Storage, or after Close, it records nothing.
func (s *Storage) Fenced(group string, f guard.Fence) {
	if s == nil || s.log == nil {
		return
	}
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if s.closed {
		return
	}
	s.line = appendFence(s.line[:0], group, f.Epoch, s.now())
	s.log.Write(s.line)
}

// Close flushes the apply log and closes the backing; nothing is
// recorded after it.
func (s *Storage) Close() error {
	var err error
	s.logMu.Lock()
	s.closed = true
	if s.log != nil {
		err = s.log.Flush()
	}
	s.logMu.Unlock()
	return errors.Join(err, s.f.Close())
}

// answer encodes an answer with text as its payload, in a buffer of bufs
// (nil: a new one).
func answer(bufs *answerBufs, st block.Status, id uint64, text string) []byte {
	a := bufs.Get(answerHeader + len(text))
	putAnswerHeader(a, st, id, len(text))
	copy(a[answerHeader:], text)
	return a
}
