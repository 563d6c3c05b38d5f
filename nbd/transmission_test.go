package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// connected starts a server for b and returns a client in transmission.
func connected(t *testing.T, cfg Config, b Backend) (*Server, *rawClient) {
	t.Helper()
	cfg.Exports = []Export{{Name: "disk", Backend: b}}
	s, sock := startServer(t, cfg)
	rc := dial(t, sock)
	rc.goExport("disk")
	return s, rc
}

func TestTransmissionFlags(t *testing.T) {
	for _, tt := range []struct {
		feat Features
		want uint16
	}{
		{Features{}, tflagHasFlags},
		{Features{ReadOnly: true, Flush: true, FUA: true, Trim: true, Zero: true},
			tflagHasFlags | tflagReadOnly | tflagSendFlush},
		{Features{Flush: true, FUA: true}, tflagHasFlags | tflagSendFlush | tflagSendFUA},
		{Features{Trim: true}, tflagHasFlags | tflagSendTrim},
		{Features{Zero: true}, tflagHasFlags | tflagSendWriteZeroes},
		{Features{Flush: true, MultiConn: true}, tflagHasFlags | tflagSendFlush | tflagCanMultiConn},
	} {
		b := newHookBackend(4096)
		b.feat = tt.feat
		s, sock := startServer(t, Config{Exports: []Export{{Name: "d", Backend: b}}})
		_ = s
		rc := dial(t, sock)
		if _, got := rc.goExport("d"); got != tt.want {
			t.Errorf("features %+v: flags %#x, want %#x", tt.feat, got, tt.want)
		}
	}
}

