package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recConn records what the client writes once recording is on.
type recConn struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	out []byte
}

func (r *recConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	if r.on {
		r.out = append(r.out, p...)
	}
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *recConn) record() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = true
	r.out = nil
}

func (r *recConn) written() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.out...)
}

// commands decodes the recorded requests (with their payloads) into
// their command types.
func (r *recConn) commands(t *testing.T) []uint16 {
	t.Helper()
	b := r.written()
	var cmds []uint16
	for len(b) > 0 {
		if len(b) < requestHeaderLen {
			t.Fatalf("%d bytes left, not a request", len(b))
		}
		var h [requestHeaderLen]byte
		copy(h[:], b)
		req, err := parseRequest(&h)
		if err != nil {
			t.Fatal(err)
		}
		b = b[requestHeaderLen:]
		if req.typ == cmdWrite {
			b = b[req.length:]
		}
		cmds = append(cmds, req.typ)
	}
	return cmds
}

// testClient serves b as export "disk" and returns a client for it, whose
// writes after the handshake are recorded. The client is closed when the
// test ends, before the server shuts down.
func testClient(t *testing.T, cfg Config, b Backend, ccfg ClientConfig) (*Server, *Client, *recConn) {
	t.Helper()
	cfg.Exports = []Export{{Name: "disk", Backend: b}}
	s, sock := startServer(t, cfg)
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rc := &recConn{Conn: nc}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ccfg.Export = "disk"
	c, err := NewClient(ctx, rc, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	rc.record()
	t.Cleanup(func() { c.Close() })
	return s, c, rc
}

// tctx returns a context that ends with a bound, so that a broken client
// fails the test instead of hanging it.
func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

// TestClientDialURI opens our server through an nbd+unix URI and over
// TCP, and checks what the handshake recorded.
func TestClientDialURI(t *testing.T) {
	s, sock := startServer(t, Config{
		Exports:            []Export{{Name: "disk", Backend: NewMemBackend(1 << 20)}, {Name: "small", Backend: NewMemBackend(64 << 10)}},
		MinBlockSize:       512,
		PreferredBlockSize: 8192,
		MaxRequestSize:     256 << 10,
	})
	ctx := tctx(t)
	c, err := DialURI(ctx, "nbd+unix:///small?socket="+sock, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := ExportInfo{Name: "small", Size: 64 << 10,
		Flags:    tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagCanMultiConn,
		CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true, CanMultiConn: true,
		MinBlockSize: 512, PreferredBlockSize: 8192, MaxBlockSize: 256 << 10}
	if got := c.Info(); got != want {
		t.Errorf("Info\n got %+v\nwant %+v", got, want)
	}
	if c.Size() != 64<<10 || c.MaxRequest() != 256<<10 {
		t.Errorf("Size %d MaxRequest %d", c.Size(), c.MaxRequest())
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// The default export, over TCP.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(context.Background(), l)
	c2, err := DialURI(ctx, "nbd://"+l.Addr().String(), ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.Size() != 1<<20 || c2.Info().Name != "" {
		t.Errorf("default export: %+v", c2.Info())
	}
	if err := c2.WriteAt(ctx, pattern(1, 4096), 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	if _, err := DialURI(ctx, "nbd+unix:///nope?socket="+sock, ClientConfig{}); !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "unknown export") {
		t.Errorf("unknown export: %v", err)
	}
	if _, err := DialURI(ctx, "nbds://localhost/x", ClientConfig{}); !errors.Is(err, ErrBadURI) {
		t.Errorf("nbds URI: %v", err)
	}
}

// TestClientCommands runs every command through the client and checks the
// backend.
func TestClientCommands(t *testing.T) {
	const size = 1 << 20
	b := newHookBackend(size)
	_, c, rc := testClient(t, Config{}, b, ClientConfig{})
	ctx := tctx(t)
	want := make([]byte, size)
	check := func(what string) {
		t.Helper()
		if !bytes.Equal(b.Bytes(), want) {
			t.Fatalf("%s: backend differs from the model", what)
		}
		got := make([]byte, size)
		for off := 0; off < size; off += 256 << 10 {
			if err := c.ReadAt(ctx, got[off:off+256<<10], uint64(off)); err != nil {
				t.Fatalf("%s: read back: %v", what, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: data read back differs", what)
		}
	}

	p := pattern(3, 64<<10)
	if err := c.WriteAt(ctx, p, 4096, false); err != nil {
		t.Fatal(err)
	}
	copy(want[4096:], p)
	check("write")

	if err := c.WriteAt(ctx, p[:512], 100, true); err != nil {
		t.Fatal(err)
	}
	copy(want[100:], p[:512])
	check("write fua")

	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(ctx, 8192, 4096); err != nil {
		t.Fatal(err)
	}
	clear(want[8192 : 8192+4096]) // MemBackend zeroes trimmed ranges
	check("trim")
	if err := c.Zero(ctx, 0, 6000); err != nil {
		t.Fatal(err)
	}
	clear(want[:6000])
	check("zero")
	if err := c.Zero(ctx, 0, size); err != nil {
		t.Fatal(err)
	}
	clear(want)
	check("zero all")

	// A zero-length request succeeds without being sent.
	if err := c.ReadAt(ctx, nil, size); err != nil {
		t.Fatalf("empty read: %v", err)
	}

	b.mu.Lock()
	counts := map[string]int{}
	for _, op := range b.calls {
		counts[op]++
	}
	fua := b.fua
	b.mu.Unlock()
	if counts["write"] != 2 || counts["flush"] != 1 || counts["trim"] != 1 || counts["zero"] != 2 || counts["read"] != 5*4 {
		t.Errorf("backend calls %v", counts)
	}
	if fua != 1 {
		t.Errorf("fua writes %d, want 1", fua)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	cmds := rc.commands(t)
	if cmds[len(cmds)-1] != cmdDisc {
		t.Errorf("last command %s, want NBD_CMD_DISC", commandName(cmds[len(cmds)-1]))
	}
	if err := c.ReadAt(ctx, make([]byte, 512), 0); !errors.Is(err, ErrDisconnected) {
		t.Errorf("read after Close: %v", err)
	}
}

// TestClientRefusesBeforeSending: requests the server did not offer or
// must not get fail in the client, and nothing goes on the wire.
func TestClientRefusesBeforeSending(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		feat func(*Features)
		op   func(ctx context.Context, c *Client) error
		want error
	}{
		{name: "read above the maximum", cfg: Config{MaxRequestSize: 64 << 10},
			op: func(ctx context.Context, c *Client) error { return c.ReadAt(ctx, make([]byte, 64<<10+512), 0) }, want: ErrInvalid},
		{name: "write above the maximum", cfg: Config{MaxRequestSize: 64 << 10},
			op: func(ctx context.Context, c *Client) error { return c.WriteAt(ctx, make([]byte, 64<<10+1), 0, false) }, want: ErrInvalid},
		{name: "write above 32 MiB", op: func(ctx context.Context, c *Client) error {
			return c.WriteAt(ctx, make([]byte, 32<<20+1), 0, false)
		}, want: ErrInvalid},
		{name: "read beyond the end", op: func(ctx context.Context, c *Client) error { return c.ReadAt(ctx, make([]byte, 1024), 1<<20-512) }, want: ErrInvalid},
		{name: "offset overflow", op: func(ctx context.Context, c *Client) error { return c.Zero(ctx, 1<<64-512, 1024) }, want: ErrInvalid},
		{name: "unaligned offset", cfg: Config{MinBlockSize: 512},
			op: func(ctx context.Context, c *Client) error { return c.ReadAt(ctx, make([]byte, 512), 1) }, want: ErrInvalid},
		{name: "unaligned length", cfg: Config{MinBlockSize: 512},
			op: func(ctx context.Context, c *Client) error { return c.Trim(ctx, 0, 100) }, want: ErrInvalid},
		{name: "flush not offered", feat: func(f *Features) { f.Flush, f.FUA = false, false },
			op: func(ctx context.Context, c *Client) error { return c.Flush(ctx) }, want: errors.ErrUnsupported},
		{name: "fua not offered", feat: func(f *Features) { f.FUA = false },
			op: func(ctx context.Context, c *Client) error { return c.WriteAt(ctx, make([]byte, 512), 0, true) }, want: errors.ErrUnsupported},
		{name: "trim not offered", feat: func(f *Features) { f.Trim = false },
			op: func(ctx context.Context, c *Client) error { return c.Trim(ctx, 0, 512) }, want: errors.ErrUnsupported},
		{name: "zero not offered", feat: func(f *Features) { f.Zero = false },
			op: func(ctx context.Context, c *Client) error { return c.Zero(ctx, 0, 512) }, want: errors.ErrUnsupported},
		{name: "write read-only", feat: func(f *Features) { f.ReadOnly = true },
			op: func(ctx context.Context, c *Client) error { return c.WriteAt(ctx, make([]byte, 512), 0, false) }, want: ErrPermission},
		{name: "zero read-only", feat: func(f *Features) { f.ReadOnly = true },
			op: func(ctx context.Context, c *Client) error { return c.Zero(ctx, 0, 512) }, want: ErrPermission},
		{name: "cancelled context", op: func(_ context.Context, c *Client) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return c.ReadAt(ctx, make([]byte, 512), 0)
		}, want: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newHookBackend(1 << 20)
			if tt.feat != nil {
				tt.feat(&b.feat)
			}
			_, c, rc := testClient(t, tt.cfg, b, ClientConfig{})
			ctx := tctx(t)
			err := tt.op(ctx, c)
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			var re *ReplyError
			if errors.As(err, &re) {
				t.Fatalf("error %v came from the server", err)
			}
			if out := rc.written(); len(out) != 0 {
				t.Fatalf("%d bytes sent", len(out))
			}
			// The client is still usable.
			if err := c.ReadAt(ctx, make([]byte, 512), 0); err != nil {
				t.Fatalf("read after the refusal: %v", err)
			}
		})
	}
}

// TestClientErrorReplies: a backend error reaches the caller as a
// ReplyError wrapping the matching sentinel; the connection stays usable.
func TestClientErrorReplies(t *testing.T) {
	ops := map[string]func(ctx context.Context, c *Client) error{
		"read":  func(ctx context.Context, c *Client) error { return c.ReadAt(ctx, make([]byte, 4096), 8192) },
		"write": func(ctx context.Context, c *Client) error { return c.WriteAt(ctx, make([]byte, 4096), 8192, false) },
		"flush": func(ctx context.Context, c *Client) error { return c.Flush(ctx) },
		"trim":  func(ctx context.Context, c *Client) error { return c.Trim(ctx, 8192, 4096) },
		"zero":  func(ctx context.Context, c *Client) error { return c.Zero(ctx, 8192, 4096) },
	}
	tests := []struct {
		op     string
		err    error
		want   error
		errno  uint32
		cmd    string
		offset uint64
	}{
		{"read", ErrIO, ErrIO, errnoIO, "NBD_CMD_READ", 8192},
		{"read", errors.New("disk on fire"), ErrIO, errnoIO, "NBD_CMD_READ", 8192},
		{"read", ErrInvalid, ErrInvalid, errnoInval, "NBD_CMD_READ", 8192},
		{"write", ErrNoSpace, ErrNoSpace, errnoNoSpc, "NBD_CMD_WRITE", 8192},
		{"write", fmt.Errorf("refused: %w", ErrPermission), ErrPermission, errnoPerm, "NBD_CMD_WRITE", 8192},
		{"flush", ErrIO, ErrIO, errnoIO, "NBD_CMD_FLUSH", 0},
		{"trim", ErrInvalid, ErrInvalid, errnoInval, "NBD_CMD_TRIM", 8192},
		{"zero", ErrNoSpace, ErrNoSpace, errnoNoSpc, "NBD_CMD_WRITE_ZEROES", 8192},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %v", tt.op, tt.err), func(t *testing.T) {
			b := newHookBackend(1 << 20)
			b.hook = func(op string, off uint64) error {
				if op == tt.op {
					return tt.err
				}
				return nil
			}
			_, c, _ := testClient(t, Config{}, b, ClientConfig{})
			ctx := tctx(t)
			err := ops[tt.op](ctx, c)
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			var re *ReplyError
			if !errors.As(err, &re) || re.Errno != tt.errno || re.Command != tt.cmd || re.Offset != tt.offset {
				t.Fatalf("error %#v, want a ReplyError with errno %d", err, tt.errno)
			}
			for _, other := range []error{ErrIO, ErrInvalid, ErrNoSpace, ErrPermission, ErrShutdown, ErrDisconnected} {
				if other != tt.want && errors.Is(err, other) {
					t.Errorf("error %v also matches %v", err, other)
				}
			}
			if tt.op != "read" {
				if err := c.ReadAt(ctx, make([]byte, 512), 0); err != nil {
					t.Fatalf("read after the error: %v", err)
				}
			}
		})
	}
}

// TestReplyErrorErrno maps every errno, including those the package's
// server never sends.
func TestReplyErrorErrno(t *testing.T) {
	for _, tt := range []struct {
		errno uint32
		want  error
		text  string
	}{
		{1, ErrPermission, "NBD_EPERM"},
		{5, ErrIO, "NBD_EIO"},
		{12, ErrIO, "NBD_ENOMEM (12)"},
		{22, ErrInvalid, "NBD_EINVAL"},
		{28, ErrNoSpace, "NBD_ENOSPC"},
		{75, ErrIO, "NBD_EOVERFLOW (75)"},
		{95, ErrIO, "NBD_ENOTSUP (95)"},
		{108, ErrShutdown, "NBD_ESHUTDOWN"},
		{4242, ErrIO, "errno 4242"},
	} {
		err := error(&ReplyError{Command: "NBD_CMD_READ", Offset: 512, Length: 4096, Errno: tt.errno})
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
			t.Errorf("errno %d: %v, want %v and %q in the text", tt.errno, err, tt.want, tt.text)
		}
	}
}

// TestClientOutOfOrder holds the read of block 0 in the backend: the read
// of block 1, sent after it on the same connection, is answered first,
// and each caller gets its own block.
func TestClientOutOfOrder(t *testing.T) {
	b := newHookBackend(1 << 20)
	for i := range b.data {
		b.data[i] = byte(i / 4096)
	}
	held, release := releaser(t)
	entered := make(chan struct{})
	b.hook = func(op string, off uint64) error {
		if op == "read" && off == 0 {
			close(entered)
			<-held
		}
		return nil
	}
	_, c, _ := testClient(t, Config{}, b, ClientConfig{})
	t.Cleanup(release) // before the client closes and the server shuts down
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	first := make(chan error, 1)
	p0 := make([]byte, 4096)
	go func() { first <- c.ReadAt(ctx, p0, 0) }()
	<-entered
	p1 := make([]byte, 4096)
	if err := c.ReadAt(ctx, p1, 4096); err != nil {
		t.Fatalf("read of block 1 while block 0 is held: %v", err)
	}
	if !bytes.Equal(p1, bytes.Repeat([]byte{1}, 4096)) {
		t.Fatalf("read of block 1 got block %d", p1[0])
	}
	select {
	case err := <-first:
		t.Fatalf("held read returned %v", err)
	default:
	}
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p0, make([]byte, 4096)) {
		t.Fatalf("read of block 0 got block %d", p0[0])
	}
}

