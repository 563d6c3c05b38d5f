// Package storage is the shared block store of the multipath disk
// (DESIGN §8): a file of fixed size that serves block requests (package
// block) arriving over idc channels, each checked by the store's guard
// (package guard) in one step with the start of its apply, so that no
// request of an ended epoch is applied after the fence of the next (G5).
// Every write it applies is recorded in an apply log — epoch, domain,
// request ID, offset, length, time — from which a checker proves that.
package storage

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/guard"
)

// Config configures a Storage.
type Config struct {
	// Path is the backing file. Open creates it with Size bytes if it does
	// not exist; an existing one must hold at least Size bytes.
	Path string
	// Size is the store's size in bytes: a positive multiple of BlockSize.
	Size int64
	// BlockSize is the size of a block (default 4096): requests need not
	// be aligned to it, but the size is a whole number of blocks.
	BlockSize int
	// Guard checks every request; required.
	Guard *guard.Guard
	// Log, if not nil, receives the apply log: one JSON object (Applied)
	// a line, for every write, trim and zero applied, in the order of
	// their applies.
	Log io.Writer
}

// Applied is one line of the apply log.
type Applied struct {
	Op     string `json:"op"`
	Epoch  uint64 `json:"epoch"`
	Domain string `json:"domain"`
	Inc    uint64 `json:"incarnation"`
	ID     uint64 `json:"id"`
	Offset uint64 `json:"offset"`
	Length uint32 `json:"length"`
	// At is when the apply began (Unix nanoseconds).
	At int64 `json:"at"`
}

// ErrConfig is wrapped by every configuration error of Open.
var ErrConfig = errors.New("idc: storage: invalid config")

// Storage is an open block store. Its methods are safe for concurrent use.
type Storage struct {
	f    *os.File
	size uint64
	g    *guard.Guard

	logMu sync.Mutex
	log   *bufio.Writer
	enc   *json.Encoder
}

// Open opens (or creates) the store's backing file.
func Open(cfg Config) (*Storage, error) {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 4096
	}
	switch {
	case cfg.Path == "":
		return nil, fmt.Errorf("%w: no path", ErrConfig)
	case cfg.Guard == nil:
		return nil, fmt.Errorf("%w: no guard", ErrConfig)
	case cfg.BlockSize < 512 || cfg.BlockSize&(cfg.BlockSize-1) != 0:
		return nil, fmt.Errorf("%w: block size %d (want a power of two, at least 512)", ErrConfig, cfg.BlockSize)
	case cfg.Size <= 0 || cfg.Size%int64(cfg.BlockSize) != 0:
		return nil, fmt.Errorf("%w: size %d (want a positive multiple of the block size %d)", ErrConfig, cfg.Size, cfg.BlockSize)
	}
	f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE, 0o644)
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
		if err := f.Truncate(cfg.Size); err != nil {
			f.Close()
			return nil, fmt.Errorf("storage: %w", err)
		}
	case st.Size() < cfg.Size:
		f.Close()
		return nil, fmt.Errorf("%w: %s holds %d bytes, fewer than the size %d", ErrConfig, cfg.Path, st.Size(), cfg.Size)
	}
	s := &Storage{f: f, size: uint64(cfg.Size), g: cfg.Guard}
	if cfg.Log != nil {
		s.log = bufio.NewWriter(cfg.Log)
		s.enc = json.NewEncoder(s.log)
	}
	return s, nil
}

// Size is the store's size in bytes.
func (s *Storage) Size() uint64 { return s.size }

// Serve applies one encoded request and returns the encoded answer. A
// request the guard refuses is answered block.StatusFenced and not
// applied; a malformed or out-of-bounds one block.StatusInvalid.
func (s *Storage) Serve(ctx context.Context, req []byte) []byte {
	r, err := block.Parse(req)
	if err != nil {
		return answer(block.StatusInvalid, 0, err.Error())
	}
	if r.Op != block.OpFlush && (r.Offset > s.size || uint64(r.Length) > s.size-r.Offset) {
		return answer(block.StatusInvalid, r.ID, fmt.Sprintf("%s of %d bytes at %d beyond the size %d", r.Op, r.Length, r.Offset, s.size))
	}
	t := &guard.Ticket{Write: r.Op.Writes()}
	n, err := s.g.BeginEncoded(r.Token, t)
	switch {
	case errors.Is(err, guard.ErrRefused):
		return answer(block.StatusFenced, r.ID, err.Error())
	case err != nil:
		return answer(block.StatusInvalid, r.ID, "token: "+err.Error())
	case n != len(r.Token):
		s.g.End(t)
		return answer(block.StatusInvalid, r.ID, "bytes after the token")
	}
	data, err := s.apply(r, t)
	s.g.End(t)
	if err != nil {
		return answer(block.StatusIO, r.ID, err.Error())
	}
	return block.AppendAnswer(nil, block.Answer{Status: block.StatusOK, ID: r.ID, Data: data})
}

// apply applies r, admitted by the guard (its apply under way).
func (s *Storage) apply(r block.Request, t *guard.Ticket) ([]byte, error) {
	if r.Op.Writes() {
		s.record(r, t)
	}
	switch r.Op {
	case block.OpRead:
		buf := make([]byte, r.Length)
		_, err := s.f.ReadAt(buf, int64(r.Offset))
		return buf, err
	case block.OpWrite:
		if _, err := s.f.WriteAt(r.Data, int64(r.Offset)); err != nil {
			return nil, err
		}
	case block.OpTrim, block.OpZero:
		// Zeros written: a trim may discard, and reading zeros is what
		// discarding shows.
		if _, err := s.f.WriteAt(make([]byte, r.Length), int64(r.Offset)); err != nil {
			return nil, err
		}
	}
	if r.Op == block.OpFlush || r.Flags&block.FlagFUA != 0 {
		return nil, s.f.Sync()
	}
	return nil, nil
}

// record appends a write's line to the apply log.
func (s *Storage) record(r block.Request, t *guard.Ticket) {
	if s.enc == nil {
		return
	}
	s.logMu.Lock()
	defer s.logMu.Unlock()
	s.enc.Encode(Applied{
		Op: r.Op.String(), Epoch: t.Token.Epoch, Domain: t.Token.Domain, Inc: t.Token.Incarnation,
		ID: r.ID, Offset: r.Offset, Length: r.Length, At: time.Now().UnixNano(),
	})
}

// Close flushes the apply log and closes the backing file.
func (s *Storage) Close() error {
	var err error
	if s.log != nil {
		s.logMu.Lock()
		err = s.log.Flush()
		s.logMu.Unlock()
	}
	return errors.Join(err, s.f.Close())
}

func answer(st block.Status, id uint64, text string) []byte {
	return block.AppendAnswer(nil, block.Answer{Status: st, ID: id, Data: []byte(text)})
}
