package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idc-dev/idc/clock/clocktest"
)

// fakeInner is a Store whose answers the test gives by hand.
type fakeInner struct {
	txns    []*fakeTxn
	watches []*fakeWatch
}

type fakeTxn struct {
	t       Txn
	timeout time.Duration
	done    func(TxnResponse, error)
}

type fakeWatch struct {
	r         WatchRequest
	fn        func(WatchResponse)
	cancelled bool
	progress  int
}

func (w *fakeWatch) RequestProgress() { w.progress++ }
func (w *fakeWatch) Cancel()          { w.cancelled = true }

func (f *fakeInner) Grant(time.Duration, time.Duration, func(Lease, error)) {}
func (f *fakeInner) KeepAlive(LeaseID, time.Duration, func(time.Duration, error)) {
}
func (f *fakeInner) Revoke(LeaseID, time.Duration, func(error)) {}
func (f *fakeInner) Txn(t Txn, timeout time.Duration, done func(TxnResponse, error)) {
	f.txns = append(f.txns, &fakeTxn{t, timeout, done})
}
func (f *fakeInner) Watch(r WatchRequest, fn func(WatchResponse)) Watch {
	w := &fakeWatch{r: r, fn: fn}
	f.watches = append(f.watches, w)
	return w
}

type txnOutcome struct {
	called bool
	resp   TxnResponse
	err    error
}

func put(s *Shared, key string, lease LeaseID) *txnOutcome {
	o := &txnOutcome{}
	s.Txn(Txn{Then: []Op{Put(key, []byte("v"), lease)}}, time.Second, func(r TxnResponse, err error) { *o = txnOutcome{true, r, err} })
	return o
}

// TestSharedBatchesPuts: puts that arrive while one is in flight go out
// together in one transaction; each caller gets the answer. Other
// transactions pass through alone.
func TestSharedBatchesPuts(t *testing.T) {
	in := &fakeInner{}
	s := NewShared(in, &clocktest.Manual{}, 0)
	a := put(s, "a", 1)
	b := put(s, "b", 2)
	c := put(s, "c", 3)
	s.Txn(Txn{If: []Cmp{{Key: "x"}}, Then: []Op{Put("x", nil, 0)}}, time.Second, func(TxnResponse, error) {})
	if len(in.txns) != 2 || len(in.txns[0].t.Then) != 1 || len(in.txns[1].t.If) != 1 {
		t.Fatalf("inner got %d transactions; want the first put alone and the compare passed through", len(in.txns))
	}
	in.txns[0].done(TxnResponse{Succeeded: true, Revision: 7}, nil)
	if !a.called || a.resp.Revision != 7 || b.called {
		t.Fatalf("a %+v b %+v", a, b)
	}
	if len(in.txns) != 3 || len(in.txns[2].t.Then) != 2 || in.txns[2].t.Then[0].Key != "b" || in.txns[2].t.Then[1].Lease != 3 {
		t.Fatalf("the puts that gathered were not sent as one: %+v", in.txns[len(in.txns)-1].t)
	}
	in.txns[2].done(TxnResponse{Succeeded: true, Revision: 9}, nil)
	for i, o := range []*txnOutcome{b, c} {
		if !o.called || o.err != nil || !o.resp.Succeeded || o.resp.Revision != 9 {
			t.Fatalf("put %d: %+v", i, o)
		}
	}
}

// TestSharedBatchFailures: a batch refused for one lease, or for its size,
// is sent again put by put, each getting its own outcome; a batch that
// got no answer fails every put in it; batches hold at most maxOps puts.
func TestSharedBatchFailures(t *testing.T) {
	for _, tc := range []struct {
		err        error
		splits     bool
		wantFailed error
	}{
		{fmt.Errorf("%w (lease 2)", ErrLeaseNotFound), true, nil},
		{ErrTooManyOps, true, nil},
		{ErrTooLarge, true, nil},
		{ErrUnavailable, false, ErrUnavailable},
	} {
		t.Run(fmt.Sprint(tc.err), func(t *testing.T) {
			in := &fakeInner{}
			s := NewShared(in, &clocktest.Manual{}, 2)
			first := put(s, "first", 1)
			a, b, c := put(s, "a", 1), put(s, "b", 2), put(s, "c", 3)
			in.txns[0].done(TxnResponse{Succeeded: true}, nil)
			if !first.called || len(in.txns) != 2 || len(in.txns[1].t.Then) != 2 {
				t.Fatalf("want a batch of 2 (maxOps) after the first, got %d transactions", len(in.txns))
			}
			in.txns[1].done(TxnResponse{}, tc.err)
			if !tc.splits {
				if !errors.Is(a.err, tc.wantFailed) || !errors.Is(b.err, tc.wantFailed) {
					t.Fatalf("a %+v b %+v; want both failed with %v", a, b, tc.wantFailed)
				}
				return
			}
			// a and b alone, then c (which waited for the batch to end).
			if len(in.txns) != 5 || in.txns[2].t.Then[0].Key != "a" || in.txns[3].t.Then[0].Key != "b" || in.txns[4].t.Then[0].Key != "c" {
				t.Fatalf("after the refusal: %d transactions", len(in.txns))
			}
			in.txns[2].done(TxnResponse{Succeeded: true}, nil)
			in.txns[3].done(TxnResponse{}, ErrLeaseNotFound)
			if a.err != nil || !errors.Is(b.err, ErrLeaseNotFound) || c.called {
				t.Fatalf("a %+v b %+v c %+v", a, b, c)
			}
		})
	}
}

