package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idc-dev/idc/clock/clocktest"
)

// fakeStream is a KeepAliveStream the test answers by hand.
type fakeStream struct {
	h      StreamHandler
	sent   []LeaseID
	closed bool
}

func (s *fakeStream) Send(id LeaseID) { s.sent = append(s.sent, id) }
func (s *fakeStream) Close()          { s.closed = true }

// renewerTest is a Renewer on fake streams and a manual clock.
type renewerTest struct {
	t       *testing.T
	clk     *clocktest.Manual
	r       *Renewer
	streams []*fakeStream
}

func newRenewerTest(t *testing.T) *renewerTest {
	rt := &renewerTest{t: t, clk: &clocktest.Manual{}}
	rt.r = NewRenewer(func(h StreamHandler) KeepAliveStream {
		s := &fakeStream{h: h}
		rt.streams = append(rt.streams, s)
		return s
	}, rt.clk)
	return rt
}

// outcome is what a renewal's callback received.
type outcome struct {
	called bool
	ttl    time.Duration
	err    error
}

func (rt *renewerTest) renew(id LeaseID, timeout time.Duration) *outcome {
	o := &outcome{}
	rt.r.KeepAlive(id, timeout, func(ttl time.Duration, err error) {
		if o.called {
			rt.t.Fatalf("lease %x: callback called twice", int64(id))
		}
		*o = outcome{true, ttl, err}
	})
	if o.called {
		rt.t.Fatalf("lease %x: callback called within KeepAlive", int64(id))
	}
	return o
}

func (rt *renewerTest) stream(i int) *fakeStream {
	rt.t.Helper()
	if i >= len(rt.streams) {
		rt.t.Fatalf("stream %d not opened (%d streams)", i, len(rt.streams))
	}
	return rt.streams[i]
}

// TestRenewerPairsAnswersInOrder: renewals of many leases share one
// stream; each answer goes to the oldest waiting renewal of its lease,
// and a TTL of 0 is ErrLeaseNotFound.
func TestRenewerPairsAnswersInOrder(t *testing.T) {
	rt := newRenewerTest(t)
	a1 := rt.renew(1, 4*time.Second)
	b := rt.renew(2, 4*time.Second)
	a2 := rt.renew(1, 4*time.Second)
	gone := rt.renew(3, 4*time.Second)
	s := rt.stream(0)
	if len(rt.streams) != 1 || len(s.sent) != 4 {
		t.Fatalf("%d streams, %d requests sent; want 1 stream carrying 4", len(rt.streams), len(s.sent))
	}
	s.h.Answer(2, 5*time.Second)
	s.h.Answer(1, 5*time.Second)
	if !b.called || b.err != nil || b.ttl != 5*time.Second || !a1.called || a2.called {
		t.Fatalf("after answers for 2 and 1: b %+v, a1 %+v, a2 %+v", b, a1, a2)
	}
	s.h.Answer(1, 4*time.Second)
	s.h.Answer(3, 0)
	if !a2.called || a2.ttl != 4*time.Second || !errors.Is(gone.err, ErrLeaseNotFound) {
		t.Fatalf("a2 %+v, gone %+v", a2, gone)
	}
	if rt.clk.Pending() != 0 {
		t.Fatalf("%d timers left after every renewal was answered", rt.clk.Pending())
	}
}

// TestRenewerLateAnswerIsNotTheNext: a renewal that timed out keeps its
// place, so the answer that comes late is its own, not that of the
// renewal sent after it (whose caller would count validity from a later
// send than the store renewed at). The variant forget-timed-out-renewal
// breaks it (TestForgetTimedOutRenewalIsCaught).
func TestRenewerLateAnswerIsNotTheNext(t *testing.T) {
	if err := lateAnswer(newRenewerTest(t)); err != nil {
		t.Fatal(err)
	}
}

// lateAnswer runs a renewal that times out on a live stream, then the
// next renewal of the lease, then the first one's late answer, and says
// what went wrong.
func lateAnswer(rt *renewerTest) error {
	first := rt.renew(7, time.Second)
	s := rt.stream(0)
	// Another lease's answer keeps the stream alive past the stall check.
	other := rt.renew(8, 10*time.Second)
	rt.clk.Advance(100 * time.Millisecond)
	s.h.Answer(8, 5*time.Second)
	rt.clk.Advance(time.Second)
	if !first.called || !errors.Is(first.err, ErrUnavailable) || !other.called {
		return fmt.Errorf("first %+v, want timed out (ErrUnavailable); other %+v", first, other)
	}
	second := rt.renew(7, 4*time.Second)
	s.h.Answer(7, 5*time.Second) // the first renewal's, late
	if second.called {
		return fmt.Errorf("the late answer to the first renewal was taken for the second's: %+v", second)
	}
	s.h.Answer(7, 5*time.Second)
	if !second.called || second.err != nil {
		return fmt.Errorf("second %+v, want answered", second)
	}
	if len(rt.streams) != 1 {
		return fmt.Errorf("%d streams opened, want 1", len(rt.streams))
	}
	return nil
}

