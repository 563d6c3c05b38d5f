package forwarder

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
)

// TestByteForByte: the storage receives exactly the bytes of each request,
// token and payload included, and the caller exactly the storage's answer.
func TestByteForByte(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	w := write(3, 1, bytes.Repeat([]byte("payload!"), 600)) // above 1 KiB
	r := read(3, 2, 512)
	fl := block.AppendRequest(nil, block.Request{Op: block.OpFlush, ID: 3, Token: testToken(3)})
	chs := []chan result{forward(f, 3, w), forward(f, 3, r), forward(f, 3, fl)}
	fc := s.conn(0)
	frames := s.waitFrames(fc, 3)
	for i, want := range [][]byte{w, r, fl} {
		if !bytes.Equal(frames[i], want) {
			t.Fatalf("the storage received frame %d\n%x\nwant\n%x", i, frames[i], want)
		}
	}
	answers := [][]byte{
		block.AppendAnswer(nil, block.Answer{Status: block.StatusOK, ID: 1}),
		block.AppendAnswer(nil, block.Answer{Status: block.StatusOK, ID: 2, Data: bytes.Repeat([]byte{7}, 512)}),
		block.AppendAnswer(nil, block.Answer{Status: block.StatusFenced, ID: 3, Data: []byte("stale epoch")}),
	}
	for _, a := range answers {
		fc.c.Send(a, nil)
	}
	for i, ch := range chs {
		got := get(t, ch)
		if got.err != nil || !bytes.Equal(got.a.Frame, answers[i]) {
			t.Fatalf("request %d: answer %x, %v; want %x", i, got.a.Frame, got.err, answers[i])
		}
	}
	if st := f.Stats(); st.Forwarded != 3 || st.Answered != 3 || st.Dials != 1 || st.Pending != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestOutOfOrder: answers in another order than the requests reach the
// right requests.
func TestOutOfOrder(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	const n = 8
	var chs []chan result
	for id := uint64(1); id <= n; id++ {
		chs = append(chs, forward(f, 1, read(1, id, 16)))
	}
	fc := s.conn(0)
	s.waitFrames(fc, n)
	for _, id := range []uint64{5, 8, 1, 3, 2, 7, 4, 6} {
		fc.answer(block.StatusOK, id, answerData(id))
	}
	for i, ch := range chs {
		id := uint64(i + 1)
		a := answerOf(t, get(t, ch))
		if a.ID != id || !bytes.Equal(a.Data, answerData(id)) {
			t.Errorf("request %d got the answer to %d (%q)", id, a.ID, a.Data)
		}
	}
}

// TestAnswersAreTheCallers: an answer handed to done is not reused for a
// later one (the forwarder does not release it), until the caller
// releases it.
func TestAnswersAreTheCallers(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	fc := func() *fakeConn { forward(f, 1, read(1, 100, 1)); return s.conn(0) }()
	var kept [][]byte
	for id := uint64(1); id <= 20; id++ {
		ch := forward(f, 1, read(1, id, 4096))
		s.waitFrames(fc, int(id)+1)
		fc.answer(block.StatusOK, id, bytes.Repeat([]byte{byte(id)}, 4096))
		kept = append(kept, get(t, ch).a.Frame)
	}
	for i, b := range kept {
		a, err := block.ParseAnswer(b)
		if err != nil || a.ID != uint64(i+1) || !bytes.Equal(a.Data, bytes.Repeat([]byte{byte(i + 1)}, 4096)) {
			t.Fatalf("answer %d was overwritten: ID %d, err %v", i+1, a.ID, err)
		}
	}
	// Released, they are the connection's again.
	ch := forward(f, 1, read(1, 21, 4096))
	s.waitFrames(fc, 22)
	Answer{Frame: kept[0]}.Release() // no connection: ignored
	fc.answer(block.StatusOK, 21, nil)
	get(t, ch).a.Release()
}

// TestEndEpoch: EndEpoch fails the epoch's pending requests before it
// returns, closes its connection, and refuses its later requests at once;
// the next epoch dials a new connection.
func TestEndEpoch(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	var chs []chan result
	for id := uint64(1); id <= 3; id++ {
		chs = append(chs, forward(f, 5, write(5, id, []byte("data"))))
	}
	fc := s.conn(0)
	s.waitFrames(fc, 3)

	f.EndEpoch(5)
	for i, ch := range chs {
		r, ok := now(ch)
		if !ok {
			t.Fatalf("request %d still pending after EndEpoch returned", i+1)
		}
		mustFail(t, "a pending request at the epoch's end", r, ErrEpochEnded)
		if !errors.Is(r.err, proto.ErrEpochEnded) {
			t.Errorf("err %v does not wrap proto.ErrEpochEnded", r.err)
		}
	}
	if err := s.waitEnded(fc); !errors.Is(err, io.EOF) {
		t.Errorf("the storage saw the connection end with %v, want EOF", err)
	}
	// An answer that comes late is dropped (the connection is closed, so
	// it cannot even arrive). A later request of the epoch fails at once.
	r, ok := now(forward(f, 5, write(5, 4, []byte("late"))))
	if !ok {
		t.Fatal("a request of an ended epoch is pending")
	}
	mustFail(t, "a request of an ended epoch", r, ErrEpochEnded)
	mustFail(t, "a request of an earlier epoch", get(t, forward(f, 4, write(4, 4, []byte("old")))), ErrEpochEnded)

	// Epoch 6 dials afresh.
	ch := forward(f, 6, write(6, 1, []byte("new")))
	fc6 := s.conn(1)
	s.waitFrames(fc6, 1)
	fc6.answer(block.StatusOK, 1, nil)
	if a := answerOf(t, get(t, ch)); a.ID != 1 {
		t.Errorf("answer ID %d", a.ID)
	}
	if st := f.Stats(); st.Ended != 5 || st.Dials != 2 || st.Answered != 1 || st.Pending != 0 {
		t.Errorf("stats %+v", st)
	}
	// Ending an epoch older than the current one changes nothing.
	f.EndEpoch(5)
	ch = forward(f, 6, write(6, 2, []byte("more")))
	s.waitFrames(fc6, 2)
	fc6.answer(block.StatusOK, 2, nil)
	answerOf(t, get(t, ch))
}

// TestEndEpochWhileDialing: requests wait for the dial; an epoch that
// ends meanwhile fails them, and the connection, once dialed, is closed.
func TestEndEpochWhileDialing(t *testing.T) {
	s := newFakeStorage(t, true)
	g := &gatedDial{Network: network.OS{}, release: make(chan struct{})}
	f := newForwarder(t, s.addr, g)
	chs := []chan result{forward(f, 2, read(2, 1, 8)), forward(f, 2, read(2, 2, 8))}
	if _, ok := now(chs[0]); ok {
		t.Fatal("a request completed before its connection was dialed")
	}
	f.EndEpoch(2)
	for _, ch := range chs {
		r, ok := now(ch)
		if !ok {
			t.Fatal("a request waiting for the dial is pending after EndEpoch returned")
		}
		mustFail(t, "a request waiting for the dial", r, ErrEpochEnded)
	}
	close(g.release)
	fc := s.conn(0)
	if err := s.waitEnded(fc); !errors.Is(err, io.EOF) {
		t.Errorf("the connection dialed for an ended epoch: %v, want closed", err)
	}
	if len(fc.frames) != 0 {
		t.Errorf("the storage received %d frames of an ended epoch", len(fc.frames))
	}
}

// gatedDial holds every dial until release is closed.
type gatedDial struct {
	network.Network
	release chan struct{}
}

func (g *gatedDial) Dial(addr string, timeout time.Duration, done func(network.Conn, error)) {
	go func() {
		<-g.release
		g.Network.Dial(addr, timeout, done)
	}()
}

// TestNewerEpoch: a request of a newer epoch ends the older one: its
// pending requests fail, its connection closes, and the newer epoch's
// requests go over a new connection.
func TestNewerEpoch(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	old := forward(f, 1, write(1, 1, []byte("one")))
	fc1 := s.conn(0)
	s.waitFrames(fc1, 1)

	ch := forward(f, 2, write(2, 1, []byte("two"))) // the same ID: another epoch
	mustFail(t, "the older epoch's pending request", get(t, old), ErrEpochEnded)
	fc2 := s.conn(1)
	if frames := s.waitFrames(fc2, 1); !bytes.Equal(frames[0], write(2, 1, []byte("two"))) {
		t.Errorf("the new connection carried %x", frames[0])
	}
	if err := s.waitEnded(fc1); !errors.Is(err, io.EOF) {
		t.Errorf("the older epoch's connection: %v, want closed", err)
	}
	fc2.answer(block.StatusOK, 1, nil)
	answerOf(t, get(t, ch))
	mustFail(t, "a late request of the older epoch", get(t, forward(f, 1, write(1, 2, []byte("late")))), ErrEpochEnded)
	if n := s.numConns(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestStorageLost: a connection the storage closes fails the pending
// requests with ErrStorageLost, and every later request of the epoch at
// once, without a new dial; the next epoch dials afresh.
func TestStorageLost(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	chs := []chan result{forward(f, 1, read(1, 1, 8)), forward(f, 1, read(1, 2, 8))}
	fc := s.conn(0)
	s.waitFrames(fc, 2)
	fc.c.Close()
	for _, ch := range chs {
		mustFail(t, "a pending request on a lost connection", get(t, ch), ErrStorageLost)
	}
	r, ok := now(forward(f, 1, read(1, 3, 8)))
	if !ok {
		t.Fatal("a request of an epoch whose connection was lost is pending")
	}
	mustFail(t, "a later request of the epoch", r, ErrStorageLost)
	if st := f.Stats(); st.Dials != 1 || st.Lost != 3 {
		t.Errorf("stats %+v: want 1 dial and 3 lost", st)
	}

	ch := forward(f, 2, read(2, 1, 8))
	fc2 := s.conn(1)
	s.waitFrames(fc2, 1)
	fc2.answer(block.StatusOK, 1, nil)
	answerOf(t, get(t, ch))
}

// TestStorageUnreachable: a failed dial fails the epoch's requests with
// ErrStorageLost.
func TestStorageUnreachable(t *testing.T) {
	f := newForwarder(t, "unix://"+filepath.Join(t.TempDir(), "nobody.sock"), nil)
	r := get(t, forward(f, 1, read(1, 1, 8)))
	mustFail(t, "a request to an unreachable storage", r, ErrStorageLost)
	if !errors.Is(r.err, network.ErrUnreachable) {
		t.Errorf("err %v does not say unreachable", r.err)
	}
	mustFail(t, "a later request of the epoch", get(t, forward(f, 1, read(1, 2, 8))), ErrStorageLost)
	if st := f.Stats(); st.Dials != 1 {
		t.Errorf("%d dials, want 1", st.Dials)
	}
}

// TestMalformedAnswer: an answer that is not one breaks the connection.
func TestMalformedAnswer(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	ch := forward(f, 1, read(1, 1, 8))
	fc := s.conn(0)
	s.waitFrames(fc, 1)
	fc.c.Send([]byte("garbage"), nil)
	mustFail(t, "a request answered with garbage", get(t, ch), ErrStorageLost)
	s.waitEnded(fc)
}

// TestUnmatchedAnswer: an answer to no pending request is counted and
// dropped; the connection goes on.
func TestUnmatchedAnswer(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	ch := forward(f, 1, read(1, 1, 8))
	fc := s.conn(0)
	s.waitFrames(fc, 1)
	fc.answer(block.StatusOK, 99, nil)
	fc.answer(block.StatusOK, 1, nil)
	if a := answerOf(t, get(t, ch)); a.ID != 1 {
		t.Errorf("answer ID %d", a.ID)
	}
	if st := f.Stats(); st.Unmatched != 1 {
		t.Errorf("%d unmatched answers, want 1", st.Unmatched)
	}
}

// TestMalformedRequest: a request that is not a well-formed block request
// fails with ErrInvalid and is never forwarded (nothing is even dialed).
func TestMalformedRequest(t *testing.T) {
	s := newFakeStorage(t, true)
	f := newForwarder(t, s.addr, nil)
	good := write(1, 1, []byte("data"))
	badVersion := bytes.Clone(good)
	badVersion[0] = 9
	badOp := bytes.Clone(good)
	badOp[1] = 77
	for _, tt := range []struct {
		name string
		req  []byte
		want error
	}{
		{"empty", nil, block.ErrShort},
		{"truncated header", good[:10], block.ErrShort},
		{"payload short", good[:len(good)-1], block.ErrShort},
		{"payload long", append(bytes.Clone(good), 0), block.ErrMalformed},
		{"version", badVersion, block.ErrVersion},
		{"op", badOp, block.ErrMalformed},
		{"too long", block.AppendRequest(nil, block.Request{Op: block.OpRead, Length: block.MaxLength + 1, ID: 1, Token: testToken(1)}), block.ErrTooLarge},
	} {
		r, ok := now(forward(f, 1, tt.req))
		if !ok {
			t.Fatalf("%s: pending", tt.name)
		}
		if !errors.Is(r.err, ErrInvalid) || !errors.Is(r.err, tt.want) {
			t.Errorf("%s: err = %v, want ErrInvalid and %v", tt.name, r.err, tt.want)
		}
	}
	if st := f.Stats(); st.Invalid != 7 || st.Forwarded != 0 || st.Dials != 0 {
		t.Errorf("stats %+v: want 7 invalid, nothing forwarded or dialed", st)
	}
	if n := s.numConns(); n != 0 {
		t.Errorf("the storage was dialed %d times", n)
	}
}

// TestDuplicateID: a second request with the ID of one in flight fails
// with ErrInvalid and is not forwarded; once the first is answered, the ID
// may be used again.
func TestDuplicateID(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	first := forward(f, 1, write(1, 7, []byte("first")))
	dup, ok := now(forward(f, 1, write(1, 7, []byte("second"))))
	if !ok {
		t.Fatal("the duplicate is pending")
	}
	if !errors.Is(dup.err, ErrInvalid) || !strings.Contains(dup.err.Error(), "already in flight") {
		t.Errorf("duplicate: err = %v, want ErrInvalid saying already in flight", dup.err)
	}
	fc := s.conn(0)
	s.waitFrames(fc, 1)
	fc.answer(block.StatusOK, 7, []byte("to the first"))
	if a := answerOf(t, get(t, first)); string(a.Data) != "to the first" {
		t.Errorf("the first got %q", a.Data)
	}
	again := forward(f, 1, write(1, 7, []byte("again")))
	frames := s.waitFrames(fc, 2)
	if !bytes.Equal(frames[1], write(1, 7, []byte("again"))) || len(frames) != 2 {
		t.Errorf("the storage received %d frames, the second %x", len(frames), frames[1])
	}
	fc.answer(block.StatusOK, 7, nil)
	answerOf(t, get(t, again))
}

// TestSendWindow: more than network.SendWindow requests at once never
// have more than SendWindow frames outstanding on the connection: the
// rest wait, and go as earlier sends complete.
func TestSendWindow(t *testing.T) {
	s := newFakeStorage(t, true)
	g := &gatedNet{Network: network.OS{}}
	f := newForwarder(t, s.addr, g)
	const n = 3 * network.SendWindow
	first := forward(f, 1, read(1, 0, 8))
	answerOf(t, get(t, first)) // connected
	var chs []chan result
	for id := uint64(1); id <= n; id++ {
		chs = append(chs, forward(f, 1, read(1, id, 8)))
	}
	if st := f.Stats(); st.Queued < n-network.SendWindow {
		t.Errorf("%d requests waited for the window, want at least %d", st.Queued, n-network.SendWindow)
	}
	g.release()
	for i, ch := range chs {
		if a := answerOf(t, get(t, ch)); a.ID != uint64(i+1) {
			t.Errorf("request %d got the answer to %d", i+1, a.ID)
		}
	}
	if maxOut, refused := g.stats(); maxOut > network.SendWindow || refused != 0 {
		t.Errorf("%d frames outstanding at once, %d refused busy; want at most %d and none", maxOut, refused, network.SendWindow)
	}
	if st := f.Stats(); st.Answered != n+1 || st.Pending != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestAnswerBeforeSent: an answer to a request that waits for room in the
// send window (the storage cannot have received it) is not taken for its
// answer: it is dropped as unmatched, and the request gets the answer that
// comes once it was sent.
func TestAnswerBeforeSent(t *testing.T) {
	s := newFakeStorage(t, false)
	g := &gatedNet{Network: network.OS{}}
	f := newForwarder(t, s.addr, g)
	const last = network.SendWindow + 1
	var chs []chan result
	for id := uint64(1); id <= last; id++ {
		chs = append(chs, forward(f, 1, read(1, id, 8)))
	}
	fc := s.conn(0)
	s.waitFrames(fc, network.SendWindow)
	fc.answer(block.StatusOK, last, []byte("bogus"))
	for f.Stats().Unmatched == 0 {
		if r, ok := now(chs[last-1]); ok {
			t.Fatalf("a request not sent yet took an answer: %x, %v", r.a.Frame, r.err)
		}
		time.Sleep(time.Millisecond)
	}
	g.release()
	s.waitFrames(fc, last)
	for id := uint64(1); id <= last; id++ {
		fc.answer(block.StatusOK, id, []byte("real"))
	}
	for i, ch := range chs {
		if a := answerOf(t, get(t, ch)); a.ID != uint64(i+1) || string(a.Data) != "real" {
			t.Errorf("request %d got the answer to %d: %q", i+1, a.ID, a.Data)
		}
	}
}

// TestBusy: a frame the connection refuses with network.ErrBusy is sent
// again, not failed.
func TestBusy(t *testing.T) {
	s := newFakeStorage(t, true)
	g := &gatedNet{Network: network.OS{}, open: true, busy: 3}
	f := newForwarder(t, s.addr, g)
	var chs []chan result
	for id := uint64(1); id <= 5; id++ {
		chs = append(chs, forward(f, 1, read(1, id, 8)))
	}
	for i, ch := range chs {
		if a := answerOf(t, get(t, ch)); a.ID != uint64(i+1) {
			t.Errorf("request %d got the answer to %d", i+1, a.ID)
		}
	}
	if _, refused := g.stats(); refused != 3 {
		t.Errorf("%d frames refused busy, want 3", refused)
	}
	fc := s.conn(0)
	if frames := s.waitFrames(fc, 5); len(frames) != 5 {
		t.Errorf("the storage received %d frames, want 5 (each once)", len(frames))
	}
}

// TestBusyAnsweredBeforeSent: a send callback that comes after the
// storage answered its request still tells the forwarder that the
// connection has room again: a request refused busy meanwhile is sent.
func TestBusyAnsweredBeforeSent(t *testing.T) {
	s := newFakeStorage(t, true)
	g := &gatedNet{Network: network.OS{}}
	f := newForwarder(t, s.addr, g)
	first := forward(f, 1, read(1, 1, 8))
	answerOf(t, get(t, first)) // answered; its send callback is held
	g.mu.Lock()
	g.busy = 1
	g.mu.Unlock()
	second := forward(f, 1, read(1, 2, 8)) // refused busy while the first's callback is held
	for f.Stats().Queued == 0 {
		time.Sleep(time.Millisecond)
	}
	g.release() // the first's callback: room again
	if a := answerOf(t, get(t, second)); a.ID != 2 {
		t.Errorf("the second got the answer to %d", a.ID)
	}
}

// TestClose: Close fails what is pending and refuses what comes after.
func TestClose(t *testing.T) {
	s := newFakeStorage(t, false)
	f := newForwarder(t, s.addr, nil)
	ch := forward(f, 1, read(1, 1, 8))
	fc := s.conn(0)
	s.waitFrames(fc, 1)
	f.Close()
	r, ok := now(ch)
	if !ok {
		t.Fatal("pending after Close")
	}
	mustFail(t, "a pending request at Close", r, ErrClosed)
	mustFail(t, "a request after Close", get(t, forward(f, 2, read(2, 1, 8))), ErrClosed)
	s.waitEnded(fc)
	f.Close()
}

// TestConfig: configuration errors wrap proto.ErrConfig.
func TestConfig(t *testing.T) {
	for _, addr := range []string{"", "storage:1", "tcp://", "tcp://host", "udp://h:1", "unix://", "unix://host/path", "http://h:1"} {
		_, err := New(Config{Storage: addr, Network: network.OS{}, Clock: clock.System()})
		if !errors.Is(err, proto.ErrConfig) {
			t.Errorf("storage address %q: err = %v, want ErrConfig", addr, err)
		}
	}
	for _, addr := range []string{"tcp://127.0.0.1:1", "tcp://[::1]:7", "unix:///tmp/s.sock"} {
		if err := CheckAddress(addr); err != nil {
			t.Errorf("storage address %q: %v", addr, err)
		}
	}
	if _, err := New(Config{Storage: "tcp://h:1"}); !errors.Is(err, proto.ErrConfig) {
		t.Errorf("no network and clock: err = %v, want ErrConfig", err)
	}
}

// TestMetrics: the metrics count what Stats counts.
func TestMetrics(t *testing.T) {
	s := newFakeStorage(t, true)
	reg := prometheus.NewPedanticRegistry()
	f, err := New(Config{Storage: s.addr, Network: network.OS{}, Clock: clock.System(), Domain: "driver-a", Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	answerOf(t, get(t, forward(f, 1, read(1, 1, 8))))
	get(t, forward(f, 1, []byte("junk")))
	f.EndEpoch(1)
	get(t, forward(f, 1, read(1, 2, 8)))
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() != "domain" {
					name += "/" + l.GetValue()
				} else if l.GetValue() != "driver-a" {
					t.Errorf("%s: domain label %q", mf.GetName(), l.GetValue())
				}
			}
			switch {
			case m.GetCounter() != nil:
				got[name] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[name] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for name, want := range map[string]float64{
		"idc_forwarder_forwarded_total": 1, "idc_forwarder_answered_total": 1, "idc_forwarder_dials_total": 1,
		"idc_forwarder_failed_total/invalid": 1, "idc_forwarder_failed_total/ended": 1,
		"idc_forwarder_failed_total/lost": 0, "idc_forwarder_failed_total/closed": 0,
		"idc_forwarder_request_seconds": 1,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}

// TestForwardThenRelease: ForwardThen's release comes exactly once per
// request, only once the request has its outcome and its connection no
// longer writes it — after the send callback of a request answered
// first, after a refusal with network.ErrBusy and the sending again — and
// at once for a request that fails before it is taken.
func TestForwardThenRelease(t *testing.T) {
	s := newFakeStorage(t, true)
	g := &gatedNet{Network: network.OS{}}
	f := newForwarder(t, s.addr, g)
	var mu sync.Mutex
	released := map[uint64]int{}
	forwardThen := func(epoch uint64, id uint64, req []byte) chan result {
		ch := make(chan result, 1)
		f.ForwardThen(epoch, req, func(a Answer, err error) { ch <- result{a, err} }, func() {
			mu.Lock()
			released[id]++
			mu.Unlock()
		})
		return ch
	}
	count := func(id uint64) int {
		mu.Lock()
		defer mu.Unlock()
		return released[id]
	}
	// Both answered while their send callbacks are held.
	chs := []chan result{forwardThen(1, 1, read(1, 1, 8)), forwardThen(1, 2, read(1, 2, 8))}
	for i, ch := range chs {
		if a := answerOf(t, get(t, ch)); a.ID != uint64(i+1) {
			t.Fatalf("request %d got the answer to %d", i+1, a.ID)
		}
	}
	time.Sleep(20 * time.Millisecond)
	for id := uint64(1); id <= 2; id++ {
		if n := count(id); n != 0 {
			t.Fatalf("request %d released %d times while its send callback is held", id, n)
		}
	}
	g.release()
	waitRelease := func(id uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for count(id) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("request %d never released", id)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitRelease(1)
	waitRelease(2)
	// Refused busy, then sent again.
	g.mu.Lock()
	g.busy = 1
	g.mu.Unlock()
	answerOf(t, get(t, forwardThen(1, 6, read(1, 6, 8))))
	waitRelease(6)
	if _, refused := g.stats(); refused != 1 {
		t.Fatalf("%d frames refused busy, want 1", refused)
	}
	// Invalid: failed and released at once.
	mustFail(t, "a malformed request", get(t, forwardThen(1, 3, []byte("junk"))), ErrInvalid)
	waitRelease(3)
	// Ended with its epoch: released once its send completed.
	s.mu.Lock()
	s.auto = false
	s.mu.Unlock()
	ch := forwardThen(1, 4, read(1, 4, 8))
	s.waitFrames(s.conn(0), 4)
	f.EndEpoch(1)
	mustFail(t, "a pending request at the epoch's end", get(t, ch), ErrEpochEnded)
	waitRelease(4)
	// Of an ended epoch: failed and released at once.
	mustFail(t, "a request of an ended epoch", get(t, forwardThen(1, 5, read(1, 5, 8))), ErrEpochEnded)
	waitRelease(5)
	time.Sleep(20 * time.Millisecond)
	for id := uint64(1); id <= 6; id++ {
		if n := count(id); n != 1 {
			t.Errorf("request %d released %d times, want once", id, n)
		}
	}
}
