package nbd

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// asyncMem is an AsyncBackend on memory: each read and write is done,
// and completed, on a goroutine of its own after a random moment, so
// that completions come out of order and never on the server's
// goroutine. With stall set, they complete only once their context ends.
type asyncMem struct {
	*MemBackend
	stall   atomic.Bool
	started atomic.Int32
	ended   atomic.Int32 // completed with their context's error
}

func (m *asyncMem) later(ctx context.Context, work func() error, done func(error)) {
	m.started.Add(1)
	go func() {
		if m.stall.Load() {
			<-ctx.Done()
			m.ended.Add(1)
			done(ctx.Err())
			return
		}
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		done(work())
	}()
}

func (m *asyncMem) StartReadAt(ctx context.Context, p []byte, off uint64, done func(error)) {
	m.later(ctx, func() error { return m.MemBackend.ReadAt(ctx, p, off) }, done)
}

func (m *asyncMem) StartWriteAt(ctx context.Context, p []byte, off uint64, fua bool, done func(error)) {
	m.later(ctx, func() error { return m.MemBackend.WriteAt(ctx, p, off, fua) }, done)
}

// TestAsyncBackend: reads and writes of an AsyncBackend, completing out
// of order on goroutines of their own, are answered with the right data
// while flushes, trims and zeroes go through the Backend's methods; every
// byte is where the client put it.
func TestAsyncBackend(t *testing.T) {
	const (
		workers = 16
		blocks  = 16
		bs      = 4096
		ops     = 100
	)
	b := &asyncMem{MemBackend: NewMemBackend(workers * blocks * bs)}
	_, c, _ := testClient(t, Config{MaxInFlight: 16}, b, ClientConfig{})
	ctx := tctx(t)
	model := make([]byte, workers*blocks*bs)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			base := w * blocks * bs
			mine := model[base : base+blocks*bs]
			for i := range ops {
				blk := rng.IntN(blocks)
				nblk := 1 + rng.IntN(min(4, blocks-blk))
				off, n := blk*bs, nblk*bs
				var err error
				switch rng.IntN(5) {
				case 0, 1:
					p := pattern(byte(w*31+i), n)
					err = c.WriteAt(ctx, p, uint64(base+off), rng.IntN(4) == 0)
					copy(mine[off:], p)
				case 2:
					err = c.Zero(ctx, uint64(base+off), uint64(n))
					clear(mine[off : off+n])
				default:
					p := make([]byte, n)
					if err = c.ReadAt(ctx, p, uint64(base+off)); err == nil && !bytes.Equal(p, mine[off:off+n]) {
						err = fmt.Errorf("worker %d: read of %d bytes at %d differs from what it wrote", w, n, base+off)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), model) {
		t.Fatal("the disk differs from the model")
	}
	if b.started.Load() == 0 {
		t.Fatal("the server never started a request asynchronously")
	}
}

// TestAsyncBackendGone: requests an AsyncBackend holds when the client
// goes away end through their context, and the connection ends with
// them: Shutdown does not wait for requests nobody will answer.
func TestAsyncBackendGone(t *testing.T) {
	b := &asyncMem{MemBackend: NewMemBackend(1 << 20)}
	b.stall.Store(true)
	s, sock := startServer(t, Config{Exports: []Export{{Name: "disk", Backend: b}}})
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(tctx(t), nc, ClientConfig{Export: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(tctx(t))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			p := make([]byte, 4096)
			if i%2 == 0 {
				c.WriteAt(ctx, p, uint64(i)*4096, false)
			} else {
				c.ReadAt(ctx, p, uint64(i)*4096)
			}
		})
	}
	for b.started.Load() < 8 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	wg.Wait()
	nc.Close() // the client goes away
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := s.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := b.ended.Load(); n != 8 {
		t.Fatalf("%d requests ended through their context, want 8", n)
	}
}