// TestSharedWatch: watches of the same keys share one inner watch; each
// subscriber gets its own Created first, then every response after it,
// in order; Cancel leaves the others; the last one cancels the inner
// watch; a Fresh request, or one after the shared watch ended, gets a new
// inner watch.
func TestSharedWatch(t *testing.T) {
	in := &fakeInner{}
	clk := &clocktest.Manual{}
	s := NewShared(in, clk, 0)
	var got [3][]string
	record := func(i int) func(WatchResponse) {
		return func(r WatchResponse) {
			switch {
			case r.Created:
				got[i] = append(got[i], "created")
			case r.Err != nil:
				got[i] = append(got[i], "err")
			case r.Progress:
				got[i] = append(got[i], "progress")
			default:
				got[i] = append(got[i], string(r.Events[0].KV.Value))
			}
		}
	}
	ev := func(v string) WatchResponse {
		return WatchResponse{Events: []Event{{KV: KV{Key: "k", Value: []byte(v)}}}}
	}
	w0 := s.Watch(WatchRequest{Key: "k"}, record(0))
	w1 := s.Watch(WatchRequest{Key: "k"}, record(1))
	if len(in.watches) != 1 {
		t.Fatalf("%d inner watches; want 1", len(in.watches))
	}
	inner := in.watches[0]
	inner.fn(WatchResponse{Created: true})
	inner.fn(ev("1"))
	w2 := s.Watch(WatchRequest{Key: "k"}, record(2)) // joins late
	inner.fn(ev("2"))                                // before w2's Created is delivered
	clk.Advance(0)
	w1.RequestProgress()
	inner.fn(WatchResponse{Progress: true})
	want := [3]string{"[created 1 2 progress]", "[created 1 2 progress]", "[created 2 progress]"}
	for i := range got {
		if fmt.Sprint(got[i]) != want[i] {
			t.Fatalf("subscriber %d got %v, want %s", i, got[i], want[i])
		}
	}
	if inner.progress != 1 {
		t.Fatalf("progress requested %d times of the inner watch", inner.progress)
	}
	w0.Cancel()
	w2.Cancel()
	inner.fn(ev("3"))
	if inner.cancelled || len(got[0]) != 4 || len(got[1]) != 5 {
		t.Fatalf("after two cancels: inner cancelled %v, got %v", inner.cancelled, got)
	}
	w1.Cancel()
	if !inner.cancelled {
		t.Fatal("the last subscriber left and the inner watch was not cancelled")
	}
	s.Watch(WatchRequest{Key: "k"}, record(0))
	s.Watch(WatchRequest{Key: "k", Fresh: true}, record(0))
	s.Watch(WatchRequest{Key: "k", Rev: 5}, record(0))
	if len(in.watches) != 4 || !in.watches[2].r.Fresh || in.watches[3].r.Rev != 5 {
		t.Fatalf("%d inner watches; want a new one after the cancel, one for Fresh, one from a revision", len(in.watches))
	}
	// An error ends the shared watch for all; the next watch is new.
	in.watches[2].fn(WatchResponse{Err: ErrNoLeader})
	s.Watch(WatchRequest{Key: "k"}, record(0))
	if len(in.watches) != 5 {
		t.Fatalf("%d inner watches; want a new one after the error", len(in.watches))
	}
}

// TestSharedPutsOfADeliveryGoTogether: the puts subscribers make while a
// watch response is handed to them (memberships acknowledging the record)
// wait for the last subscriber and go out as one transaction.
func TestSharedPutsOfADeliveryGoTogether(t *testing.T) {
	in := &fakeInner{}
	s := NewShared(in, &clocktest.Manual{}, 0)
	var outcomes []*txnOutcome
	for i := range 3 {
		s.Watch(WatchRequest{Key: "k"}, func(r WatchResponse) {
			if len(r.Events) > 0 {
				outcomes = append(outcomes, put(s, fmt.Sprintf("ack%d", i), LeaseID(i+1)))
			}
		})
	}
	in.watches[0].fn(WatchResponse{Created: true})
	in.watches[0].fn(WatchResponse{Events: []Event{{KV: KV{Key: "k"}}}})
	if len(in.txns) != 1 || len(in.txns[0].t.Then) != 3 {
		t.Fatalf("inner got %d transactions (first with %d puts); want the 3 acks in one", len(in.txns), len(in.txns[0].t.Then))
	}
	in.txns[0].done(TxnResponse{Succeeded: true, Revision: 3}, nil)
	for i, o := range outcomes {
		if !o.called || o.err != nil {
			t.Fatalf("ack %d: %+v", i, o)
		}
	}
}
