package network

import (
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"
)

// rig is a unix socket pair of OS connections: frames sent on c arrive at
// got, as s delivered them.
type rig struct {
	c, s *osConn
	got  chan []byte
	quit chan struct{} // closed at the end: s's Receive stops waiting on got
	sent chan error
	done func(error) // Send's callback: to sent
}

func newRig(tb testing.TB) *rig {
	tb.Helper()
	accepted := make(chan Conn, 1)
	ln, err := OS{}.Listen("unix://"+filepath.Join(tb.TempDir(), "s"), func(c Conn) { accepted <- c })
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	dialed := make(chan Conn, 1)
	OS{}.Dial(ln.Addr(), 5*time.Second, func(c Conn, err error) {
		if err != nil {
			tb.Error(err)
		}
		dialed <- c
	})
	r := &rig{got: make(chan []byte, 256), quit: make(chan struct{}), sent: make(chan error, 1)}
	r.done = func(err error) { r.sent <- err }
	c := <-dialed
	if c == nil {
		tb.FailNow()
	}
	r.c = c.(*osConn)
	select {
	case s := <-accepted:
		r.s = s.(*osConn)
	case <-time.After(5 * time.Second):
		tb.Fatal("nothing accepted")
	}
	tb.Cleanup(func() { r.c.Close(); r.s.Close(); close(r.quit) })
	r.s.Receive(func(b []byte, err error) {
		if err == nil {
			select {
			case r.got <- b:
			case <-r.quit:
			}
		}
	})
	return r
}

// send sends frame and waits until it was written.
func (r *rig) send(frame []byte) error {
	r.c.Send(frame, r.done)
	return <-r.sent
}

// roundTrip sends frame and returns it as received.
func (r *rig) roundTrip(tb testing.TB, frame []byte) []byte {
	if err := r.send(frame); err != nil {
		tb.Fatal(err)
	}
	return <-r.got
}

// freeList is what s's pool keeps: buffers and bytes.
func (r *rig) freeList() (n, bytes int) {
	r.s.pool.mu.Lock()
	defer r.s.pool.mu.Unlock()
	for _, f := range r.s.pool.free {
		for _, b := range f {
			n++
			bytes += cap(b)
		}
	}
	if n != r.s.pool.n || bytes != r.s.pool.bytes {
		panic("the pool's counts are wrong")
	}
	return n, bytes
}

// same says whether a and b share their first byte's memory.
func same(a, b []byte) bool { return cap(a) > 0 && cap(b) > 0 && &a[:1][0] == &b[:1][0] }

// pattern is frame i of n bytes: i, then bytes that depend on i.
func pattern(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*131 + j*7 + j>>8)
	}
	if n >= 4 {
		binary.BigEndian.PutUint32(b, uint32(i))
	}
	return b
}

// intact says whether b is pattern(i, n).
func intact(b []byte, i, n int) bool {
	if len(b) != n {
		return false
	}
	if n >= 4 && binary.BigEndian.Uint32(b) != uint32(i) {
		return false
	}
	start := 4
	if n < 4 {
		start = 0
	}
	for j := start; j < n; j++ {
		if b[j] != byte(i*131+j*7+j>>8) {
			return false
		}
	}
	return true
}

// TestReleaseClasses: the size classes run from minClass to MaxFrame, and
// a frame goes into the smallest that holds it.
func TestReleaseClasses(t *testing.T) {
	if minClass<<(classes-1) != MaxFrame {
		t.Fatalf("the largest class is %d bytes, not MaxFrame", minClass<<(classes-1))
	}
	for _, tc := range []struct{ n, size int }{
		{smallFrame + 1, 2 << 10}, {2 << 10, 2 << 10}, {2<<10 + 1, 4 << 10},
		{64 << 10, 64 << 10}, {64<<10 + 1, 128 << 10}, {MaxFrame, MaxFrame},
	} {
		if got := minClass << class(tc.n); got != tc.size {
			t.Errorf("a frame of %d bytes goes into a buffer of %d bytes, want %d", tc.n, got, tc.size)
		}
	}
}

