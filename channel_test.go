package idc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
)

// echo answers every call with "re:" and the request; a request "fail"
// fails.
var echo = idc.HandlerFunc(func(ctx context.Context, req idc.Request) ([]byte, error) {
	if string(req.Data) == "fail" {
		return nil, errors.New("asked to fail")
	}
	return append([]byte("re:"+req.From+":"), req.Data...), nil
})

func withHandler(h idc.Handler) func(*idc.Config) { return func(c *idc.Config) { c.Handler = h } }

// TestChannels: members of an epoch send each other messages and call
// each other over real sockets (TCP and unix), in order, and the
// addresses they accept channels at are in the epoch record.
func TestChannels(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{})
	a := e.join("a", withHandler(echo))
	b := e.join("b", withHandler(echo), func(c *idc.Config) { c.Listen = "unix://" + t.TempDir() + "/b.sock" })
	c := e.join("c", withHandler(echo))
	rec := e.connected(testenv.Mark{}, 10*time.Second, "a", "b", "c")
	for _, m := range rec.Members {
		if m.Addr == "" {
			t.Fatalf("%s has no channel address in the epoch record", m.ID)
		}
	}
	if m, _ := proto.Find(rec.Members, "b"); m.Addr != b.Addr() {
		t.Fatalf("b's address in the record is %q, its own %q", m.Addr, b.Addr())
	}
	epA := current(t, a, 5*time.Second, "a", "b", "c")
	epB := current(t, b, 5*time.Second, "a", "b", "c")
	epC := current(t, c, 5*time.Second, "a", "b", "c")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Messages, in order, both ways and both dial directions.
	const n = 200
	go func() {
		for i := range n {
			if err := epA.Send(ctx, "b", fmt.Appendf(nil, "a%d", i)); err != nil {
				t.Errorf("a sends: %v", err)
				return
			}
			if err := epC.Send(ctx, "b", fmt.Appendf(nil, "c%d", i)); err != nil {
				t.Errorf("c sends: %v", err)
				return
			}
		}
	}()
	next := map[string]int{}
	for range 2 * n {
		msg, err := epB.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("%s%d", msg.From, next[msg.From]); string(msg.Data) != want || msg.Epoch != epB.Number() {
			t.Fatalf("b received %q from %s in epoch %d, want %q in %d", msg.Data, msg.From, msg.Epoch, want, epB.Number())
		}
		next[msg.From]++
	}

	// Calls.
	for _, tc := range []struct {
		from *idc.Epoch
		to   string
	}{{epA, "b"}, {epB, "a"}, {epC, "a"}, {epA, "c"}} {
		resp, err := tc.from.Call(ctx, tc.to, []byte("hello"))
		if want := "re:" + tc.from.Members()[0].ID; err != nil || !bytes.HasPrefix(resp, []byte("re:")) {
			t.Fatalf("call to %s: %q, %v (want %s…)", tc.to, resp, err, want)
		}
	}
	if _, err := epA.Call(ctx, "b", []byte("fail")); !errors.Is(err, idc.ErrRemote) || !bytes.Contains([]byte(err.Error()), []byte("asked to fail")) {
		t.Fatalf("a failing handler: %v, want ErrRemote with its text", err)
	}
	if _, err := epA.Call(ctx, "nobody", nil); !errors.Is(err, idc.ErrNotMember) {
		t.Fatalf("call to a non-member: %v, want ErrNotMember", err)
	}
	if err := epA.Send(ctx, "b", make([]byte, idc.DefaultMaxMessage+1)); !errors.Is(err, idc.ErrMessageTooLarge) {
		t.Fatalf("oversized message: %v, want ErrMessageTooLarge", err)
	}
}

