package scenario

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/internal/checker"
	"github.com/idc-dev/idc/nbd"
)

// Workload writes unique payloads to a disk through an NBD client and
// records when each write was acknowledged. Every block's content names
// the write that put it there: its first 16 bytes are the write's number
// and block, the rest a pattern derived from them, so a checker knows
// which write each block holds and that it holds all of it.
type Workload struct {
	// Client is the NBD client to write through; required.
	Client *nbd.Client
	// Blocks is how many blocks to write to (default 256), BlockSize their
	// size (default 4096).
	Blocks, BlockSize int
	// Workers is how many writes are in flight at once (default 8); each
	// worker owns the blocks b with b % Workers == its number, so one
	// write per block is in flight at a time.
	Workers int
	// Reads is the percentage of operations that read a block, any
	// block, so that reads meet other workers' writes (default 0: writes
	// only); Seed decides which operations are reads and of which blocks.
	Reads int
	Seed  uint64

	mu     sync.Mutex
	ops    []checker.Op // every operation, for the checker
	acks   []Ack
	last   map[int]uint64    // block → the last acknowledged write
	lastAt map[int]time.Time // block → when it was acknowledged
	next   uint64
	errors []error
}

// Ack is an acknowledged write.
type Ack struct {
	Block int
	Write uint64 // the write's number, unique in the workload
	Start time.Time
	At    time.Time // when the client had its acknowledgement
}

func (w *Workload) defaults() {
	if w.Blocks == 0 {
		w.Blocks = 256
	}
	if w.BlockSize == 0 {
		w.BlockSize = 4096
	}
	if w.Workers == 0 {
		w.Workers = 8
	}
	if w.last == nil {
		w.last, w.lastAt = map[int]uint64{}, map[int]time.Time{}
	}
}

// Run writes until ctx ends; each worker finishes the write it has in
// flight (so that every write has an outcome), then Run returns the
// errors the client saw, joined.
func (w *Workload) Run(ctx context.Context) error {
	w.defaults()
	var wg sync.WaitGroup
	for k := range w.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, w.BlockSize)
			rd := make([]byte, w.BlockSize)
			r := rand.New(rand.NewPCG(w.Seed, uint64(k)))
			var mine []int
			for b := k; b < w.Blocks; b += w.Workers {
				mine = append(mine, b)
			}
			for i := 0; ctx.Err() == nil && len(mine) > 0; {
				if w.Reads > 0 && r.IntN(100) < w.Reads {
					if err := w.read(ctx, rd, r.IntN(w.Blocks)); err != nil {
						return
					}
					continue
				}
				b := mine[i%len(mine)]
				i++
				w.mu.Lock()
				w.next++
				n := w.next
				w.mu.Unlock()
				Fill(buf, n, b)
				start := time.Now()
				// The write itself is not cut short by ctx: its outcome
				// must be known.
				err := w.Client.WriteAt(context.WithoutCancel(ctx), buf, uint64(b)*uint64(w.BlockSize), false)
				at := time.Now()
				w.mu.Lock()
				op := checker.Op{Kind: checker.Write, Block: b, Value: n, Call: start, Return: at, Outcome: checker.OK}
				if err != nil {
					op.Outcome = checker.Failed
					w.errors = append(w.errors, fmt.Errorf("write %d to block %d: %w", n, b, err))
				} else {
					w.acks = append(w.acks, Ack{Block: b, Write: n, Start: start, At: at})
					w.last[b], w.lastAt[b] = n, at
				}
				w.ops = append(w.ops, op)
				w.mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.errors...)
}

// read reads block b into p and records the read; it returns the
// client's error, if any.
func (w *Workload) read(ctx context.Context, p []byte, b int) error {
	start := time.Now()
	err := w.Client.ReadAt(context.WithoutCancel(ctx), p, uint64(b)*uint64(w.BlockSize))
	op := checker.Op{Kind: checker.Read, Block: b, Call: start, Return: time.Now(), Outcome: checker.OK}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		op.Outcome = checker.Failed
		w.errors = append(w.errors, fmt.Errorf("read of block %d: %w", b, err))
	} else {
		op.Value = Value(p, b)
	}
	w.ops = append(w.ops, op)
	return err
}

