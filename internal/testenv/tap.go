package testenv

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/proto"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Tap records what a store client sends, timed on the client's side of
// the wire: a request's send time is read just before gRPC takes it, so
// the store processes the request after that time. The tests use these
// send times as lower bounds for what the store did (a lease's expiry, an
// epoch record's commit) instead of the time a watcher saw it, which is
// late by an unknown delay.
type Tap struct {
	keys proto.Keys

	mu       sync.Mutex
	renewals []Renewal
	writes   []EpochWrite
	changed  chan struct{} // closed and replaced on every answer
}

// Renewal is one lease grant or keep-alive request sent by the tapped
// client.
type Renewal struct {
	Lease int64     // the lease (for a grant: as answered; 0 if unanswered)
	Grant bool      // a grant, not a keep-alive
	Sent  time.Time // read just before the request was handed to gRPC
	// Answered: the store answered it with the lease alive (TTL > 0), at
	// AnsweredAt, with the TTL in seconds.
	Answered   bool
	AnsweredAt time.Time
	TTL        int64
}

// EpochWrite is one transaction sent by the tapped client that puts an
// epoch record.
type EpochWrite struct {
	Group  string
	Record proto.EpochRecord
	Sent   time.Time // read just before the request was handed to gRPC
	// Succeeded: the store answered that its comparisons held (the record
	// was written). A write whose answer was lost is not Succeeded but may
	// have been applied.
	Succeeded bool
}