// TestCommands sends one request on a fresh connection and checks the
// error, the data and the backend's state.
func TestCommands(t *testing.T) {
	const size = 1 << 20
	pattern := bytes.Repeat([]byte{0xab}, 4096)
	tests := []struct {
		name    string
		cfg     Config
		feat    func(*Features)
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload []byte
		errno   uint32
		check   func(t *testing.T, b *hookBackend)
	}{
		{name: "read", typ: cmdRead, off: 0, length: 4096},
		{name: "read empty", typ: cmdRead, off: size, length: 0},
		{name: "read beyond end", typ: cmdRead, off: size - 512, length: 1024, errno: errnoInval},
		{name: "read offset overflow", typ: cmdRead, off: 1<<64 - 512, length: 1024, errno: errnoInval},
		{name: "read above max", cfg: Config{MaxRequestSize: 64 << 10}, typ: cmdRead, length: 64<<10 + 512, errno: errnoInval},
		{name: "read unaligned", cfg: Config{MinBlockSize: 512}, typ: cmdRead, off: 1, length: 512, errno: errnoInval},
		{name: "write", typ: cmdWrite, off: 8192, length: 4096, payload: pattern, check: func(t *testing.T, b *hookBackend) {
			if !bytes.Equal(b.Bytes()[8192:12288], pattern) {
				t.Error("data not written")
			}
			if b.fua != 0 {
				t.Error("write without FUA reached the backend with fua")
			}
		}},
		{name: "write fua", typ: cmdWrite, flags: cmdFlagFUA, off: 0, length: 4096, payload: pattern, check: func(t *testing.T, b *hookBackend) {
			if b.fua != 1 {
				t.Errorf("fua writes %d, want 1", b.fua)
			}
		}},
		{name: "write fua not advertised", feat: func(f *Features) { f.FUA = false }, typ: cmdWrite, flags: cmdFlagFUA, length: 4096, payload: pattern, errno: errnoInval},
		{name: "write beyond end", typ: cmdWrite, off: size - 2048, length: 4096, payload: pattern, errno: errnoNoSpc},
		{name: "write above max", cfg: Config{MaxRequestSize: 4096}, typ: cmdWrite, length: 8192, payload: append(pattern, pattern...), errno: errnoInval},
		{name: "write read-only", feat: func(f *Features) { f.ReadOnly = true }, typ: cmdWrite, length: 4096, payload: pattern, errno: errnoPerm},
		{name: "write unaligned", cfg: Config{MinBlockSize: 512}, typ: cmdWrite, off: 512, length: 100, payload: pattern[:100], errno: errnoInval},
		{name: "flush", typ: cmdFlush, check: func(t *testing.T, b *hookBackend) {
			if fmt.Sprint(b.calls) != "[flush read]" {
				t.Errorf("calls %v", b.calls)
			}
		}},
		{name: "flush not supported", feat: func(f *Features) { f.Flush, f.FUA = false, false }, typ: cmdFlush, errno: errnoInval},
		{name: "trim", typ: cmdTrim, off: 4096, length: 4096},
		{name: "trim fua flushes", typ: cmdTrim, flags: cmdFlagFUA, off: 4096, length: 4096, check: func(t *testing.T, b *hookBackend) {
			if fmt.Sprint(b.calls) != "[trim flush read]" {
				t.Errorf("calls %v", b.calls)
			}
		}},
		{name: "trim beyond end", typ: cmdTrim, off: size, length: 1, errno: errnoInval},
		{name: "trim not supported", feat: func(f *Features) { f.Trim = false }, typ: cmdTrim, length: 4096, errno: errnoInval},
		{name: "zero", typ: cmdWriteZeroes, off: 0, length: 4096},
		{name: "zero no hole", typ: cmdWriteZeroes, flags: cmdFlagNoHole, off: 0, length: 4096, check: func(t *testing.T, b *hookBackend) {
			if b.noHole != 1 {
				t.Errorf("noHole calls %d", b.noHole)
			}
		}},
		{name: "zero beyond end", typ: cmdWriteZeroes, off: size - 512, length: 1024, errno: errnoNoSpc},
		{name: "zero not supported", feat: func(f *Features) { f.Zero = false }, typ: cmdWriteZeroes, length: 4096, errno: errnoInval},
		{name: "no hole on write", typ: cmdWrite, flags: cmdFlagNoHole, length: 4096, payload: pattern, errno: errnoInval},
		{name: "unknown flag", typ: cmdRead, flags: 1 << 9, length: 512, errno: errnoInval},
		{name: "cache is unknown", typ: 5, length: 512, errno: errnoInval},
		{name: "unknown command", typ: 77, errno: errnoInval},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newHookBackend(size)
			for i := range size {
				b.data[i] = byte(i / 512)
			}
			if tt.feat != nil {
				tt.feat(&b.feat)
			}
			_, rc := connected(t, tt.cfg, b)
			rc.request(tt.typ, tt.flags, 42, tt.off, tt.length, tt.payload)
			cookie, code, data := rc.reply(map[uint64]int{42: int(tt.length) * btoi(tt.typ == cmdRead)})
			if cookie != 42 || code != tt.errno {
				t.Fatalf("reply cookie %d errno %d, want 42 and %d", cookie, code, tt.errno)
			}
			if tt.typ == cmdRead && code == 0 && !bytes.Equal(data, b.Bytes()[tt.off:tt.off+uint64(tt.length)]) {
				t.Fatal("read returned wrong data")
			}
			if code != 0 && tt.typ != cmdFlush && b.callCount() != 0 {
				t.Errorf("rejected request reached the backend: %v", b.calls)
			}
			// The connection is still in step: a read works.
			rc.request(cmdRead, 0, 43, 0, 512, nil)
			if cookie, code, data := rc.reply(map[uint64]int{43: 512}); cookie != 43 || code != 0 || !bytes.Equal(data, b.Bytes()[:512]) {
				t.Fatalf("next read: cookie %d errno %d", cookie, code)
			}
			if tt.check != nil {
				b.mu.Lock()
				defer b.mu.Unlock()
				tt.check(t, b)
			}
		})
	}
}