// TestRenewerReplacesSilentStream: a stream that answers nothing for a
// quarter of a waiting renewal's time is taken for dead: a new stream
// carries every waiting renewal again, the old one is closed and what it
// still says is ignored. A stream that answers others, however slowly, is
// kept.
func TestRenewerReplacesSilentStream(t *testing.T) {
	for _, tc := range []struct {
		name      string
		alive     bool // the stream answers another lease meanwhile
		wantFresh bool
	}{
		{"silent", false, true},
		{"slow but answering", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newRenewerTest(t)
			x := rt.renew(1, 4*time.Second)
			y := rt.renew(2, 8*time.Second)
			z := rt.renew(1, 4*time.Second)
			s := rt.stream(0)
			if tc.alive {
				rt.renew(3, 8*time.Second)
				rt.clk.Advance(500 * time.Millisecond)
				s.h.Answer(3, time.Second)
			}
			rt.clk.Advance(time.Second) // a quarter of x's 4 s
			opened, replaced := rt.r.Streams()
			if tc.wantFresh != (replaced == 1) || opened != len(rt.streams) {
				t.Fatalf("opened %d, replaced %d; want a replacement: %v", opened, replaced, tc.wantFresh)
			}
			if !tc.wantFresh {
				s.h.Answer(1, time.Second)
				if !x.called || z.called {
					t.Fatalf("x %+v, z %+v", x, z)
				}
				return
			}
			fresh := rt.stream(1)
			count := map[LeaseID]int{}
			for _, id := range fresh.sent {
				count[id]++
			}
			if !s.closed || len(fresh.sent) != 3 || count[1] != 2 || count[2] != 1 {
				t.Fatalf("old closed %v; fresh stream sent %v, want the 3 waiting renewals", s.closed, fresh.sent)
			}
			s.h.Answer(1, time.Second) // the dead stream's, ignored
			if x.called {
				t.Fatalf("an answer of the replaced stream was taken: %+v", x)
			}
			fresh.h.Answer(2, 5*time.Second)
			fresh.h.Answer(1, 5*time.Second)
			fresh.h.Answer(1, 5*time.Second)
			for i, o := range []*outcome{x, y, z} {
				if !o.called || o.err != nil || o.ttl != 5*time.Second {
					t.Fatalf("renewal %d: %+v", i, o)
				}
			}
		})
	}
}

// TestRenewerStreamEnds: a stream that ends fails what waits on it with
// its error; the next renewal opens a new stream. An answer for a request
// the stream never carried ends it too.
func TestRenewerStreamEnds(t *testing.T) {
	rt := newRenewerTest(t)
	a := rt.renew(1, 4*time.Second)
	rt.stream(0).h.End(ErrNoLeader)
	if !a.called || !errors.Is(a.err, ErrNoLeader) || !errors.Is(a.err, ErrUnavailable) {
		t.Fatalf("a %+v, want ErrNoLeader", a)
	}
	b := rt.renew(1, 4*time.Second)
	s := rt.stream(1)
	s.h.Answer(9, time.Second)
	if !b.called || !errors.Is(b.err, ErrUnavailable) || !s.closed {
		t.Fatalf("after an unpaired answer: b %+v, stream closed %v", b, s.closed)
	}
	c := rt.renew(1, 4*time.Second)
	rt.stream(2).h.Answer(1, time.Second)
	if !c.called || c.err != nil {
		t.Fatalf("c %+v", c)
	}
}

// TestRenewerClose: Close fails what waits with ErrClosed, and renewals
// after it fail the same way, later, never within the call.
func TestRenewerClose(t *testing.T) {
	rt := newRenewerTest(t)
	a := rt.renew(1, 4*time.Second)
	rt.r.Close()
	if !a.called || !errors.Is(a.err, ErrClosed) || !rt.stream(0).closed {
		t.Fatalf("a %+v, stream closed %v", a, rt.stream(0).closed)
	}
	b := rt.renew(1, 4*time.Second)
	rt.clk.Advance(0)
	if !b.called || !errors.Is(b.err, ErrClosed) || !errors.Is(b.err, ErrUnavailable) {
		t.Fatalf("b %+v", b)
	}
}
