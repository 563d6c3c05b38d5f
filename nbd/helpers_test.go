package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// testLogger logs to the test output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// startServer serves cfg on a unix socket and returns the server and the
// socket path. The server is shut down when the test ends.
func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		os.RemoveAll(dir)
	})
	return s, sock
}

// rawClient speaks the protocol byte by byte, for tests.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	r  *bufio.Reader
	wm sync.Mutex
	// lenient ignores write errors: the server may close first.
	lenient bool
}

func dial(t *testing.T, sock string) *rawClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	var hello [18]byte
	rc.read(hello[:])
	if binary.BigEndian.Uint64(hello[0:]) != magicInit || binary.BigEndian.Uint64(hello[8:]) != magicOpt {
		t.Fatalf("bad hello %x", hello)
	}
	if f := binary.BigEndian.Uint16(hello[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	return rc
}

func (rc *rawClient) read(b []byte) {
	rc.t.Helper()
	if _, err := io.ReadFull(rc.r, b); err != nil {
		rc.t.Fatalf("read: %v", err)
	}
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	rc.wm.Lock()
	defer rc.wm.Unlock()
	if _, err := rc.c.Write(b); err != nil && !rc.lenient {
		rc.t.Fatalf("write: %v", err)
	}
}

// expectEOF checks that the server has closed the connection.
func (rc *rawClient) expectEOF() {
	rc.t.Helper()
	b := make([]byte, 1)
	if n, err := rc.r.Read(b); err == nil {
		rc.t.Fatalf("read %d bytes (%x), want the connection closed", n, b[:n])
	}
}

func (rc *rawClient) clientFlags(f uint32) {
	rc.write(binary.BigEndian.AppendUint32(nil, f))
}

func (rc *rawClient) option(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	rc.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (rc *rawClient) optReply() optReply {
	rc.t.Helper()
	var h [20]byte
	rc.read(h[:])
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		rc.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	rc.read(r.data)
	return r
}

// infoData builds the data of NBD_OPT_INFO / NBD_OPT_GO.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// goExport negotiates with NBD_OPT_GO and returns size and transmission flags.
func (rc *rawClient) goExport(name string) (uint64, uint16) {
	rc.t.Helper()
	rc.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
	rc.option(optGo, infoData(name))
	var size uint64
	var flags uint16
	for {
		r := rc.optReply()
		switch r.typ {
		case repInfo:
			if binary.BigEndian.Uint16(r.data) == infoExport {
				size = binary.BigEndian.Uint64(r.data[2:])
				flags = binary.BigEndian.Uint16(r.data[10:])
			}
		case repAck:
			return size, flags
		default:
			rc.t.Fatalf("NBD_OPT_GO reply type %#x %q", r.typ, r.data)
		}
	}
}

func (rc *rawClient) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	rc.write(append(b, payload...))
}

// reply reads one simple reply; readLen gives the data length of each
// READ cookie, read when the error is zero.
func (rc *rawClient) reply(readLen map[uint64]int) (cookie uint64, code uint32, data []byte) {
	rc.t.Helper()
	var h [16]byte
	rc.read(h[:])
	if m := binary.BigEndian.Uint32(h[0:]); m != magicSimpleRepl {
		rc.t.Fatalf("reply magic %#x", m)
	}
	code = binary.BigEndian.Uint32(h[4:])
	cookie = binary.BigEndian.Uint64(h[8:])
	if n := readLen[cookie]; code == 0 && n > 0 {
		data = make([]byte, n)
		rc.read(data)
	}
	return cookie, code, data
}

// hookBackend is a MemBackend whose calls can be observed and held.
type hookBackend struct {
	*MemBackend
	feat Features
	// hook, if set, runs before each call, with the call's name; a
	// non-nil error is returned instead of doing the call.
	hook func(op string, off uint64) error

	mu     sync.Mutex
	calls  []string
	fua    int
	noHole int
}

func newHookBackend(size int) *hookBackend {
	m := NewMemBackend(size)
	return &hookBackend{MemBackend: m, feat: m.Features()}
}

func (h *hookBackend) Features() Features { return h.feat }

func (h *hookBackend) enter(op string, off uint64) error {
	h.mu.Lock()
	h.calls = append(h.calls, op)
	hook := h.hook
	h.mu.Unlock()
	if hook != nil {
		return hook(op, off)
	}
	return nil
}

func (h *hookBackend) callCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.calls)
}

func (h *hookBackend) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := h.enter("read", off); err != nil {
		return err
	}
	return h.MemBackend.ReadAt(ctx, p, off)
}

func (h *hookBackend) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := h.enter("write", off); err != nil {
		return err
	}
	if fua {
		h.mu.Lock()
		h.fua++
		h.mu.Unlock()
	}
	return h.MemBackend.WriteAt(ctx, p, off, fua)
}

func (h *hookBackend) Flush(ctx context.Context) error {
	if err := h.enter("flush", 0); err != nil {
		return err
	}
	return nil
}

func (h *hookBackend) Trim(ctx context.Context, off, n uint64) error {
	if err := h.enter("trim", off); err != nil {
		return err
	}
	return h.MemBackend.Trim(ctx, off, n)
}

func (h *hookBackend) Zero(ctx context.Context, off, n uint64, noHole bool) error {
	if err := h.enter("zero", off); err != nil {
		return err
	}
	if noHole {
		h.mu.Lock()
		h.noHole++
		h.mu.Unlock()
	}
	return h.MemBackend.Zero(ctx, off, n, noHole)
}