// releaser returns a channel that holds requests until the returned
// function closes it; the test's cleanup closes it too, before the server
// shuts down, so a failing test does not leave requests held.
func releaser(t *testing.T) (chan struct{}, func()) {
	ch := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return ch, release
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestHugeWriteDisconnects(t *testing.T) {
	_, rc := connected(t, Config{}, NewMemBackend(1<<20))
	rc.lenient = true
	rc.request(cmdWrite, 0, 1, 0, dosWriteLen+1, nil)
	rc.expectEOF()
}

func TestBadRequestMagicDisconnects(t *testing.T) {
	_, rc := connected(t, Config{}, NewMemBackend(1<<20))
	rc.write(make([]byte, requestHeaderLen))
	rc.expectEOF()
}

// TestOutOfOrder holds the read of block 0 until the reads after it have
// been answered: replies come back in completion order, each with its
// request's cookie and data.
func TestOutOfOrder(t *testing.T) {
	b := newHookBackend(1 << 20)
	for i := range b.data {
		b.data[i] = byte(i / 4096)
	}
	_, rc := connected(t, Config{}, b)
	held, release := releaser(t)
	b.mu.Lock()
	b.hook = func(op string, off uint64) error {
		if off == 0 {
			<-held
		}
		return nil
	}
	b.mu.Unlock()
	lens := map[uint64]int{}
	for i := range uint64(4) {
		rc.request(cmdRead, 0, 100+i, i*4096, 4096, nil)
		lens[100+i] = 4096
	}
	check := func(cookie uint64, code uint32, data []byte) {
		t.Helper()
		i := cookie - 100
		if code != 0 || !bytes.Equal(data, bytes.Repeat([]byte{byte(i)}, 4096)) {
			t.Fatalf("cookie %d: errno %d, data[0]=%d", cookie, code, data[0])
		}
	}
	seen := map[uint64]bool{}
	for range 3 {
		cookie, code, data := rc.reply(lens)
		if cookie == 100 {
			t.Fatal("the held request was answered first")
		}
		check(cookie, code, data)
		seen[cookie] = true
	}
	release()
	cookie, code, data := rc.reply(lens)
	if cookie != 100 || len(seen) != 3 {
		t.Fatalf("last reply cookie %d, earlier %v", cookie, seen)
	}
	check(cookie, code, data)
}

// TestInFlightBound holds every read: the backend never sees more than
// MaxInFlight at once, and all are answered once released.
func TestInFlightBound(t *testing.T) {
	const limit = 3
	b := newHookBackend(1 << 20)
	var running, peak atomic.Int32
	_, rc := connected(t, Config{MaxInFlight: limit}, b)
	held, release := releaser(t)
	b.mu.Lock()
	b.hook = func(string, uint64) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-held
		running.Add(-1)
		return nil
	}
	b.mu.Unlock()
	lens := map[uint64]int{}
	for i := range uint64(10) {
		rc.request(cmdRead, 0, i, i*4096, 4096, nil)
		lens[i] = 4096
	}
	deadline := time.Now().Add(5 * time.Second)
	for running.Load() < limit && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // time for any excess request to start
	if p := peak.Load(); p != limit {
		t.Fatalf("peak in flight %d, want %d", p, limit)
	}
	release()
	got := map[uint64]bool{}
	for range 10 {
		cookie, code, _ := rc.reply(lens)
		if code != 0 || got[cookie] {
			t.Fatalf("cookie %d errno %d (seen %v)", cookie, code, got)
		}
		got[cookie] = true
	}
	if p := peak.Load(); p != limit {
		t.Fatalf("peak in flight %d, want %d", p, limit)
	}
}

// TestDiscWaitsForInFlight sends NBD_CMD_DISC while a write is held: the
// write completes and is answered before the server closes.
func TestDiscWaitsForInFlight(t *testing.T) {
	b := newHookBackend(1 << 20)
	entered := make(chan struct{})
	_, rc := connected(t, Config{}, b)
	held, release := releaser(t)
	b.mu.Lock()
	b.hook = func(op string, _ uint64) error {
		if op == "write" {
			close(entered)
			<-held
		}
		return nil
	}
	b.mu.Unlock()
	rc.request(cmdWrite, 0, 9, 0, 512, bytes.Repeat([]byte{7}, 512))
	<-entered
	rc.request(cmdDisc, 0, 10, 0, 0, nil)
	time.Sleep(50 * time.Millisecond)
	release()
	if cookie, code, _ := rc.reply(nil); cookie != 9 || code != 0 {
		t.Fatalf("write reply cookie %d errno %d", cookie, code)
	}
	rc.expectEOF()
	if b.Bytes()[511] != 7 {
		t.Fatal("write lost")
	}
}

