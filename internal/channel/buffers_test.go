package channel

import "testing"

func TestBufferClasses(t *testing.T) {
	for _, tc := range []struct{ n, cap int }{
		{1, 512}, {32, 512}, {512, 512}, {513, 1024}, {4096 + 32, 8192}, {65536 + 32, 131072}, {1 << 20, 1 << 20},
	} {
		var p buffers
		if b := p.get(tc.n); cap(b) != tc.cap || len(b) != 0 {
			t.Errorf("get(%d): len %d cap %d, want 0 and %d", tc.n, len(b), cap(b), tc.cap)
		}
	}
}

func TestBufferReuse(t *testing.T) {
	var p buffers
	b := p.get(5000)
	p.put(b)
	if c := p.get(6000); &c[:1][0] != &b[:1][0] {
		t.Fatal("a buffer of the class was not reused")
	}
	// A small frame does not take a large buffer.
	p.put(b)
	if c := p.get(100); cap(c) != 512 {
		t.Fatalf("get(100) took a buffer of %d bytes", cap(c))
	}
	// Buffers of no class size, or too small, are not kept.
	for _, b := range [][]byte{make([]byte, 0, 700), make([]byte, 0, 100), nil} {
		p.put(b)
	}
	if p.total != 8192 {
		t.Fatalf("%d bytes kept, want the one buffer of 8192", p.total)
	}
}

// TestBufferBounds: what is kept stays within the bounds, and follows the
// traffic: once the bytes are reached, buffers of a new size take the
// place of those kept before.
func TestBufferBounds(t *testing.T) {
	var p buffers
	check := func() {
		t.Helper()
		sum := 0
		for c := range p.free {
			if len(p.free[c]) > maxFreePerSize {
				t.Fatalf("%d buffers of class %d kept", len(p.free[c]), c)
			}
			sum += p.bytes[c]
		}
		if sum != p.total || p.total > maxFreeBytes {
			t.Fatalf("%d bytes kept (counted %d), bound %d", sum, p.total, maxFreeBytes)
		}
	}
	for range 2 * maxFreePerSize {
		p.put(make([]byte, 0, 512))
		check()
	}
	for range 2 * maxFreePerSize {
		p.put(make([]byte, 0, 64<<10))
		check()
	}
	if len(p.free[class(64<<10)]) < maxFreePerSize-2 {
		t.Fatalf("%d buffers of 64 KiB kept", len(p.free[class(64<<10)]))
	}
	for range 20 {
		p.put(make([]byte, 0, 1<<20))
		check()
	}
	if n := len(p.free[class(1<<20)]); n < 15 {
		t.Fatalf("%d buffers of 1 MiB kept, want them to take the place of the 64 KiB ones", n)
	}
	// A buffer above the bound is never kept.
	p.put(make([]byte, 0, 2*maxFreeBytes))
	check()
}