// raceBuild says whether the test runs with the race detector, under which
// the writer goroutine's select allocates now and then.
func raceBuild() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// TestReleaseAllocs: a stream of large frames the receiver releases
// allocates nothing per frame once it runs; one it does not release
// allocates a buffer per frame.
func TestReleaseAllocs(t *testing.T) {
	// Allocations per released frame: the pool allocates none, but the
	// runtime now and then does (sudogs for select after a GC).
	most := 0.05
	if raceBuild() {
		most = 0.25
	}
	for _, tc := range []struct {
		name    string
		size    int
		release bool
		frames  int
	}{
		{"4KiB/release", 4 << 10, true, 2000},
		{"64KiB/release", 64 << 10, true, 1000},
		{"4KiB/keep", 4 << 10, false, 2000},
		{"64KiB/keep", 64 << 10, false, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			frame := pattern(1, tc.size)
			step := func() {
				b := r.roundTrip(t, frame)
				if tc.release {
					r.s.Release(b)
				}
			}
			for range 100 { // warm up: buffers, queues, the socket
				step()
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range tc.frames {
				step()
			}
			runtime.ReadMemStats(&after)
			per := float64(after.Mallocs-before.Mallocs) / float64(tc.frames)
			t.Logf("%.3f allocations per frame", per)
			switch {
			case tc.release && per > most:
				t.Errorf("%.3f allocations per released frame, want at most %.2f", per, most)
			case !tc.release && per < 1:
				t.Errorf("%.3f allocations per frame kept, want at least 1 (a buffer)", per)
			}
		})
	}
}

// TestReleaseReuse: a released buffer takes the next frame of its size
// class, whatever its length; one not released, or released before a
// frame of another class, is not reused for it.
func TestReleaseReuse(t *testing.T) {
	for _, tc := range []struct {
		name        string
		first, next int
		release     bool
		reused      bool
	}{
		{"released, same length", 4 << 10, 4 << 10, true, true},
		{"released, same class", 4 << 10, 3000, true, true},
		{"released, smallest class", smallFrame + 1, 2 << 10, true, true},
		{"released, larger class", 4 << 10, 4<<10 + 1, true, false},
		{"released, smaller class", 4 << 10, 2 << 10, true, false},
		{"released, small frame next", 4 << 10, 100, true, false},
		{"kept", 4 << 10, 4 << 10, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			a := r.roundTrip(t, pattern(1, tc.first))
			if cap(a) != minClass<<class(tc.first) {
				t.Fatalf("a frame of %d bytes has capacity %d", tc.first, cap(a))
			}
			if tc.release {
				r.s.Release(a)
			}
			b := r.roundTrip(t, pattern(2, tc.next))
			if !intact(b, 2, tc.next) {
				t.Fatal("the second frame is damaged")
			}
			if same(a, b) != tc.reused {
				t.Errorf("reused: %v, want %v", same(a, b), tc.reused)
			}
			if !tc.release && !intact(a, 1, tc.first) {
				t.Error("the frame kept was overwritten")
			}
		})
	}
}