// TestShutdown holds a read, then shuts the server down: a request sent
// after Shutdown began gets NBD_ESHUTDOWN without reaching the backend,
// the held read finishes with its data, then the connection closes.
func TestShutdown(t *testing.T) {
	b := newHookBackend(1 << 20)
	b.data[0] = 0x5a
	entered := make(chan struct{})
	s, rc := connected(t, Config{}, b)
	held, release := releaser(t)
	b.mu.Lock()
	b.hook = func(op string, off uint64) error {
		if off == 0 {
			close(entered)
			<-held
		}
		return nil
	}
	b.mu.Unlock()
	rc.request(cmdRead, 0, 1, 0, 512, nil)
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	waitDraining(t, s)
	rc.request(cmdRead, 0, 2, 4096, 512, nil)
	if cookie, code, _ := rc.reply(nil); cookie != 2 || code != errnoShutdown {
		t.Fatalf("reply cookie %d errno %d, want 2 and ESHUTDOWN", cookie, code)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	release()
	cookie, code, data := rc.reply(map[uint64]int{1: 512})
	if cookie != 1 || code != 0 || data[0] != 0x5a {
		t.Fatalf("held read: cookie %d errno %d", cookie, code)
	}
	rc.expectEOF()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := b.callCount(); n != 1 {
		t.Fatalf("backend calls %v, want the held read only", b.calls)
	}
}

// waitDraining waits until every connection of s is draining.
func waitDraining(t *testing.T, s *Server) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		all := s.shutting
		for c := range s.conns {
			all = all && c.isDraining()
		}
		s.mu.Unlock()
		if all {
			return
		}
	}
	t.Fatal("connections not draining")
}

// TestShutdownTimeout: a backend call that never returns is cancelled
// when Shutdown's context ends.
func TestShutdownTimeout(t *testing.T) {
	b := &ctxBackend{hookBackend: newHookBackend(1 << 20), ch: make(chan struct{})}
	s, rc := connected(t, Config{}, b)
	rc.request(cmdRead, 0, 1, 0, 512, nil)
	<-b.ch
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	// The cancelled read may still be answered (NBD_ESHUTDOWN) before
	// the connection closes.
	var h [16]byte
	if n, _ := io.ReadFull(rc.r, h[:]); n == 16 {
		if code := binary.BigEndian.Uint32(h[4:]); code != errnoShutdown {
			t.Fatalf("cancelled read answered with errno %d", code)
		}
	} else if n != 0 {
		t.Fatalf("partial reply of %d bytes", n)
	}
	rc.expectEOF()
}

// ctxBackend blocks reads until their context is cancelled; ch is closed
// when the first read starts.
type ctxBackend struct {
	*hookBackend
	ch chan struct{}
}

func (c *ctxBackend) ReadAt(ctx context.Context, p []byte, off uint64) error {
	close(c.ch)
	<-ctx.Done()
	return ctx.Err()
}

