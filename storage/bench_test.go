package storage

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
)

// BenchmarkServer measures the storage hop alone, as a driver domain
// sees it: block requests over one resource connection (a unix socket)
// to a Server on a file, depth requests in flight, with the guard and the
// apply log in the path. An op is one request answered.
func BenchmarkServer(b *testing.B) {
	for _, op := range []struct {
		name string
		op   block.Op
		size int
	}{{"write-4k", block.OpWrite, 4 << 10}, {"read-64k", block.OpRead, 64 << 10}} {
		for _, depth := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/depth-%d", op.name, depth), func(b *testing.B) {
				benchServer(b, op.op, op.size, depth)
			})
		}
	}
}

func benchServer(b *testing.B, op block.Op, size, depth int) {
	const span = 64 << 20
	var st *Storage
	g := guard.New(guard.Config{Name: "storage", OnFence: func(group string, f guard.Fence) { st.Fenced(group, f) }})
	st, err := Open(Config{Path: filepath.Join(b.TempDir(), "disk.img"), Size: span, Guard: g, Log: discard{}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := g.Fence(context.Background(), "disk1", guard.Fence{Epoch: 2, Members: []proto.Ref{{ID: "ft", Incarnation: 3}}}); err != nil {
		b.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{Storage: st, Network: network.OS{}})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	addr, err := srv.Listen("unix://" + filepath.Join(shortDir(b), "s.sock"))
	if err != nil {
		b.Fatal(err)
	}
	type dialed struct {
		c   network.Conn
		err error
	}
	dc := make(chan dialed, 1)
	network.OS{}.Dial(addr, 5*time.Second, func(c network.Conn, err error) { dc <- dialed{c, err} })
	d := <-dc
	if d.err != nil {
		b.Fatal(d.err)
	}
	defer d.c.Close()
	rel, _ := d.c.(network.Releaser)
	// One frame per slot, sent again once its answer came (the storage
	// has read all of it by then).
	frames := make([][]byte, depth)
	data := make([]byte, size)
	for i := range frames {
		r := block.Request{Op: op, Length: uint32(size), Offset: uint64(i*size) % span, ID: uint64(i), Token: tokenOf(2)}
		if op == block.OpWrite {
			r.Data = data
		}
		frames[i] = block.AppendRequest(nil, r)
	}
	total := b.N
	sent, answered := 0, 0
	done := make(chan error, 1)
	next := func(slot int) {
		f := frames[slot]
		// The offset moves on, so that the whole span is touched.
		off := uint64(sent*size) % span
		for i := range 8 {
			f[8+i] = byte(off >> (56 - 8*i))
		}
		sent++
		d.c.Send(f, nil)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	d.c.Receive(func(f []byte, err error) {
		if err != nil {
			done <- err
			return
		}
		a, err := block.ParseAnswer(f)
		if err == nil && a.Status != block.StatusOK {
			err = a.Err()
		}
		if rel != nil {
			rel.Release(f)
		}
		if err != nil {
			done <- err
			return
		}
		answered++
		if answered == total {
			done <- nil
			return
		}
		if sent < total {
			next(int(a.ID))
		}
	})
	for i := range min(depth, total) {
		next(i)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
}

// discard is an apply log that keeps nothing.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