// TestClientPipelined: requests from many goroutines are in flight at
// once on the one connection: the backend holds every read until all
// of them have arrived.
func TestClientPipelined(t *testing.T) {
	const n = 48
	b := newHookBackend(1 << 20)
	for i := range b.data {
		b.data[i] = byte(i / 4096)
	}
	var arrived atomic.Int32
	all := make(chan struct{})
	b.hook = func(op string, off uint64) error {
		if op != "read" {
			return nil
		}
		if arrived.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
			return nil
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%w: only %d reads arrived together", ErrIO, arrived.Load())
		}
	}
	_, c, rc := testClient(t, Config{MaxInFlight: n}, b, ClientConfig{})
	ctx := tctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			p := make([]byte, 4096)
			if err := c.ReadAt(ctx, p, uint64(i)*4096); err != nil {
				errs <- err
				return
			}
			if p[0] != byte(i) || p[4095] != byte(i) {
				errs <- fmt.Errorf("read of block %d got block %d", i, p[0])
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(rc.commands(t)); got != n {
		t.Errorf("%d requests sent, want %d", got, n)
	}
}

// TestClientConcurrentWorkload: many goroutines write and read their own
// blocks at random through one client, checking every read against what
// they wrote; the disk ends equal to the model.
func TestClientConcurrentWorkload(t *testing.T) {
	const (
		workers = 32
		blocks  = 16 // per worker
		bs      = 4096
		ops     = 150
	)
	b := newHookBackend(workers * blocks * bs)
	_, c, _ := testClient(t, Config{MaxInFlight: 64}, b, ClientConfig{})
	ctx := tctx(t)
	model := make([]byte, workers*blocks*bs)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			base := w * blocks * bs
			mine := model[base : base+blocks*bs] // only this worker touches it
			for i := range ops {
				blk := rng.IntN(blocks)
				nblk := 1 + rng.IntN(min(4, blocks-blk))
				off, n := blk*bs, nblk*bs
				var err error
				switch rng.IntN(6) {
				case 0, 1, 2:
					p := pattern(byte(w*31+i), n)
					err = c.WriteAt(ctx, p, uint64(base+off), rng.IntN(4) == 0)
					copy(mine[off:], p)
				case 3:
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
}

// TestClientCancel: a call whose context ends while its request is in the
// server returns ctx.Err() at once; the reply is discarded later without
// touching the caller's buffer, the request may still be applied, and
// the connection stays in step.
func TestClientCancel(t *testing.T) {
	b := newHookBackend(1 << 20)
	for i := range b.data {
		b.data[i] = 0xee
	}
	held, release := releaser(t)
	entered := make(chan string, 2)
	b.hook = func(op string, off uint64) error {
		if off == 1<<16 {
			entered <- op
			<-held
		}
		return nil
	}
	_, c, _ := testClient(t, Config{}, b, ClientConfig{})
	t.Cleanup(release) // before the client closes and the server shuts down

	ctx, cancel := context.WithCancel(context.Background())
	p := make([]byte, 4096)
	done := make(chan error, 2)
	go func() { done <- c.ReadAt(ctx, p, 1<<16) }()
	go func() { done <- c.WriteAt(ctx, pattern(9, 4096), 1<<16, false) }()
	<-entered
	<-entered
	cancel()
	for range 2 {
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled call: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("cancelled call did not return")
		}
	}
	release()
	// The connection is in step: later requests get their own replies.
	ctx2 := tctx(t)
	for i := range 20 {
		q := make([]byte, 512)
		if err := c.ReadAt(ctx2, q, uint64(i)*512); err != nil || q[0] != 0xee {
			t.Fatalf("read %d after the cancel: %v, %#x", i, err, q[0])
		}
	}
	// The cancelled write was applied; the cancelled read's buffer
	// was never written.
	deadline := time.Now().Add(5 * time.Second)
	for !bytes.Equal(b.Bytes()[1<<16:1<<16+4096], pattern(9, 4096)) {
		if time.Now().After(deadline) {
			t.Fatal("the cancelled write was not applied")
		}
		time.Sleep(time.Millisecond)
	}
	if !bytes.Equal(p, make([]byte, 4096)) {
		t.Fatal("the cancelled read wrote into the caller's buffer")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestClientServerGone: the server's end of the connection closes while
// requests are in flight: they fail with ErrDisconnected, and so does
// every later call.
func TestClientServerGone(t *testing.T) {
	b := newHookBackend(1 << 20)
	held, release := releaser(t)
	var entered sync.WaitGroup
	entered.Add(3)
	b.hook = func(op string, off uint64) error {
		if off == 0 {
			entered.Done()
			<-held
		}
		return nil
	}
	s, err := NewServer(Config{Exports: []Export{{Name: "disk", Backend: b}}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cEnd, sEnd := net.Pipe()
	served := make(chan struct{})
	go func() { s.ServeConn(context.Background(), sEnd); close(served) }()
	t.Cleanup(func() { release(); <-served })
	ctx := tctx(t)
	c, err := NewClient(ctx, cEnd, ClientConfig{Export: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	errs := make(chan error, 3)
	go func() { errs <- c.ReadAt(ctx, make([]byte, 512), 0) }()
	go func() { errs <- c.WriteAt(ctx, make([]byte, 512), 0, true) }()
	go func() { errs <- c.Zero(ctx, 0, 512) }()
	entered.Wait()
	sEnd.Close()
	for range 3 {
		if err := <-errs; !errors.Is(err, ErrDisconnected) {
			t.Fatalf("request in flight: %v, want ErrDisconnected", err)
		}
	}
	for _, op := range []func() error{
		func() error { return c.ReadAt(ctx, make([]byte, 512), 4096) },
		func() error { return c.Flush(ctx) },
	} {
		if err := op(); !errors.Is(err, ErrDisconnected) {
			t.Fatalf("later call: %v, want ErrDisconnected", err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close after the failure: %v", err)
	}
}

// TestClientServerShutdown: the server shuts down with a read in flight;
// a request sent then is answered NBD_ESHUTDOWN, the held read completes,
// the client disconnects by itself (NBD_CMD_DISC) and refuses later
// calls with ErrShutdown.
func TestClientServerShutdown(t *testing.T) {
	b := newHookBackend(1 << 20)
	b.data[0] = 0x5a
	held, release := releaser(t)
	entered := make(chan struct{})
	b.hook = func(op string, off uint64) error {
		if off == 0 {
			close(entered)
			<-held
		}
		return nil
	}
	s, c, rc := testClient(t, Config{}, b, ClientConfig{})
	t.Cleanup(release) // before the client closes and the server shuts down
	ctx := tctx(t)
	first := make(chan error, 1)
	p := make([]byte, 512)
	go func() { first <- c.ReadAt(ctx, p, 0) }()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	waitDraining(t, s)
	err := c.WriteAt(ctx, make([]byte, 512), 4096, false)
	var re *ReplyError
	if !errors.Is(err, ErrShutdown) || !errors.As(err, &re) {
		t.Fatalf("write during shutdown: %v", err)
	}
	if err := c.ReadAt(ctx, make([]byte, 512), 4096); !errors.Is(err, ErrShutdown) || !errors.Is(err, ErrDisconnected) || errors.As(err, &re) {
		t.Fatalf("read after NBD_ESHUTDOWN: %v, want a refusal wrapping ErrShutdown and ErrDisconnected", err)
	}
	release()
	if err := <-first; err != nil || p[0] != 0x5a {
		t.Fatalf("held read: %v, %#x", err, p[0])
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The server closes the connection once the held read is answered;
	// the client's NBD_CMD_DISC may come first or find it closed.
	if cmds := fmt.Sprint(rc.commands(t)); cmds != fmt.Sprint([]uint16{cmdRead, cmdWrite, cmdDisc}) && cmds != fmt.Sprint([]uint16{cmdRead, cmdWrite}) {
		t.Fatalf("commands sent %v, want read, write and maybe disc", cmds)
	}
}

// TestClientFenced: the backend answers a write ErrShutdown (the disk was
// fenced) and the server answers NBD_ESHUTDOWN from then on without
// closing: once its requests in flight are answered, the client sends
// NBD_CMD_DISC by itself, and refuses later calls.
func TestClientFenced(t *testing.T) {
	b := newHookBackend(1 << 20)
	held, release := releaser(t)
	entered := make(chan struct{})
	b.hook = func(op string, off uint64) error {
		switch {
		case op == "write":
			return fmt.Errorf("fenced: %w", ErrShutdown)
		case off == 0:
			close(entered)
			<-held
		}
		return nil
	}
	_, c, rc := testClient(t, Config{}, b, ClientConfig{})
	t.Cleanup(release) // before the client closes and the server shuts down
	ctx := tctx(t)
	first := make(chan error, 1)
	go func() { first <- c.ReadAt(ctx, make([]byte, 512), 0) }()
	<-entered
	err := c.WriteAt(ctx, make([]byte, 512), 4096, false)
	var re *ReplyError
	if !errors.Is(err, ErrShutdown) || !errors.As(err, &re) || re.Errno != errnoShutdown {
		t.Fatalf("fenced write: %v", err)
	}
	if err := c.Flush(ctx); !errors.Is(err, ErrShutdown) || !errors.Is(err, ErrDisconnected) || errors.As(err, &re) {
		t.Fatalf("flush after NBD_ESHUTDOWN: %v, want a refusal wrapping ErrShutdown and ErrDisconnected", err)
	}
	time.Sleep(20 * time.Millisecond)
	if cmds := fmt.Sprint(rc.commands(t)); cmds != fmt.Sprint([]uint16{cmdRead, cmdWrite}) {
		t.Fatalf("commands sent with a read in flight %v, want read, write", cmds)
	}
	release()
	if err := <-first; err != nil {
		t.Fatalf("read in flight: %v", err)
	}
	select {
	case <-c.readerDone: // the server closed the connection after NBD_CMD_DISC
	case <-time.After(5 * time.Second):
		t.Fatal("the connection did not end")
	}
	if cmds := fmt.Sprint(rc.commands(t)); cmds != fmt.Sprint([]uint16{cmdRead, cmdWrite, cmdDisc}) {
		t.Fatalf("commands sent %v, want read, write, disc", cmds)
	}
	if err := c.ReadAt(ctx, make([]byte, 512), 0); !errors.Is(err, ErrShutdown) || !errors.Is(err, ErrDisconnected) {
		t.Fatalf("read after the disconnect: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestClientClose: Close waits for the requests in flight, refuses new
// ones meanwhile, then sends NBD_CMD_DISC.
func TestClientClose(t *testing.T) {
	b := newHookBackend(1 << 20)
	held, release := releaser(t)
	var entered sync.WaitGroup
	entered.Add(2)
	b.hook = func(op string, off uint64) error {
		if off == 0 {
			entered.Done()
			<-held
		}
		return nil
	}
	_, c, rc := testClient(t, Config{}, b, ClientConfig{})
	t.Cleanup(release) // before the client closes and the server shuts down
	ctx := tctx(t)
	errs := make(chan error, 2)
	go func() { errs <- c.ReadAt(ctx, make([]byte, 512), 0) }()
	go func() { errs <- c.WriteAt(ctx, pattern(4, 512), 0, false) }()
	entered.Wait()
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v with requests in flight", err)
	default:
	}
	if err := c.ReadAt(ctx, make([]byte, 512), 4096); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("read during Close: %v", err)
	}
	release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("request in flight at Close: %v", err)
		}
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if cmds := rc.commands(t); len(cmds) != 3 || cmds[2] != cmdDisc {
		t.Fatalf("commands sent %v, want two and NBD_CMD_DISC", cmds)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestClientCloseTimeout: requests still in flight after CloseTimeout are
// cut off with ErrDisconnected, and Close says so.
func TestClientCloseTimeout(t *testing.T) {
	b := newHookBackend(1 << 20)
	held, release := releaser(t)
	entered := make(chan struct{})
	b.hook = func(op string, off uint64) error {
		if off == 0 {
			close(entered)
			<-held
		}
		return nil
	}
	_, c, rc := testClient(t, Config{}, b, ClientConfig{CloseTimeout: 100 * time.Millisecond})
	t.Cleanup(release) // before the client closes and the server shuts down
	ctx := tctx(t)
	errs := make(chan error, 1)
	go func() { errs <- c.ReadAt(ctx, make([]byte, 512), 0) }()
	<-entered
	start := time.Now()
	err := c.Close()
	if err == nil || !strings.Contains(err.Error(), "in flight") {
		t.Fatalf("Close: %v, want an error about the request in flight", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 3*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := <-errs; !errors.Is(err, ErrDisconnected) {
		t.Fatalf("request cut off: %v", err)
	}
	if cmds := rc.commands(t); fmt.Sprint(cmds) != fmt.Sprint([]uint16{cmdRead, cmdDisc}) {
		t.Fatalf("commands sent %v", cmds)
	}
	release()
}

// optMsg builds an option reply.
func optMsg(opt, typ uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func infoMsg(typ uint16, fields ...any) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	for _, f := range fields {
		switch v := f.(type) {
		case uint16:
			b = binary.BigEndian.AppendUint16(b, v)
		case uint32:
			b = binary.BigEndian.AppendUint32(b, v)
		case uint64:
			b = binary.BigEndian.AppendUint64(b, v)
		}
	}
	return optMsg(optGo, repInfo, b)
}

// TestClientHandshake runs the client against scripted servers.
func TestClientHandshake(t *testing.T) {
	newstyle := func(flags uint16) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicInit)
		b = binary.BigEndian.AppendUint64(b, magicOpt)
		return binary.BigEndian.AppendUint16(b, flags)
	}
	exportInfo := infoMsg(infoExport, uint64(1<<20), tflagHasFlags|tflagSendFlush|tflagReadOnly)
	ack := optMsg(optGo, repAck, nil)
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name    string
		hello   []byte
		replies []byte // after the client's flags and NBD_OPT_GO
		silent  bool   // the server says nothing
		want    []error
		text    string
		info    *ExportInfo
		flags   uint32 // client flags expected
		abort   bool   // the client sends NBD_OPT_ABORT after the reply
	}{
		{name: "ok", hello: newstyle(flagFixedNewstyle | flagNoZeroes),
			replies: cat(infoMsg(infoName, uint32(0x64697363)), exportInfo, infoMsg(infoBlockSize, uint32(512), uint32(4096), uint32(1<<20)), infoMsg(77), ack),
			flags:   3, info: &ExportInfo{Name: "disk", Size: 1 << 20, Flags: tflagHasFlags | tflagSendFlush | tflagReadOnly, ReadOnly: true, CanFlush: true,
				MinBlockSize: 512, PreferredBlockSize: 4096, MaxBlockSize: 1 << 20}},
		{name: "no zeroes not offered", hello: newstyle(flagFixedNewstyle), replies: cat(exportInfo, ack), flags: 1,
			info: &ExportInfo{Name: "disk", Size: 1 << 20, Flags: tflagHasFlags | tflagSendFlush | tflagReadOnly, ReadOnly: true, CanFlush: true}},
		{name: "not nbd", hello: []byte("HTTP/1.1 400 Bad Request\r\n"), want: []error{ErrHandshake}, text: "not an NBD server"},
		{name: "oldstyle", hello: cat(binary.BigEndian.AppendUint64(nil, magicInit), binary.BigEndian.AppendUint64(nil, magicOldstyle), make([]byte, 8+4+124)),
			want: []error{ErrHandshake, errors.ErrUnsupported}, text: "oldstyle"},
		{name: "not fixed newstyle", hello: newstyle(0), want: []error{ErrHandshake, errors.ErrUnsupported}, text: "fixed newstyle"},
		{name: "go unsupported", hello: newstyle(flagFixedNewstyle), replies: optMsg(optGo, repErrUnsup, nil), flags: 1,
			want: []error{ErrHandshake, errors.ErrUnsupported}, text: "NBD_OPT_GO", abort: true},
		{name: "tls required", hello: newstyle(flagFixedNewstyle), replies: optMsg(optGo, repErrTLSReqd, []byte("use TLS")), flags: 1,
			want: []error{ErrHandshake, errors.ErrUnsupported}, text: "use TLS", abort: true},
		{name: "unknown export", hello: newstyle(flagFixedNewstyle), replies: optMsg(optGo, repErrUnknown, nil), flags: 1,
			want: []error{ErrHandshake}, text: `unknown export "disk"`, abort: true},
		{name: "server shutting down", hello: newstyle(flagFixedNewstyle), replies: optMsg(optGo, repErrShutdn, nil), flags: 1,
			want: []error{ErrHandshake, ErrShutdown}, abort: true},
		{name: "ack without export", hello: newstyle(flagFixedNewstyle), replies: ack, flags: 1,
			want: []error{ErrHandshake}, text: "without NBD_INFO_EXPORT"},
		{name: "short export info", hello: newstyle(flagFixedNewstyle), replies: infoMsg(infoExport, uint64(1)), flags: 1,
			want: []error{ErrHandshake}, text: "NBD_INFO_EXPORT of 10 bytes"},
		{name: "bad block sizes", hello: newstyle(flagFixedNewstyle), replies: cat(infoMsg(infoBlockSize, uint32(3), uint32(4096), uint32(1<<20))), flags: 1,
			want: []error{ErrHandshake}, text: "invalid block sizes"},
		{name: "reply to another option", hello: newstyle(flagFixedNewstyle), replies: optMsg(optList, repAck, nil), flags: 1,
			want: []error{ErrHandshake}, text: "NBD_OPT_LIST"},
		{name: "connection closed", hello: newstyle(flagFixedNewstyle), flags: 1, want: []error{ErrHandshake, io.EOF}},
		{name: "silent server", silent: true, want: []error{ErrHandshake, context.DeadlineExceeded}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cEnd, sEnd := net.Pipe()
			defer sEnd.Close()
			type seen struct {
				flags uint32
				opt   []byte
				after []byte
			}
			got := make(chan seen, 1)
			go func() {
				var s seen
				defer func() { got <- s }()
				if tt.silent {
					io.Copy(io.Discard, sEnd)
					return
				}
				if _, err := sEnd.Write(tt.hello); err != nil {
					return
				}
				var f [4]byte
				if _, err := io.ReadFull(sEnd, f[:]); err != nil {
					return
				}
				s.flags = binary.BigEndian.Uint32(f[:])
				var h [16]byte
				if _, err := io.ReadFull(sEnd, h[:]); err != nil {
					return
				}
				s.opt = append(h[:], make([]byte, binary.BigEndian.Uint32(h[12:]))...)
				if _, err := io.ReadFull(sEnd, s.opt[16:]); err != nil {
					return
				}
				if tt.replies == nil {
					sEnd.Close() // the server hangs up
					return
				}
				if _, err := sEnd.Write(tt.replies); err != nil {
					return
				}
				if tt.info != nil {
					// Transmission: read the client's NBD_CMD_DISC, then close.
					var req [requestHeaderLen]byte
					io.ReadFull(sEnd, req[:])
					s.after = req[:]
					sEnd.Close()
					return
				}
				s.after, _ = io.ReadAll(sEnd)
			}()
			timeout := 5 * time.Second
			if tt.silent {
				timeout = 50 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c, err := NewClient(ctx, cEnd, ClientConfig{Export: "disk"})
			if tt.info != nil {
				if err != nil {
					t.Fatal(err)
				}
				if c.Info() != *tt.info {
					t.Errorf("Info\n got %+v\nwant %+v", c.Info(), *tt.info)
				}
				if err := c.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			} else {
				for _, w := range tt.want {
					if !errors.Is(err, w) {
						t.Errorf("error %v, want %v", err, w)
					}
				}
				if !strings.Contains(fmt.Sprint(err), tt.text) {
					t.Errorf("error %v, want %q in it", err, tt.text)
				}
			}
			s := <-got
			if tt.silent {
				return
			}
			if s.flags != tt.flags {
				t.Errorf("client flags %#x, want %#x", s.flags, tt.flags)
			}
			if s.opt != nil {
				wantOpt := binary.BigEndian.AppendUint64(nil, magicOpt)
				wantOpt = binary.BigEndian.AppendUint32(wantOpt, optGo)
				wantOpt = binary.BigEndian.AppendUint32(wantOpt, uint32(len(infoData("disk", infoBlockSize))))
				wantOpt = append(wantOpt, infoData("disk", infoBlockSize)...)
				if !bytes.Equal(s.opt, wantOpt) {
					t.Errorf("option sent %x, want %x", s.opt, wantOpt)
				}
			}
			var wantAfter []byte
			switch {
			case tt.abort:
				wantAfter = binary.BigEndian.AppendUint64(nil, magicOpt)
				wantAfter = binary.BigEndian.AppendUint32(wantAfter, optAbort)
				wantAfter = binary.BigEndian.AppendUint32(wantAfter, 0)
			case tt.info != nil:
				wantAfter = make([]byte, requestHeaderLen)
				binary.BigEndian.PutUint32(wantAfter, magicRequest)
				binary.BigEndian.PutUint16(wantAfter[6:], cmdDisc)
			}
			if s.opt != nil && !bytes.Equal(s.after, wantAfter) {
				t.Errorf("sent after the replies %x, want %x", s.after, wantAfter)
			}
		})
	}
}

// stockServer starts a stock NBD server serving on the unix socket sock
// that args name, or skips the test when the server is not installed.
func stockServer(t *testing.T, name, install string, args func(sock string) []string) (sock string, cmd *exec.Cmd) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed (Debian package %s; .ci/run installs it)", name, install)
	}
	dir, err := os.MkdirTemp("", "nbdc") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock = filepath.Join(dir, "s")
	cmd = exec.Command(name, args(sock)...)
	cmd.Stderr = tWriter{t} // waitSocket's probe makes it complain
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitSocket(t, sock)
	return sock, cmd
}

// writeBlocks writes a distinct pattern to each of n blocks of bs bytes
// from n goroutines at once (every fourth with FUA) and records them in
// model.
func writeBlocks(t *testing.T, ctx context.Context, c *Client, model []byte, base, n, bs int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		off := base + i*bs
		p := pattern(byte(i*13+1), bs)
		copy(model[off:], p)
		wg.Go(func() {
			if err := c.WriteAt(ctx, p, uint64(off), i%4 == 0); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// checkBlocks reads [off, off+len(want)) back in blocks of bs bytes from
// many goroutines at once and compares with want.
func checkBlocks(t *testing.T, ctx context.Context, c *Client, want []byte, off, bs int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(want)/bs+1)
	for i := 0; i < len(want); i += bs {
		n := min(bs, len(want)-i)
		wg.Go(func() {
			p := make([]byte, n)
			if err := c.ReadAt(ctx, p, uint64(off+i)); err != nil {
				errs <- err
			} else if !bytes.Equal(p, want[i:i+n]) {
				errs <- fmt.Errorf("read of %d bytes at %d differs from what was written", n, off+i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestClientNbdkit runs the client against nbdkit's memory plugin:
// pipelined writes and reads, the largest request, trim and zero, a
// cross-check with nbdcopy, and the server dying.
func TestClientNbdkit(t *testing.T) {
	const size = 64 << 20
	sock, cmd := stockServer(t, "nbdkit", "nbdkit", func(sock string) []string {
		return []string{"-U", sock, "-f", "--exit-with-parent", "memory", "64M"}
	})
	ctx := tctx(t)
	uri := "nbd+unix:///?socket=" + sock
	c, err := DialURI(ctx, uri, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info := c.Info()
	if info.Size != size || info.ReadOnly || !info.CanFlush || !info.CanFUA || !info.CanTrim || !info.CanZero || !info.CanMultiConn {
		t.Fatalf("Info %+v", info)
	}
	if c.MaxRequest() != 32<<20 {
		t.Errorf("MaxRequest %d, want 32 MiB", c.MaxRequest())
	}

	model := make([]byte, size)
	writeBlocks(t, ctx, c, model, 0, 64, 256<<10) // 16 MiB, 64 requests in flight
	big := pattern(77, int(c.MaxRequest()))
	if err := c.WriteAt(ctx, big, 32<<20, false); err != nil {
		t.Fatalf("write of MaxRequest bytes: %v", err)
	}
	copy(model[32<<20:], big)
	if err := c.WriteAt(ctx, append(big, 0), 0, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("write above MaxRequest: %v", err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(ctx, 1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	clear(model[1<<20 : 2<<20]) // the memory plugin reads trimmed ranges as zeroes
	if err := c.Zero(ctx, 3<<20+512, 4096); err != nil {
		t.Fatal(err)
	}
	clear(model[3<<20+512 : 3<<20+512+4096])
	checkBlocks(t, ctx, c, model[:16<<20], 0, 128<<10)
	got := make([]byte, 32<<20)
	if err := c.ReadAt(ctx, got, 32<<20); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read of MaxRequest bytes: %v", err)
	}

	// Another client, nbdcopy, sees the same disk.
	if _, err := exec.LookPath("nbdcopy"); err == nil {
		out := filepath.Join(t.TempDir(), "copy.img")
		run(t, "nbdcopy", uri, out)
		copied, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(copied, model) {
			t.Fatal("nbdcopy's copy differs from what the client wrote")
		}
	} else {
		t.Log("nbdcopy is not installed: no cross-check")
	}

	// The server dies: calls fail with ErrDisconnected.
	cmd.Process.Kill()
	cmd.Wait()
	for i := range 2 {
		if err := c.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, ErrDisconnected) {
			t.Fatalf("read %d after nbdkit died: %v", i, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestClientQemuNbd runs the client against qemu-nbd serving a raw file:
// what the handshake recorded agrees with nbdinfo, pipelined writes land
// in the file, and qemu-io and the client read each other's writes.
func TestClientQemuNbd(t *testing.T) {
	const size = 16 << 20
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	sock, _ := stockServer(t, "qemu-nbd", "qemu-utils", func(sock string) []string {
		return []string{"-f", "raw", "-k", sock, "-x", "disk", "--persistent", "--shared=8", "--discard=unmap", img}
	})
	ctx := tctx(t)
	uri := "nbd+unix:///disk?socket=" + sock
	c, err := DialURI(ctx, uri, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info := c.Info()
	if info.Size != size || info.MinBlockSize != 1 || info.PreferredBlockSize != 4096 || info.MaxBlockSize != 32<<20 || c.MaxRequest() != 32<<20 {
		t.Fatalf("Info %+v, MaxRequest %d", info, c.MaxRequest())
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		var ni struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(run(t, "nbdinfo", "--json", uri)), &ni); err != nil || len(ni.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %v %v", err, ni)
		}
		e := ni.Exports[0]
		for k, v := range map[string]any{"export-size": float64(info.Size), "is_read_only": info.ReadOnly, "can_flush": info.CanFlush,
			"can_fua": info.CanFUA, "can_trim": info.CanTrim, "can_zero": info.CanZero, "can_multi_conn": info.CanMultiConn,
			"block_size_minimum": float64(info.MinBlockSize), "block_size_preferred": float64(info.PreferredBlockSize),
			"block_size_maximum": float64(info.MaxBlockSize)} {
			if fmt.Sprint(e[k]) != fmt.Sprint(v) {
				t.Errorf("nbdinfo %s: %v, the client recorded %v", k, e[k], v)
			}
		}
	} else {
		t.Log("nbdinfo is not installed: no cross-check of the handshake")
	}

	model := make([]byte, size)
	writeBlocks(t, ctx, c, model, 0, 32, 128<<10) // 4 MiB, 32 requests in flight
	if err := c.WriteAt(ctx, bytes.Repeat([]byte{0x5a}, 64<<10), 8<<20, true); err != nil {
		t.Fatal(err)
	}
	copy(model[8<<20:], bytes.Repeat([]byte{0x5a}, 64<<10))
	if err := c.Zero(ctx, 1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	clear(model[1<<20 : 1<<20+64<<10])
	if err := c.Trim(ctx, 2<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	clear(model[2<<20 : 3<<20]) // qemu-nbd --discard=unmap punches a hole in the raw file
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	checkBlocks(t, ctx, c, model, 0, 1<<20)

	if _, err := exec.LookPath("qemu-io"); err == nil {
		// qemu-io reads the client's write, and the client reads qemu-io's.
		out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 8M 64k", "-c", "write -P 0xa5 12M 64k", uri)
		if strings.Contains(out, "verification failed") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io:\n%s", out)
		}
		copy(model[12<<20:], bytes.Repeat([]byte{0xa5}, 64<<10))
		checkBlocks(t, ctx, c, model[12<<20:12<<20+64<<10], 12<<20, 64<<10)
	} else {
		t.Log("qemu-io is not installed: no cross-check with qemu")
	}

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	file, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file, model) {
		t.Fatal("the served file differs from what the client wrote")
	}
}