// TestG3_HandlerHoldsConnect: a handler still running at the receiver
// holds the next epoch's connect back until it returns, even one that
// ignores its context; the caller's call returns ErrEpochEnded at
// disconnect.
func TestG3_HandlerHoldsConnect(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{QuiesceTimeout: time.Minute})
	started, release := make(chan struct{}), make(chan struct{})
	ctxEnded := make(chan struct{})
	slow := idc.HandlerFunc(func(ctx context.Context, req idc.Request) ([]byte, error) {
		close(started)
		<-ctx.Done()
		close(ctxEnded)
		<-release // careless: goes on after its context ended
		return []byte("late"), nil
	})
	a := e.join("a")
	e.join("b", withHandler(slow))
	e.connected(testenv.Mark{}, 10*time.Second, "a", "b")
	ep := current(t, a, 5*time.Second, "a", "b")
	callErr := make(chan error, 1)
	go func() {
		_, err := ep.Call(context.Background(), "b", []byte("x"))
		callErr <- err
	}()
	<-started
	mark := e.mark()
	e.join("c") // trigger
	select {
	case err := <-callErr:
		if !errors.Is(err, idc.ErrEpochEnded) {
			t.Fatalf("the call outstanding at disconnect returned %v, want ErrEpochEnded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not return at disconnect")
	}
	select {
	case <-ctxEnded:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's context did not end at disconnect")
	}
	e.h.WaitForAck(t, group, mark, 10*time.Second, "of a", func(ack proto.Ack) bool { return ack.ID == "a" })
	time.Sleep(300 * time.Millisecond) // give a broken coordinator time to connect
	end := e.mark()
	close(release)
	final := e.connected(mark, 10*time.Second, "a", "b", "c")
	if !end.Precedes(final.Rev) {
		t.Fatalf("epoch %d connected before b's handler returned", final.Number)
	}
}

// asyncEcho is an AsyncHandler that answers each call from a goroutine
// of its own once the call's request is released; "fail" fails, "hold"
// waits for release to close.
type asyncEcho struct {
	release chan struct{}
	started chan struct{}
}

func (h *asyncEcho) ServeCall(context.Context, idc.Request) ([]byte, error) {
	panic("ServeCall called on an AsyncHandler")
}

func (h *asyncEcho) StartCall(ctx context.Context, c idc.Call) {
	resp := append([]byte("re:"+c.From+":"), c.Data...)
	hold := string(c.Data) == "hold"
	fail := string(c.Data) == "fail"
	c.Release() // copied into resp: the request's bytes go back
	go func() {
		if hold {
			close(h.started)
			<-h.release
		}
		if fail {
			c.Reply(nil, errors.New("asked to fail"))
			return
		}
		c.Reply(resp, nil)
		clear(resp) // Reply copied it
	}()
}

// TestAsyncHandler: an AsyncHandler answers calls from any goroutine,
// responses and failures reach the callers as a Handler's do (Call and
// GoTransient), and a call it has not answered holds the next epoch's
// connect back, as a running handler does.
func TestAsyncHandler(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{QuiesceTimeout: time.Minute})
	h := &asyncEcho{release: make(chan struct{}), started: make(chan struct{})}
	a := e.join("a")
	e.join("b", withHandler(h))
	e.connected(testenv.Mark{}, 10*time.Second, "a", "b")
	ep := current(t, a, 5*time.Second, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 50 {
		req := fmt.Appendf(nil, "hello %d", i)
		resp, err := ep.Call(ctx, "b", req)
		if err != nil || string(resp) != "re:a:"+string(req) {
			t.Fatalf("call %d: %q, %v", i, resp, err)
		}
		type result struct {
			resp string
			err  error
		}
		got := make(chan result, 1)
		ep.GoTransient("b", req, func(resp []byte, err error) { got <- result{string(resp), err} }) // copied in done
		if r := <-got; r.err != nil || r.resp != "re:a:"+string(req) {
			t.Fatalf("GoTransient %d: %q, %v", i, r.resp, r.err)
		}
	}
	if _, err := ep.Call(ctx, "b", []byte("fail")); !errors.Is(err, idc.ErrRemote) || !bytes.Contains([]byte(err.Error()), []byte("asked to fail")) {
		t.Fatalf("a failing call: %v, want ErrRemote with its text", err)
	}

	callErr := make(chan error, 1)
	go func() {
		_, err := ep.Call(context.Background(), "b", []byte("hold"))
		callErr <- err
	}()
	<-h.started
	mark := e.mark()
	e.join("c") // trigger
	select {
	case err := <-callErr:
		if !errors.Is(err, idc.ErrEpochEnded) {
			t.Fatalf("the call outstanding at disconnect returned %v, want ErrEpochEnded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not return at disconnect")
	}
	e.h.WaitForAck(t, group, mark, 10*time.Second, "of a", func(ack proto.Ack) bool { return ack.ID == "a" })
	time.Sleep(300 * time.Millisecond) // give a broken coordinator time to connect
	end := e.mark()
	close(h.release)
	final := e.connected(mark, 10*time.Second, "a", "b", "c")
	if !end.Precedes(final.Rev) {
		t.Fatalf("epoch %d connected before b's call was answered", final.Number)
	}
}
