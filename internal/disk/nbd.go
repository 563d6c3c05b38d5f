package disk

import (
	"context"
	"fmt"

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
func Backend(d *Disk) nbd.Backend { return backend{d} }

type backend struct{ d *Disk }

func (b backend) Size() uint64 { return b.d.Size() }

func (b backend) Features() nbd.Features {
	return nbd.Features{Flush: true, FUA: true, Trim: true, Zero: true, MultiConn: true}
}

func (b backend) ReadAt(ctx context.Context, p []byte, off uint64) error {
	res, err := b.do(ctx, block.Request{Op: block.OpRead, Offset: off, Length: uint32(len(p))})
	if err == nil {
		if len(res.Data) != len(p) {
			return fmt.Errorf("%w: the storage returned %d bytes for a read of %d", nbd.ErrIO, len(res.Data), len(p))
		}
		copy(p, res.Data)
	}
	return err
}

func (b backend) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	r := block.Request{Op: block.OpWrite, Offset: off, Length: uint32(len(p)), Data: p}
	if fua {
		r.Flags = block.FlagFUA
	}
	_, err := b.do(ctx, r)
	return err
}

func (b backend) Flush(ctx context.Context) error {
	_, err := b.do(ctx, block.Request{Op: block.OpFlush})
	return err
}

func (b backend) Trim(ctx context.Context, off, length uint64) error {
	return b.ranges(ctx, block.OpTrim, off, length)
}

func (b backend) Zero(ctx context.Context, off, length uint64, _ bool) error {
	// The storage writes zeroes: the range stays allocated either way.
	return b.ranges(ctx, block.OpZero, off, length)
}

// ranges sends a trim or zero in pieces of at most block.MaxLength.
func (b backend) ranges(ctx context.Context, op block.Op, off, length uint64) error {
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
func (b backend) do(ctx context.Context, r block.Request) (Result, error) {
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