// TestReleaseIntact: frames of many sizes and contents, released at once,
// later from another goroutine, or some kept for a while, always arrive
// whole, and a frame not yet released is never overwritten.
func TestReleaseIntact(t *testing.T) {
	sizes := []int{1025, 2 << 10, 2<<10 + 1, 4 << 10, 3000, 100, 64 << 10, 100 << 10, 5000, smallFrame}
	const frames = 400
	for _, tc := range []struct {
		name  string
		keep  int // every keep-th frame is kept for hold frames (0: none)
		hold  int
		async bool // released by another goroutine
	}{
		{"at once", 0, 0, false},
		{"another goroutine", 0, 0, true},
		{"some kept", 3, 10, false},
		{"some kept, another goroutine", 2, 25, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			failed := make(chan error, 1)
			go func() { // the sender, up to 16 frames ahead of the receiver's checks
				for i := range frames {
					r.c.Send(pattern(i, sizes[i%len(sizes)]), nil)
					if i%16 == 15 {
						// Stay inside the send window: an empty frame,
						// waiting until it was written.
						if err := r.send(nil); err != nil {
							failed <- err
							return
						}
					}
				}
			}()
			type held struct {
				i int
				b []byte
			}
			var (
				kept     []held
				releases = make(chan []byte, 64)
				wg       sync.WaitGroup
			)
			if tc.async {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for b := range releases {
						r.s.Release(b)
					}
				}()
				defer wg.Wait()
				defer close(releases)
			}
			release := func(b []byte) {
				if tc.async {
					releases <- b
				} else {
					r.s.Release(b)
				}
			}
			for i := 0; i < frames; {
				var b []byte
				select {
				case b = <-r.got:
				case err := <-failed:
					t.Fatal(err)
				}
				if len(b) == 0 {
					continue // one the sender sent to wait
				}
				n := sizes[i%len(sizes)]
				if !intact(b, i, n) {
					t.Fatalf("frame %d (%d bytes) arrived damaged", i, n)
				}
				for _, h := range kept {
					if !intact(h.b, h.i, sizes[h.i%len(sizes)]) {
						t.Fatalf("frame %d, kept, was overwritten by the time frame %d arrived", h.i, i)
					}
				}
				if len(kept) > 0 && kept[0].i+tc.hold <= i {
					release(kept[0].b)
					kept = kept[1:]
				}
				if tc.keep > 0 && i%tc.keep == 0 {
					kept = append(kept, held{i, b})
				} else {
					release(b)
				}
				i++
			}
		})
	}
}

// TestReleaseIgnored: Release ignores nil, small frames carved out of a
// block, slices whose capacity is no size class, a buffer released again
// before it was reused, and anything after Close; none panics.
func TestReleaseIgnored(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame func(r *rig, t *testing.T) []byte // what is released
		times int
		close bool // Close before the releases
		want  int  // buffers then on the free list
	}{
		{"nil", func(*rig, *testing.T) []byte { return nil }, 1, false, 0},
		{"empty", func(*rig, *testing.T) []byte { return []byte{} }, 1, false, 0},
		{"small frame", func(r *rig, t *testing.T) []byte { return r.roundTrip(t, pattern(1, 100)) }, 1, false, 0},
		{"small frame of smallFrame bytes", func(r *rig, t *testing.T) []byte { return r.roundTrip(t, pattern(1, smallFrame)) }, 1, false, 0},
		{"slice of no class", func(*rig, *testing.T) []byte { return make([]byte, 3000) }, 1, false, 0},
		{"slice above MaxFrame", func(*rig, *testing.T) []byte { return make([]byte, 1, 2*MaxFrame) }, 1, false, 0},
		{"part of a large frame", func(r *rig, t *testing.T) []byte { return r.roundTrip(t, pattern(1, 4<<10))[1:] }, 1, false, 0},
		{"large frame", func(r *rig, t *testing.T) []byte { return r.roundTrip(t, pattern(1, 4<<10)) }, 1, false, 1},
		{"large frame twice", func(r *rig, t *testing.T) []byte { return r.roundTrip(t, pattern(1, 4<<10)) }, 2, false, 1},
		{"large frame after Close", func(r *rig, t *testing.T) []byte { return r.roundTrip(t, pattern(1, 4<<10)) }, 1, true, 0},
		{"nil after Close", func(*rig, *testing.T) []byte { return nil }, 1, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			frame := tc.frame(r, t)
			if tc.close {
				r.s.Close()
			}
			for range tc.times {
				r.s.Release(frame)
			}
			if n, _ := r.freeList(); n != tc.want {
				t.Errorf("%d buffers on the free list, want %d", n, tc.want)
			}
			if tc.want > 0 { // the next frame of the class takes it
				if b := r.roundTrip(t, pattern(2, len(frame))); !same(b, frame) || !intact(b, 2, len(frame)) {
					t.Error("the released buffer was not reused, or the frame read into it is damaged")
				}
				if n, _ := r.freeList(); n != 0 {
					t.Errorf("%d buffers on the free list after it was reused, want 0", n)
				}
			}
		})
	}
}