// TappedClient dials endpoints like Client, with a Tap on every request;
// keys is the key layout under which it recognises epoch writes. The
// client is closed when the test ends.
func TappedClient(t testing.TB, endpoints []string, keys proto.Keys) (*clientv3.Client, *Tap) {
	t.Helper()
	tap := &Tap{keys: keys, changed: make(chan struct{})}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(tap.unary),
			grpc.WithChainStreamInterceptor(tap.stream),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "/idc-ping", clientv3.WithCountOnly())
		cancel()
		if err == nil {
			return cli, tap
		}
		if time.Now().After(deadline) {
			t.Fatalf("tapped client: store %v unreachable: %v", endpoints, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unary taps lease grants and transactions.
func (tp *Tap) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	switch req := req.(type) {
	case *pb.LeaseGrantRequest:
		sent := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		r := Renewal{Grant: true, Sent: sent}
		if resp, ok := reply.(*pb.LeaseGrantResponse); ok && err == nil && resp.Error == "" && resp.TTL > 0 {
			r.Lease, r.Answered, r.AnsweredAt, r.TTL = resp.ID, true, time.Now(), resp.TTL
		}
		tp.mu.Lock()
		tp.renewals = append(tp.renewals, r)
		tp.notify()
		tp.mu.Unlock()
		return err
	case *pb.TxnRequest:
		var ws []EpochWrite
		for _, op := range req.Success {
			put := op.GetRequestPut()
			if put == nil {
				continue
			}
			p, ok := tp.keys.Parse(string(put.Key))
			if !ok || p.Kind != proto.KindEpoch {
				continue
			}
			if rec, err := proto.DecodeEpoch(put.Value); err == nil {
				ws = append(ws, EpochWrite{Group: p.Group, Record: rec})
			}
		}
		if len(ws) == 0 {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		// Recorded before it is sent: a watcher may see the write before
		// the answer comes back.
		tp.mu.Lock()
		first, sent := len(tp.writes), time.Now()
		for _, w := range ws {
			w.Sent = sent
			tp.writes = append(tp.writes, w)
		}
		tp.mu.Unlock()
		err := invoker(ctx, method, req, reply, cc, opts...)
		resp, _ := reply.(*pb.TxnResponse)
		ok := err == nil && resp != nil && resp.Succeeded
		tp.mu.Lock()
		for i := range ws {
			tp.writes[first+i].Succeeded = ok
		}
		tp.notify()
		tp.mu.Unlock()
		return err
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// stream taps keep-alive streams.
func (tp *Tap) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &tappedStream{ClientStream: s, tap: tp}, nil
}

// tappedStream matches each keep-alive answer to the oldest unanswered
// request of the same lease on its stream: the store answers a stream's
// keep-alives in order.
type tappedStream struct {
	grpc.ClientStream
	tap     *Tap
	mu      sync.Mutex
	pending []int // indexes into tap.renewals
}

func (s *tappedStream) SendMsg(m any) error {
	if req, ok := m.(*pb.LeaseKeepAliveRequest); ok {
		tp := s.tap
		tp.mu.Lock()
		s.mu.Lock()
		s.pending = append(s.pending, len(tp.renewals))
		s.mu.Unlock()
		tp.renewals = append(tp.renewals, Renewal{Lease: req.ID, Sent: time.Now()})
		tp.mu.Unlock()
	}
	return s.ClientStream.SendMsg(m)
}

func (s *tappedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	resp, ok := m.(*pb.LeaseKeepAliveResponse)
	if err != nil || !ok {
		return err
	}
	at := time.Now()
	tp := s.tap
	tp.mu.Lock()
	defer tp.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, idx := range s.pending {
		if tp.renewals[idx].Lease != resp.ID {
			continue
		}
		s.pending = append(s.pending[:i:i], s.pending[i+1:]...)
		if resp.TTL > 0 {
			r := &tp.renewals[idx]
			r.Answered, r.AnsweredAt, r.TTL = true, at, resp.TTL
		}
		tp.notify()
		break
	}
	return err
}

// notify wakes waiters. Called with tp.mu held.
func (tp *Tap) notify() {
	close(tp.changed)
	tp.changed = make(chan struct{})
}

// Renewals returns the grants and keep-alives of lease sent so far, in
// the order sent.
func (tp *Tap) Renewals(lease int64) []Renewal {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var out []Renewal
	for _, r := range tp.renewals {
		if r.Lease == lease {
			out = append(out, r)
		}
	}
	return out
}

// LastAnswered returns the answered grant or keep-alive of lease sent
// last, and false if none was answered. The store processed it after its
// send time and then set the lease to expire TTL later, so its Sent + TTL
// is a lower bound of the lease's nominal expiry in the store.
func (tp *Tap) LastAnswered(lease int64) (Renewal, bool) {
	var last Renewal
	found := false
	for _, r := range tp.Renewals(lease) {
		if r.Answered && (!found || r.Sent.After(last.Sent)) {
			last, found = r, true
		}
	}
	return last, found
}

// WaitAnswered waits until the store answers a keep-alive of lease sent
// after the time after, and returns it.
func (tp *Tap) WaitAnswered(t testing.TB, lease int64, after time.Time, timeout time.Duration) Renewal {
	t.Helper()
	deadline := time.After(timeout)
	for {
		tp.mu.Lock()
		ch := tp.changed
		for _, r := range tp.renewals {
			if r.Lease == lease && !r.Grant && r.Answered && r.Sent.After(after) {
				tp.mu.Unlock()
				return r
			}
		}
		tp.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no keep-alive of lease %x answered within %v", lease, timeout)
		}
	}
}

// EpochWrites returns the epoch writes sent so far for group g, in the
// order sent.
func (tp *Tap) EpochWrites(g string) []EpochWrite {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var out []EpochWrite
	for _, w := range tp.writes {
		if w.Group == g {
			out = append(out, w)
		}
	}
	return out
}

// FirstWrite returns the first transaction sent that puts epoch number n
// of group g in state s. The record was written no earlier than its send
// time: it is a lower bound of the record's commit.
func (tp *Tap) FirstWrite(g string, n uint64, s proto.State) (EpochWrite, error) {
	for _, w := range tp.EpochWrites(g) {
		if w.Record.Number == n && w.Record.State == s {
			return w, nil
		}
	}
	return EpochWrite{}, fmt.Errorf("group %s: no write of epoch %d %s was sent through the tap", g, n, s)
}