// TestBackendShutdown: once the backend returns ErrShutdown (the disk was
// fenced), every later request gets NBD_ESHUTDOWN without reaching it.
func TestBackendShutdown(t *testing.T) {
	b := newHookBackend(1 << 20)
	b.hook = func(op string, _ uint64) error {
		if op == "write" {
			return fmt.Errorf("fenced: %w", ErrShutdown)
		}
		return nil
	}
	_, rc := connected(t, Config{}, b)
	rc.request(cmdRead, 0, 1, 0, 512, nil)
	if _, code, _ := rc.reply(map[uint64]int{1: 512}); code != 0 {
		t.Fatalf("read before the fence: errno %d", code)
	}
	rc.request(cmdWrite, 0, 2, 0, 512, make([]byte, 512))
	if _, code, _ := rc.reply(nil); code != errnoShutdown {
		t.Fatalf("fenced write: errno %d", code)
	}
	for i, typ := range []uint16{cmdRead, cmdFlush, cmdWriteZeroes} {
		rc.request(typ, 0, uint64(3+i), 0, 512*uint32(btoi(typ != cmdFlush)), nil)
		if _, code, _ := rc.reply(nil); code != errnoShutdown {
			t.Fatalf("%s after the fence: errno %d", commandName(typ), code)
		}
	}
	if n := b.callCount(); n != 2 {
		t.Fatalf("backend calls %v, want 2", b.calls)
	}
}

func TestErrno(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{ErrIO, errnoIO},
		{errors.New("disk on fire"), errnoIO},
		{fmt.Errorf("x: %w", ErrNoSpace), errnoNoSpc},
		{ErrInvalid, errnoInval},
		{ErrPermission, errnoPerm},
		{fmt.Errorf("fenced: %w", ErrShutdown), errnoShutdown},
		{context.Canceled, errnoShutdown},
	} {
		if got := errno(tt.err); got != tt.want {
			t.Errorf("errno(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	mem := NewMemBackend(4096)
	fuaOnly := newHookBackend(4096)
	fuaOnly.feat = Features{FUA: true}
	ok := []Export{{Name: "a", Backend: mem}}
	for _, tt := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Exports: ok}, true},
		{"min 512", Config{Exports: ok, MinBlockSize: 512}, true},
		{"no exports", Config{}, false},
		{"nil backend", Config{Exports: []Export{{Name: "a"}}}, false},
		{"duplicate name", Config{Exports: []Export{{Name: "a", Backend: mem}, {Name: "a", Backend: mem}}}, false},
		{"long name", Config{Exports: []Export{{Name: string(make([]byte, 4097)), Backend: mem}}}, false},
		{"fua without flush", Config{Exports: []Export{{Name: "a", Backend: fuaOnly}}}, false},
		{"min not power of two", Config{Exports: ok, MinBlockSize: 3}, false},
		{"min too large", Config{Exports: ok, MinBlockSize: 1 << 17}, false},
		{"preferred below 512", Config{Exports: ok, PreferredBlockSize: 256}, false},
		{"max above 32 MiB", Config{Exports: ok, MaxRequestSize: 64 << 20}, false},
		{"max below preferred", Config{Exports: ok, MaxRequestSize: 1024}, false},
		{"max not multiple of min", Config{Exports: ok, MinBlockSize: 4096, PreferredBlockSize: 4096, MaxRequestSize: 4096*3 + 512}, false},
		{"in flight too large", Config{Exports: ok, MaxInFlight: 5000}, false},
	} {
		s, err := NewServer(tt.cfg)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v", tt.name, err)
		}
		if tt.name == "defaults" && err == nil {
			c := s.Config()
			if c.MinBlockSize != 1 || c.PreferredBlockSize != 4096 || c.MaxRequestSize != 32<<20 || c.MaxInFlight != 16 || c.Logger == nil {
				t.Errorf("defaults %+v", c)
			}
		}
	}
}

// TestServeTCPAndCancel serves on a TCP listener, then cancels Serve's
// context: Serve closes the connection and returns the context's error.
func TestServeTCPAndCancel(t *testing.T) {
	b := NewMemBackend(1 << 20)
	b.data[100] = 9
	s, err := NewServer(Config{Exports: []Export{{Name: "disk", Backend: b}}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	var hello [18]byte
	rc.read(hello[:])
	if size, _ := rc.goExport(""); size != 1<<20 {
		t.Fatalf("size %d", size)
	}
	rc.request(cmdRead, 0, 1, 0, 512, nil)
	if _, code, data := rc.reply(map[uint64]int{1: 512}); code != 0 || data[100] != 9 {
		t.Fatalf("read over TCP: errno %d", code)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve returned %v", err)
	}
	rc.expectEOF()
}