// TestReleaseBound: a connection keeps at most maxFree released buffers
// and maxFreeBytes; what is released beyond is left to the GC.
func TestReleaseBound(t *testing.T) {
	for _, tc := range []struct {
		name         string
		size, frames int
		n, bytes     int // then on the free list
	}{
		{"4KiB", 4 << 10, 100, maxFree, maxFree * 4 << 10},
		{"256KiB", 256 << 10, 40, 32, maxFreeBytes},
		{"3MiB", 3 << 20, 3, 2, 8 << 20},
		{"MaxFrame", MaxFrame, 1, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			var kept [][]byte
			for i := range tc.frames {
				kept = append(kept, r.roundTrip(t, pattern(i, tc.size)))
			}
			for _, b := range kept {
				r.s.Release(b)
				if n, bytes := r.freeList(); n > maxFree || bytes > maxFreeBytes {
					t.Fatalf("%d buffers of %d bytes on the free list", n, bytes)
				}
			}
			if n, bytes := r.freeList(); n != tc.n || bytes != tc.bytes {
				t.Errorf("%d buffers of %d bytes on the free list, want %d of %d", n, bytes, tc.n, tc.bytes)
			}
		})
	}
}

// TestReleaseFollowsTraffic: once the free list is full of buffers of one
// size, buffers of the size arriving now take their place, so a stream of
// large frames after a stream of small ones allocates nothing.
func TestReleaseFollowsTraffic(t *testing.T) {
	r := newRig(t)
	var kept [][]byte
	for i := range maxFree {
		kept = append(kept, r.roundTrip(t, pattern(i, 4<<10)))
	}
	for _, b := range kept {
		r.s.Release(b)
	}
	if n, _ := r.freeList(); n != maxFree {
		t.Fatalf("%d buffers on the free list, want %d", n, maxFree)
	}
	big := r.roundTrip(t, pattern(1, 64<<10))
	r.s.Release(big)
	again := r.roundTrip(t, pattern(2, 64<<10))
	if &again[:1][0] != &big[:1][0] {
		t.Fatal("a released 64 KiB buffer was not kept while small ones filled the list")
	}
	if n, bytes := r.freeList(); n > maxFree || bytes > maxFreeBytes {
		t.Fatalf("%d buffers of %d bytes on the free list", n, bytes)
	}
}

// BenchmarkReceiveLarge: a stream of 64 KiB frames over a unix socket,
// received with and without Release, and, for comparison, written and
// read on a plain socket into one buffer.
func BenchmarkReceiveLarge(b *testing.B) {
	const size = 64 << 10
	for _, release := range []bool{false, true} {
		name := "keep"
		if release {
			name = "release"
		}
		b.Run(name, func(b *testing.B) {
			r := newRig(b)
			frame := make([]byte, size)
			tokens := make(chan struct{}, SendWindow)
			done := func(error) { tokens <- struct{}{} }
			for range SendWindow {
				tokens <- struct{}{}
			}
			stop := make(chan struct{})
			go func() {
				for {
					select {
					case <-tokens:
						r.c.Send(frame, done)
					case <-stop:
						return
					}
				}
			}()
			defer close(stop)
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				f := <-r.got
				if release {
					r.s.Release(f)
				}
			}
		})
	}
	b.Run("socket", func(b *testing.B) {
		ln, err := net.Listen("unix", filepath.Join(b.TempDir(), "s"))
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			frame := make([]byte, 4+size)
			binary.BigEndian.PutUint32(frame, size)
			for {
				if _, err := c.Write(frame); err != nil {
					return
				}
			}
		}()
		c, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, size)
		var hdr [4]byte
		b.SetBytes(size)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf[:binary.BigEndian.Uint32(hdr[:])]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
