package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/idc-dev/idc/clock"
)

// The Renewer of each etcd client, shared by every Etcd on that client:
// the memberships of a process that share a client share one keep-alive
// stream.
var renewers = struct {
	sync.Mutex
	m map[*clientv3.Client]*sharedRenewer
}{m: map[*clientv3.Client]*sharedRenewer{}}

// sharedRenewer is a client's Renewer and the streams' goroutines.
type sharedRenewer struct {
	r      *Renewer
	refs   int
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// acquireRenewer returns cli's shared Renewer, counting one more user.
func acquireRenewer(cli *clientv3.Client) *sharedRenewer {
	renewers.Lock()
	defer renewers.Unlock()
	sr := renewers.m[cli]
	if sr == nil {
		sr = &sharedRenewer{}
		sr.ctx, sr.cancel = context.WithCancel(context.Background())
		sr.r = NewRenewer(func(h StreamHandler) KeepAliveStream { return openEtcdStream(sr.ctx, &sr.wg, cli, h) }, clock.System())
		renewers.m[cli] = sr
	}
	sr.refs++
	return sr
}

// release counts one user less; the last one closes the Renewer and waits
// for its streams' goroutines.
func (sr *sharedRenewer) release(cli *clientv3.Client) {
	renewers.Lock()
	sr.refs--
	last := sr.refs == 0
	if last {
		delete(renewers.m, cli)
	}
	renewers.Unlock()
	if last {
		sr.r.Close()
		sr.cancel()
		sr.wg.Wait()
	}
}

// etcdStream is a KeepAliveStream on etcd's LeaseKeepAlive RPC, opened on
// the client's connection directly: clientv3's KeepAlive hides when each
// answered request was sent, which is what a renewal's validity counts
// from. A goroutine opens the stream and sends what Send queued; another
// receives the answers. The stream requires a leader: a store that loses
// it ends the stream with ErrNoLeader.
type etcdStream struct {
	ctx    context.Context
	cancel context.CancelFunc
	h      StreamHandler

	mu    sync.Mutex
	queue []LeaseID
	wake  chan struct{}

	callMu sync.Mutex // serialises the handler's calls
	ended  atomic.Bool
}

func openEtcdStream(parent context.Context, wg *sync.WaitGroup, cli *clientv3.Client, h StreamHandler) *etcdStream {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(parent))
	s := &etcdStream{ctx: ctx, cancel: cancel, h: h, wake: make(chan struct{}, 1)}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.run(cli, wg)
	}()
	return s
}

// Send implements KeepAliveStream.
func (s *etcdStream) Send(id LeaseID) {
	s.mu.Lock()
	s.queue = append(s.queue, id)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close implements KeepAliveStream.
func (s *etcdStream) Close() {
	s.ended.Store(true)
	s.cancel()
}

// fail ends the stream with err, once, unless it was closed.
func (s *etcdStream) fail(err error) {
	s.callMu.Lock()
	defer s.callMu.Unlock()
	if s.ended.Swap(true) {
		return
	}
	s.cancel()
	s.h.End(Classify(rpctypes.Error(err)))
}

func (s *etcdStream) run(cli *clientv3.Client, wg *sync.WaitGroup) {
	stream, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(s.ctx)
	if err != nil {
		s.fail(err)
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			resp, err := stream.Recv()
			if err != nil {
				s.fail(err)
				return
			}
			s.callMu.Lock()
			if !s.ended.Load() {
				s.h.Answer(LeaseID(resp.ID), time.Duration(resp.TTL)*time.Second)
			}
			s.callMu.Unlock()
		}
	}()
	var batch []LeaseID
	for {
		select {
		case <-s.wake:
		case <-s.ctx.Done():
			return
		}
		s.mu.Lock()
		batch, s.queue = s.queue, batch[:0]
		s.mu.Unlock()
		for _, id := range batch {
			if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
				s.fail(err)
				return
			}
		}
	}
}
