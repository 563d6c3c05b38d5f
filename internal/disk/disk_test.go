package disk

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/clock/clocktest"
	"github.com/idc-dev/idc/core/multipath"
	"github.com/idc-dev/idc/nbd"
	"github.com/idc-dev/idc/token"
)

// call is a call the fake transport received.
type call struct {
	epoch uint64
	peer  string
	req   block.Request
	tok   token.Token
	done  func([]byte, error)
}

// fakeTransport records calls; the test answers them.
type fakeTransport struct {
	mu      sync.Mutex
	calls   []*call
	reports []string
}

var errEnded = errors.New("epoch ended")

func (f *fakeTransport) Call(e uint64, peer string, req []byte, done func([]byte, error)) {
	req = bytes.Clone(req) // the disk reuses req's buffer once done ran
	r, err := block.Parse(req)
	if err != nil {
		panic(err)
	}
	tok, _, err := token.Parse(r.Token)
	if err != nil {
		panic(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, &call{epoch: e, peer: peer, req: r, tok: tok, done: done})
}

func (f *fakeTransport) Report(e uint64, peer string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, peer)
}

// take returns the calls received so far and forgets them.
func (f *fakeTransport) take() []*call {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func answer(c *call, st block.Status, data []byte) {
	c.done(block.AppendAnswer(nil, block.Answer{Status: st, ID: c.req.ID, Data: data}), nil)
}

func newTestDisk(t *testing.T) (*Disk, *fakeTransport, *clocktest.Manual) {
	t.Helper()
	tr, clk := &fakeTransport{}, &clocktest.Manual{}
	d, err := New(Config{
		Size: 1 << 20, Transport: tr, Clock: clk, FirstID: 100,
		Multipath:  multipath.Config{Timeout: 500 * time.Millisecond, RetryDelay: 10 * time.Millisecond},
		EpochEnded: func(err error) bool { return errors.Is(err, errEnded) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return d, tr, clk
}

func tok(e uint64) token.Token {
	return token.Token{Group: "g", Epoch: e, Domain: "disk", Incarnation: 7}
}

// TestFailover follows a write through a path that fails: the disk sends
// it with the epoch's token, reports the path, sends nothing more in
// that epoch, and in the next sends the same bytes with the new token
// through the other path; the client learns the outcome only from the
// storage's answer.
func TestFailover(t *testing.T) {
	d, tr, _ := newTestDisk(t)
	d.Connected(3, tok(3), []string{"b", "a"})
	data := []byte("hello, world")
	res := make(chan Result, 1)
	d.Submit(block.Request{Op: block.OpWrite, Offset: 4096, Length: uint32(len(data)), Data: data, Flags: block.FlagFUA}, func(r Result) { res <- r })
	copy(data, "XXXXX") // the disk copied the payload
	calls := tr.take()
	if len(calls) != 1 {
		t.Fatalf("%d calls", len(calls))
	}
	c := calls[0]
	if c.epoch != 3 || c.peer != "a" || c.tok.String() != tok(3).String() || c.req.ID != 100 || string(c.req.Data) != "hello, world" || c.req.Flags != block.FlagFUA || c.req.Offset != 4096 {
		t.Fatalf("call %+v token %v", c, c.tok)
	}
	c.done(nil, errors.New("peer lost"))
	if !slices.Equal(tr.reports, []string{"a"}) {
		t.Fatalf("reports %v", tr.reports)
	}
	if len(tr.take()) != 0 {
		t.Fatal("sent again in the epoch whose path failed")
	}
	select {
	case r := <-res:
		t.Fatalf("outcome %+v before the storage answered", r)
	default:
	}
	d.Disconnected(3)
	d.Connected(4, tok(4), []string{"b"})
	calls = tr.take()
	if len(calls) != 1 || calls[0].peer != "b" || calls[0].tok.String() != tok(4).String() || calls[0].req.ID != 100 || string(calls[0].req.Data) != "hello, world" {
		t.Fatalf("re-sent %+v", calls)
	}
	answer(calls[0], block.StatusOK, nil)
	if r := <-res; r.Status != block.StatusOK {
		t.Fatalf("outcome %+v", r)
	}
	if s := d.Stats(); s.Failovers != 1 || s.Resent != 1 || s.Reports != 1 || s.Pending != 0 || s.Path != "b" {
		t.Fatalf("stats %+v", s)
	}
}

// TestTimeout: a path silent for the timeout is reported by the disk's
// timer.
func TestTimeout(t *testing.T) {
	d, tr, clk := newTestDisk(t)
	d.Connected(1, tok(1), []string{"a", "b"})
	d.Submit(block.Request{Op: block.OpRead, Length: 512}, func(Result) {})
	clk.Jump(499 * time.Millisecond)
	if len(tr.reports) != 0 {
		t.Fatalf("reported early: %v", tr.reports)
	}
	clk.Jump(time.Millisecond)
	if !slices.Equal(tr.reports, []string{"a"}) {
		t.Fatalf("reports %v", tr.reports)
	}
}

// TestReadAndRefused: a read refused by the storage's guard is sent again
// after the retry delay; its data comes from the answer that counted.
func TestReadAndRefused(t *testing.T) {
	d, tr, clk := newTestDisk(t)
	d.Connected(1, tok(1), []string{"a"})
	res := make(chan Result, 1)
	d.Submit(block.Request{Op: block.OpRead, Offset: 512, Length: 4}, func(r Result) { res <- r })
	answer(tr.take()[0], block.StatusFenced, []byte("not fenced yet"))
	if len(tr.take()) != 0 {
		t.Fatal("sent again before the retry delay")
	}
	clk.Jump(10 * time.Millisecond)
	calls := tr.take()
	if len(calls) != 1 {
		t.Fatalf("%d calls after the retry delay", len(calls))
	}
	answer(calls[0], block.StatusOK, []byte("data"))
	if r := <-res; r.Status != block.StatusOK || string(r.Data) != "data" {
		t.Fatalf("outcome %+v", r)
	}
}

// TestBackend drives the disk through its NBD backend: errors map to NBD
// errors, a cancelled request is abandoned and holds back the next one
// until its outcome is known, and Close ends everything with ESHUTDOWN.
func TestBackend(t *testing.T) {
	d, tr, _ := newTestDisk(t)
	be := Backend(d)
	if f := be.Features(); !f.Flush || !f.FUA || !f.MultiConn || be.Size() != 1<<20 {
		t.Fatalf("features %+v size %d", f, be.Size())
	}
	d.Connected(1, tok(1), []string{"a"})
	ctx := context.Background()

	// A read through the backend.
	got := make(chan error, 1)
	p := make([]byte, 4)
	go func() { got <- be.ReadAt(ctx, p, 0) }()
	c := waitCall(t, tr)
	answer(c, block.StatusOK, []byte("abcd"))
	if err := <-got; err != nil || string(p) != "abcd" {
		t.Fatalf("read %q, %v", p, err)
	}

	// An I/O error at the storage is EIO; an invalid request EINVAL.
	go func() { got <- be.Flush(ctx) }()
	answer(waitCall(t, tr), block.StatusIO, []byte("disk on fire"))
	if err := <-got; !errors.Is(err, nbd.ErrIO) {
		t.Fatalf("flush: %v", err)
	}
	go func() { got <- be.Trim(ctx, 0, 512) }()
	answer(waitCall(t, tr), block.StatusInvalid, nil)
	if err := <-got; !errors.Is(err, nbd.ErrInvalid) {
		t.Fatalf("trim: %v", err)
	}

	// A write whose connection goes away holds back the next request.
	cctx, cancel := context.WithCancel(ctx)
	go func() { got <- be.WriteAt(cctx, []byte("old!"), 0, false) }()
	old := waitCall(t, tr)
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled write: %v", err)
	}
	go func() { got <- be.WriteAt(ctx, []byte("new!"), 0, false) }()
	time.Sleep(10 * time.Millisecond) // the replay must not be sent
	if calls := tr.take(); len(calls) != 0 {
		t.Fatalf("the replay was sent while the abandoned write is in flight: %+v", calls[0].req)
	}
	answer(old, block.StatusOK, nil)
	c = waitCall(t, tr)
	if !bytes.Equal(c.req.Data, []byte("new!")) {
		t.Fatalf("sent %+v", c.req)
	}
	answer(c, block.StatusOK, nil)
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	go func() { got <- be.Zero(ctx, 0, 4096, true) }()
	waitCall(t, tr)
	d.Close()
	if err := <-got; !errors.Is(err, nbd.ErrShutdown) {
		t.Fatalf("after close: %v", err)
	}
}

// waitCall waits for the next call (the backend submits from another
// goroutine).
func waitCall(t *testing.T, tr *fakeTransport) *call {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c := tr.take(); len(c) > 0 {
			if len(c) != 1 {
				t.Fatalf("%d calls at once", len(c))
			}
			return c[0]
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no call")
	return nil
}

func TestConfig(t *testing.T) {
	ok := Config{Size: 1, Transport: &fakeTransport{}, Clock: &clocktest.Manual{}, EpochEnded: func(error) bool { return false }}
	for _, bad := range []func(*Config){
		func(c *Config) { c.Size = 0 },
		func(c *Config) { c.Transport = nil },
		func(c *Config) { c.Clock = nil },
		func(c *Config) { c.EpochEnded = nil },
		func(c *Config) { c.Multipath.Timeout = -1 },
		func(c *Config) { c.Multipath.Paths = []string{"a", "a"} },
	} {
		c := ok
		bad(&c)
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
}

// TestReadInto: a read given a buffer is read into it as the answer that
// counts arrives, and the Result's Data is that buffer; an answer to an
// earlier sending is not copied; once Abandon returned, nothing is
// written into the buffer any more; and the transport's response buffer
// is not kept (it is scribbled over once done returned).
func TestReadInto(t *testing.T) {
	d, tr, _ := newTestDisk(t)
	d.Connected(1, tok(1), []string{"a"})
	answerScribbled := func(c *call, st block.Status, data []byte) {
		resp := block.AppendAnswer(nil, block.Answer{Status: st, ID: c.req.ID, Data: data})
		c.done(resp, nil)
		for i := range resp {
			resp[i] = 'X' // the transport reuses its buffer
		}
	}
	buf := make([]byte, 4)
	res := make(chan Result, 1)
	d.Submit(block.Request{Op: block.OpRead, Offset: 512, Length: 4, Data: buf}, func(r Result) { res <- r })
	first := tr.take()[0]
	// The epoch ends; the next sends it again.
	d.Disconnected(1)
	d.Connected(2, tok(2), []string{"a"})
	second := tr.take()[0]
	answerScribbled(first, block.StatusOK, []byte("old!"))
	if string(buf) != "\x00\x00\x00\x00" {
		t.Fatalf("the answer to an earlier sending was copied: %q", buf)
	}
	answerScribbled(second, block.StatusOK, []byte("new!"))
	r := <-res
	if r.Status != block.StatusOK || string(r.Data) != "new!" || &r.Data[0] != &buf[0] {
		t.Fatalf("outcome %+v, want new! in the caller's buffer", r)
	}

	// Abandoned: its buffer is left alone.
	buf2 := make([]byte, 4)
	id := d.Submit(block.Request{Op: block.OpRead, Length: 4, Data: buf2}, func(Result) { t.Error("an abandoned read's outcome was delivered") })
	c := tr.take()[0]
	d.Abandon(id)
	answerScribbled(c, block.StatusOK, []byte("late"))
	if string(buf2) != "\x00\x00\x00\x00" {
		t.Fatalf("an abandoned read's buffer was written: %q", buf2)
	}

	// Without a buffer, the data is the disk's own copy.
	d.Submit(block.Request{Op: block.OpRead, Length: 4}, func(r Result) { res <- r })
	answerScribbled(tr.take()[0], block.StatusOK, []byte("mine"))
	if r := <-res; string(r.Data) != "mine" {
		t.Fatalf("outcome %+v", r)
	}
}

// echoTransport answers every call at once, from within Call, reusing its
// answer buffer: a transport that costs nothing, to count what the disk
// allocates.
type echoTransport struct {
	mu   sync.Mutex
	data []byte
	buf  []byte
}

func (e *echoTransport) Call(_ uint64, _ string, req []byte, done func([]byte, error)) {
	r, err := block.Parse(req)
	if err != nil {
		panic(err)
	}
	e.mu.Lock()
	a := block.Answer{Status: block.StatusOK, ID: r.ID}
	if r.Op == block.OpRead {
		a.Data = e.data[:r.Length]
	}
	e.buf = block.AppendAnswer(e.buf[:0], a)
	resp := e.buf
	e.mu.Unlock()
	done(resp, nil)
}

func (e *echoTransport) Report(uint64, string) {}

// TestAllocations: reads into the caller's buffer and writes allocate far
// less than their payload per request once the disk's buffers are warm:
// request frames and payloads are reused.
func TestAllocations(t *testing.T) {
	tr := &echoTransport{data: make([]byte, 64<<10)}
	d, err := New(Config{Size: 1 << 30, Transport: tr, Clock: clock.System(), EpochEnded: func(error) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Connected(1, tok(1), []string{"a"})
	buf := make([]byte, 64<<10)
	done := make(chan Result, 1)
	perRequest := func(r block.Request, n int) float64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range n {
			d.Submit(r, func(res Result) { done <- res })
			if res := <-done; res.Status != block.StatusOK {
				t.Fatalf("%s: %v", r.Op, res.Status)
			}
		}
		runtime.ReadMemStats(&after)
		return float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
	}
	for _, r := range []block.Request{
		{Op: block.OpRead, Length: 64 << 10, Data: buf},
		{Op: block.OpWrite, Length: 64 << 10, Data: buf},
	} {
		perRequest(r, 100)
		if n := perRequest(r, 1000); n > 8<<10 {
			t.Errorf("%s of 64 KiB: %.0f bytes allocated per request", r.Op, n)
		} else {
			t.Logf("%s of 64 KiB: %.0f bytes allocated per request", r.Op, n)
		}
	}
}

// memTransport is a path to a storage in memory that answers every call
// from a goroutine of its own, as a channel's reading goroutine does;
// while held, it keeps the calls without answering.
type memTransport struct {
	mu    sync.Mutex
	mem   []byte
	held  bool
	calls []func()
	wake  chan struct{}
}

func newMemTransport(size int) *memTransport {
	m := &memTransport{mem: make([]byte, size), wake: make(chan struct{}, 1)}
	go m.run()
	return m
}

func (m *memTransport) Call(_ uint64, _ string, req []byte, done func([]byte, error)) {
	r, err := block.Parse(req)
	if err != nil {
		panic(err)
	}
	var a block.Answer
	m.mu.Lock()
	a = block.Answer{Status: block.StatusOK, ID: r.ID}
	switch r.Op {
	case block.OpRead:
		a.Data = bytes.Clone(m.mem[r.Offset : r.Offset+uint64(r.Length)])
	case block.OpWrite:
		copy(m.mem[r.Offset:], r.Data)
	}
	resp := block.AppendAnswer(nil, a)
	m.calls = append(m.calls, func() {
		done(resp, nil)
		clear(resp) // the transport's buffer: not the disk's once done returned
	})
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *memTransport) Report(uint64, string) {}

func (m *memTransport) run() {
	for range m.wake {
		m.mu.Lock()
		var calls []func()
		if !m.held {
			calls, m.calls = m.calls, nil
		}
		m.mu.Unlock()
		for _, f := range calls {
			f()
		}
	}
}

func (m *memTransport) hold(h bool) {
	m.mu.Lock()
	m.held = h
	m.mu.Unlock()
	m.wake <- struct{}{}
}

// TestAsyncBackend drives the disk's NBD backend through an NBD server,
// whose reads and writes it starts without a goroutine each
// (nbd.AsyncBackend): every byte lands where the client put it and reads
// back; a client that goes away while its requests are in the disk ends
// them (they are abandoned), so the server shuts down at once, and a
// request sent afterwards waits until the abandoned ones have their
// outcome.
func TestAsyncBackend(t *testing.T) {
	const size = 1 << 20
	tr := newMemTransport(size)
	d, err := New(Config{Size: size, Transport: tr, Clock: clock.System(), EpochEnded: func(error) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Connected(1, tok(1), []string{"a"})
	be := Backend(d)
	if _, ok := be.(nbd.AsyncBackend); !ok {
		t.Fatal("the disk's backend is not an nbd.AsyncBackend")
	}
	srv, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{{Name: "x", Backend: be}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nbd.NewClient(ctx, nc, nbd.ClientConfig{Export: "x"})
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				off := (w*64 + i%64) * 2048
				p := bytes.Repeat([]byte{byte(w*50 + i)}, 2048)
				if err := c.WriteAt(ctx, p, uint64(off), i%5 == 0); err != nil {
					t.Error(err)
					return
				}
				copy(model[off:], p)
				got := make([]byte, 2048)
				if err := c.ReadAt(ctx, got, uint64(off)); err != nil || !bytes.Equal(got, p) {
					t.Errorf("read back at %d: %v", off, err)
					return
				}
			}
		})
	}
	wg.Wait()
	all := make([]byte, size)
	if err := c.ReadAt(ctx, all, 0); err != nil || !bytes.Equal(all, model) {
		t.Fatalf("the disk differs from the model: %v", err)
	}

	// The path holds its answers; the client goes away.
	tr.hold(true)
	cctx, ccancel := context.WithCancel(ctx)
	for i := range 4 {
		wg.Go(func() { c.ReadAt(cctx, make([]byte, 512), uint64(i)*512) })
	}
	for d.Stats().Pending < 4 {
		time.Sleep(time.Millisecond)
	}
	ccancel()
	wg.Wait()
	nc.Close() // gone, without a disconnect
	c.Close()
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown with requests in the disk: %v", err)
	}
	// Abandoned, they still hold back a request submitted now.
	res := make(chan Result, 1)
	d.Submit(block.Request{Op: block.OpRead, Length: 4}, func(r Result) { res <- r })
	time.Sleep(20 * time.Millisecond)
	select {
	case r := <-res:
		t.Fatalf("a request overtook abandoned ones: %+v", r)
	default:
	}
	tr.hold(false)
	if r := <-res; r.Status != block.StatusOK {
		t.Fatalf("after the abandoned requests: %+v", r)
	}
}
