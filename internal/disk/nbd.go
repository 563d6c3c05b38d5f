package disk

import (
	"context"
	"fmt"
	"sync"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/nbd"
)

// Backend returns d as an NBD export's backend (package nbd). Every
// request blocks until the storage answered it through some path; with no
// path it waits, as a disk with every path down queues its I/O. A request
// whose connection goes away is abandoned (Disk.Abandon): carried to its
// outcome all the same, and later requests wait for it, so a client that
// reconnects and sends it again (qemu's reconnect-delay) cannot be
// overtaken by the old copy.
//
// A flush is the storage's: it makes every write the storage applied
// durable, whichever path and connection it came through, so the export
// offers multi-conn.
//
// Reads and writes are started and completed without a goroutine waiting
// for each (nbd.AsyncBackend): the data of a read is copied into the
// client's buffer as the storage's answer arrives, and the reply is
// written from there. A request whose connection goes away is abandoned
// as soon as its context ends.
func Backend(d *Disk) nbd.Backend { return &backend{d: d, watches: map[context.Context]*watch{}} }

type backend struct {
	d *Disk

	mu      sync.Mutex
	watches map[context.Context]*watch // the contexts of started requests
}

// watch is a context that started requests run under (an NBD
// connection's): once it ends, they are abandoned and completed with its
// error.
type watch struct {
	ended bool
	reqs  map[*started]struct{} // started, without an outcome delivered
}

// started is a request of StartReadAt or StartWriteAt.
type started struct {
	b      *backend
	w      *watch
	ctx    context.Context
	id     uint64 // the disk's, once Submit returned (IDs are not 0)
	want   int    // a read's length; -1 for a write
	done   func(error)
	result func(Result) // the disk's done
}

// StartReadAt implements nbd.AsyncBackend.
func (b *backend) StartReadAt(ctx context.Context, p []byte, off uint64, done func(error)) {
	b.start(ctx, block.Request{Op: block.OpRead, Offset: off, Length: uint32(len(p)), Data: p}, len(p), done)
}

// StartWriteAt implements nbd.AsyncBackend.
func (b *backend) StartWriteAt(ctx context.Context, p []byte, off uint64, fua bool, done func(error)) {
	r := block.Request{Op: block.OpWrite, Offset: off, Length: uint32(len(p)), Data: p}
	if fua {
		r.Flags = block.FlagFUA
	}
	b.start(ctx, r, -1, done)
}

// start submits r and calls done with its outcome, or with ctx's error
// once ctx ended (the request is then abandoned).
func (b *backend) start(ctx context.Context, r block.Request, want int, done func(error)) {
	st := &started{b: b, ctx: ctx, want: want, done: done}
	st.result = st.finish
	b.mu.Lock()
	w := b.watches[ctx]
	if w == nil {
		w = &watch{reqs: map[*started]struct{}{}}
		b.watches[ctx] = w
		context.AfterFunc(ctx, func() { b.abandon(ctx, w) })
	}
	if w.ended {
		b.mu.Unlock()
		done(ctx.Err())
		return
	}
	st.w = w
	w.reqs[st] = struct{}{}
	b.mu.Unlock()
	// Submit copies a write's payload, and reads into p until the outcome
	// or Abandon.
	id := b.d.Submit(r, st.result)
	b.mu.Lock()
	st.id = id
	_, waiting := w.reqs[st]
	if waiting && w.ended {
		// The context ended before the ID was known: abandon it now.
		delete(w.reqs, st)
		b.mu.Unlock()
		b.d.Abandon(id)
		done(ctx.Err())
		return
	}
	b.mu.Unlock()
}

// finish delivers the disk's outcome of st, unless st was abandoned.
func (st *started) finish(res Result) {
	b := st.b
	b.mu.Lock()
	_, waiting := st.w.reqs[st]
	delete(st.w.reqs, st)
	b.mu.Unlock()
	if !waiting {
		return
	}
	err := statusErr(res)
	if err == nil && st.want >= 0 && len(res.Data) != st.want {
		err = fmt.Errorf("%w: the storage returned %d bytes for a read of %d", nbd.ErrIO, len(res.Data), st.want)
	}
	st.done(err)
}

// abandon ends the requests started under ctx, which ended: each is
// abandoned (the disk no longer writes into its buffer) before its done
// is called with ctx's error.
func (b *backend) abandon(ctx context.Context, w *watch) {
	b.mu.Lock()
	w.ended = true
	if b.watches[ctx] == w {
		delete(b.watches, ctx)
	}
	var gone []*started
	for st := range w.reqs {
		if st.id != 0 { // else start abandons it once Submit returned
			gone = append(gone, st)
			delete(w.reqs, st)
		}
	}
	b.mu.Unlock()
	for _, st := range gone {
		b.d.Abandon(st.id)
		st.done(ctx.Err())
	}
}

func (b *backend) Size() uint64 { return b.d.Size() }

func (b *backend) Features() nbd.Features {
	return nbd.Features{Flush: true, FUA: true, Trim: true, Zero: true, MultiConn: true}
}

func (b *backend) ReadAt(ctx context.Context, p []byte, off uint64) error {
	// The disk reads into p as the answer arrives.
	res, err := b.do(ctx, block.Request{Op: block.OpRead, Offset: off, Length: uint32(len(p)), Data: p})
	if err == nil && len(res.Data) != len(p) {
		return fmt.Errorf("%w: the storage returned %d bytes for a read of %d", nbd.ErrIO, len(res.Data), len(p))
	}
	return err
}

func (b *backend) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	r := block.Request{Op: block.OpWrite, Offset: off, Length: uint32(len(p)), Data: p}
	if fua {
		r.Flags = block.FlagFUA
	}
	_, err := b.do(ctx, r)
	return err
}

func (b *backend) Flush(ctx context.Context) error {
	_, err := b.do(ctx, block.Request{Op: block.OpFlush})
	return err
}

func (b *backend) Trim(ctx context.Context, off, length uint64) error {
	return b.ranges(ctx, block.OpTrim, off, length)
}

func (b *backend) Zero(ctx context.Context, off, length uint64, _ bool) error {
	// The storage writes zeroes: the range stays allocated either way.
	return b.ranges(ctx, block.OpZero, off, length)
}

// ranges sends a trim or zero in pieces of at most block.MaxLength.
func (b *backend) ranges(ctx context.Context, op block.Op, off, length uint64) error {
	for length > 0 {
		n := min(length, block.MaxLength)
		if _, err := b.do(ctx, block.Request{Op: op, Offset: off, Length: uint32(n)}); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// do submits r and waits for its outcome or ctx.
func (b *backend) do(ctx context.Context, r block.Request) (Result, error) {
	ch := make(chan Result, 1)
	id := b.d.Submit(r, func(res Result) { ch <- res })
	select {
	case res := <-ch:
		return res, statusErr(res)
	case <-ctx.Done():
		b.d.Abandon(id)
		return Result{}, ctx.Err()
	}
}

// statusErr maps the storage's status to the NBD error the client gets.
func statusErr(res Result) error {
	switch res.Status {
	case block.StatusOK:
		return nil
	case block.StatusInvalid:
		return nbd.ErrInvalid
	case block.StatusShutdown:
		return nbd.ErrShutdown
	default:
		return nbd.ErrIO
	}
}

var _ nbd.AsyncBackend = (*backend)(nil)