// Value is the write a block's content p names for the checker: 0 if it
// is all zeros (never written), the write's number if it is that write's
// whole payload for block b, and otherwise Torn, a value no write has.
func Value(p []byte, b int) uint64 {
	n, nb, whole := Holds(p)
	switch {
	case whole && nb == b:
		return n
	case !slices.ContainsFunc(p, func(c byte) bool { return c != 0 }):
		return 0
	}
	return Torn
}

// Torn is the value of a block that holds neither zeros nor a whole
// payload of its own: no write has it, so the checker rejects it.
const Torn = math.MaxUint64

// History returns every operation so far (writes and reads, with their
// outcomes), for the checker.
func (w *Workload) History() []checker.Op {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ops)
}

// Final reads every block (through read, as for Verify) and returns the
// write each holds, for the checker's History.Final. Call it once Run
// has returned.
func (w *Workload) Final(ctx context.Context, read func(ctx context.Context, p []byte, off uint64) error) (map[int]uint64, error) {
	w.defaults()
	buf := make([]byte, w.BlockSize)
	out := make(map[int]uint64, w.Blocks)
	for b := range w.Blocks {
		if err := read(ctx, buf, uint64(b)*uint64(w.BlockSize)); err != nil {
			return nil, fmt.Errorf("read block %d: %w", b, err)
		}
		out[b] = Value(buf, b)
	}
	return out, nil
}

// Count returns how many writes have been acknowledged.
func (w *Workload) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks)
}

// AckedSince returns how many blocks had a write acknowledged at or after
// t.
func (w *Workload) AckedSince(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, at := range w.lastAt {
		if !at.Before(t) {
			n++
		}
	}
	return n
}

// Acks returns the acknowledged writes in the order of their
// acknowledgements.
func (w *Workload) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := slices.Clone(w.acks)
	slices.SortFunc(a, func(x, y Ack) int { return x.At.Compare(y.At) })
	return a
}

// Verify reads every block back (through read, say an NBD client's
// ReadAt or a file's) and checks that each holds, whole, the last write
// acknowledged to it. Call it once Run has returned.
func (w *Workload) Verify(ctx context.Context, read func(ctx context.Context, p []byte, off uint64) error) error {
	w.defaults()
	buf := make([]byte, w.BlockSize)
	var errs []error
	for b := range w.Blocks {
		if err := read(ctx, buf, uint64(b)*uint64(w.BlockSize)); err != nil {
			return fmt.Errorf("read block %d: %w", b, err)
		}
		w.mu.Lock()
		want := w.last[b]
		w.mu.Unlock()
		got, gotBlock, whole := Holds(buf)
		switch {
		case want == 0:
			continue // never written, or no write acknowledged
		case !whole || gotBlock != b:
			errs = append(errs, fmt.Errorf("block %d holds no whole write of this workload (want write %d)", b, want))
		case got != want:
			errs = append(errs, fmt.Errorf("block %d holds write %d, the last acknowledged is %d", b, got, want))
		}
	}
	return errors.Join(errs...)
}

// Gap returns the longest time without an acknowledgement that ends after
// from: the service gap of a failover whose fault happened at from (acks
// in order of their times, as Acks returns them). Acknowledgements just
// after the fault may still come through the failed path, from requests
// it answered before it failed; the gap is the pause that follows.
func Gap(acks []Ack, from time.Time) (gap time.Duration, last, next time.Time) {
	for i := 1; i < len(acks); i++ {
		if !acks[i].At.After(from) {
			continue
		}
		if d := acks[i].At.Sub(acks[i-1].At); d > gap {
			gap, last, next = d, acks[i-1].At, acks[i].At
		}
	}
	return gap, last, next
}

// Fill writes the payload of write n to block b into p.
func Fill(p []byte, n uint64, b int) {
	binary.BigEndian.PutUint64(p[0:], n)
	binary.BigEndian.PutUint64(p[8:], uint64(b))
	x := n*0x9E3779B97F4A7C15 ^ uint64(b)
	for i := 16; i < len(p); i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
}

// Holds decodes a block's content: the write and block it names, and
// whether the rest is that write's pattern.
func Holds(p []byte) (n uint64, b int, whole bool) {
	if len(p) < 16 {
		return 0, 0, false
	}
	n, b = binary.BigEndian.Uint64(p), int(binary.BigEndian.Uint64(p[8:]))
	want := make([]byte, len(p))
	Fill(want, n, b)
	return n, b, n != 0 && slices.Equal(want, p)
}
