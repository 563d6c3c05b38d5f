package bufpool

import "testing"

// The buffers of a channel mesh (MinClass 9), as it uses them.
func TestBufferClasses(t *testing.T) {
	for _, tc := range []struct{ n, cap int }{
		{1, 512}, {32, 512}, {512, 512}, {513, 1024}, {4096 + 32, 8192}, {65536 + 32, 131072}, {1 << 20, 1 << 20},
	} {
		p := Classes{MinClass: 9}
		if b := p.Get(tc.n); cap(b) != tc.cap || len(b) != tc.n {
			t.Errorf("Get(%d): len %d cap %d, want %d and %d", tc.n, len(b), cap(b), tc.n, tc.cap)
		}
	}
}

func TestBufferReuse(t *testing.T) {
	p := Classes{MinClass: 9}
	b := p.Get(5000)
	p.Put(b)
	if c := p.Get(6000); &c[:1][0] != &b[:1][0] {
		t.Fatal("a buffer of the class was not reused")
	}
	// A small frame does not take a large buffer.
	p.Put(b)
	if c := p.Get(100); cap(c) != 512 {
		t.Fatalf("get(100) took a buffer of %d bytes", cap(c))
	}
	// Buffers of no class size, or too small, are not kept.
	for _, b := range [][]byte{make([]byte, 0, 700), make([]byte, 0, 100), nil} {
		p.Put(b)
	}
	if p.total != 8192 {
		t.Fatalf("%d bytes kept, want the one buffer of 8192", p.total)
	}
}

// TestBufferBounds: what is kept stays within the bounds, and follows the
// traffic: once the bytes are reached, buffers of a new size take the
// place of those kept before.
func TestBufferBounds(t *testing.T) {
	p := Classes{MinClass: 9}
	check := func() {
		t.Helper()
		sum := 0
		for c := range p.free {
			if len(p.free[c]) > MaxPerClass {
				t.Fatalf("%d buffers of class %d kept", len(p.free[c]), c)
			}
			sum += p.bytes[c]
		}
		if sum != p.total || p.total > MaxBytes {
			t.Fatalf("%d bytes kept (counted %d), bound %d", sum, p.total, MaxBytes)
		}
	}
	for range 2 * MaxPerClass {
		p.Put(make([]byte, 0, 512))
		check()
	}
	for range 2 * MaxPerClass {
		p.Put(make([]byte, 0, 64<<10))
		check()
	}
	if len(p.free[p.class(64<<10)]) < MaxPerClass-2 {
		t.Fatalf("%d buffers of 64 KiB kept", len(p.free[p.class(64<<10)]))
	}
	for range 20 {
		p.Put(make([]byte, 0, 1<<20))
		check()
	}
	if n := len(p.free[p.class(1<<20)]); n < 15 {
		t.Fatalf("%d buffers of 1 MiB kept, want them to take the place of the 64 KiB ones", n)
	}
	// A buffer above the bound is never kept.
	p.Put(make([]byte, 0, 2*MaxBytes))
	check()
}

// TestPool: the locked Pool keeps and hands back as Classes does, and a
// nil Pool allocates and keeps nothing.
func TestPool(t *testing.T) {
	p := &Pool{MinClass: 9}
	b := p.Get(5000)
	p.Put(b)
	if c := p.Get(6000); &c[:1][0] != &b[:1][0] || len(c) != 6000 {
		t.Fatal("a buffer of the class was not reused")
	}
	var none *Pool
	if b := none.Get(100); len(b) != 100 || cap(b) != 128 {
		t.Fatalf("nil Pool: len %d cap %d, want 100 and 128", len(b), cap(b))
	}
	none.Put(make([]byte, 128))
}
