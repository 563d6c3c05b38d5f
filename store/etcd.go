package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Etcd is the Store on an etcd client. Each call runs on a goroutine of
// its own and calls back from it. Close cancels every call and watch still
// in progress; the client itself is the caller's.
type Etcd struct {
	cli    *clientv3.Client
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// streams numbers the current watch stream: etcd's client multiplexes
	// every watch of a context onto one gRPC stream, so a watch replaced
	// because it hung would otherwise join the same dead stream. A Fresh
	// watch starts the next number, and the watches after it share that.
	streams atomic.Int64
	// progressMu guards progressAt: when a progress notification was last
	// asked for on each watch stream and not yet answered.
	progressMu sync.Mutex
	progressAt map[int64]time.Time
	// renew is the client's Renewer, shared with every Etcd on the same
	// client: renewals travel on one long-lived keep-alive stream.
	renew     *sharedRenewer
	closeOnce sync.Once
}

// NewEtcd returns a Store on cli.
func NewEtcd(cli *clientv3.Client) *Etcd {
	ctx, cancel := context.WithCancel(context.Background())
	return &Etcd{cli: cli, ctx: ctx, cancel: cancel, renew: acquireRenewer(cli), progressAt: map[int64]time.Time{}}
}

// RenewStreams returns how many keep-alive streams the client's Renewer
// (shared by every Etcd on the client) has opened, and how many of them
// it took for dead and replaced.
func (s *Etcd) RenewStreams() (opened, replaced int) { return s.renew.r.Streams() }

// Client returns the etcd client.
func (s *Etcd) Client() *clientv3.Client { return s.cli }

// Close cancels the calls and watches in progress and waits until their
// goroutines have ended (their callbacks may still run meanwhile).
// Renewals are left to their answers or timeouts, on the client's shared
// stream; the last Etcd of a client to close closes that stream and fails
// what still waits on it with ErrClosed.
func (s *Etcd) Close() {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.renew.release(s.cli)
	})
}

// call runs f with a context that ends after timeout, on a goroutine.
func (s *Etcd) call(timeout time.Duration, f func(ctx context.Context)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, timeout)
		defer cancel()
		f(ctx)
	}()
}

// attempts runs op up to twice within ctx: the first attempt gets half
// the time left. A connection that is silently dead stays "ready" to gRPC
// until its keep-alive fails (10 s and more), and etcd's client picks
// connections round robin; so a request stuck on a dead one is sent again
// on the next pick while time is left. Every request idc makes may be
// repeated: puts and deletes are idempotent, a compare-and-swap repeated
// after it applied fails its compare, and a lease granted twice expires.
func attempts[T any](ctx context.Context, op func(context.Context) (T, error)) (T, error) {
	if dl, ok := ctx.Deadline(); ok {
		actx, cancel := context.WithTimeout(ctx, time.Until(dl)/2)
		v, err := op(actx)
		cancel()
		if err == nil || ctx.Err() != nil || actx.Err() == nil {
			return v, err
		}
	}
	return op(ctx)
}

// Classify maps an etcd client error to the Store's errors (wrapping the
// original); nil stays nil.
func Classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return fmt.Errorf("%w (%v)", ErrLeaseNotFound, err)
	case errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("%w (%v)", ErrCompacted, err)
	case errors.Is(err, rpctypes.ErrTooManyOps):
		return fmt.Errorf("%w (%v)", ErrTooManyOps, err)
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("%w (%v)", ErrTooLarge, err)
	case errors.Is(err, rpctypes.ErrNoLeader):
		return fmt.Errorf("%w (%v)", ErrNoLeader, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Grant implements Store.
func (s *Etcd) Grant(ttl, timeout time.Duration, done func(Lease, error)) {
	s.call(timeout, func(ctx context.Context) {
		resp, err := attempts(ctx, func(ctx context.Context) (*clientv3.LeaseGrantResponse, error) {
			return s.cli.Grant(ctx, int64(ttl/time.Second))
		})
		if err != nil {
			done(Lease{}, Classify(err))
			return
		}
		done(Lease{ID: LeaseID(resp.ID), TTL: time.Duration(resp.TTL) * time.Second}, nil)
	})
}

// KeepAlive implements Store: one request on the client's shared
// keep-alive stream (Renewer).
func (s *Etcd) KeepAlive(id LeaseID, timeout time.Duration, done func(time.Duration, error)) {
	s.renew.r.KeepAlive(id, timeout, done)
}

// Revoke implements Store.
func (s *Etcd) Revoke(id LeaseID, timeout time.Duration, done func(error)) {
	s.call(timeout, func(ctx context.Context) {
		_, err := attempts(ctx, func(ctx context.Context) (*clientv3.LeaseRevokeResponse, error) {
			return s.cli.Revoke(ctx, clientv3.LeaseID(id))
		})
		if done != nil {
			done(Classify(err))
		}
	})
}

func etcdOps(ops []Op) []clientv3.Op {
	out := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		var opts []clientv3.OpOption
		if o.End != "" {
			opts = append(opts, clientv3.WithRange(o.End))
		}
		switch o.Type {
		case OpPut:
			if o.Lease != 0 {
				opts = append(opts, clientv3.WithLease(clientv3.LeaseID(o.Lease)))
			}
			out[i] = clientv3.OpPut(o.Key, string(o.Value), opts...)
		case OpDelete:
			out[i] = clientv3.OpDelete(o.Key, opts...)
		case OpGet:
			out[i] = clientv3.OpGet(o.Key, opts...)
		}
	}
	return out
}

func fromKV(kv *mvccpb.KeyValue) KV {
	return KV{Key: string(kv.Key), Value: kv.Value, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision, Lease: LeaseID(kv.Lease)}
}

// Txn implements Store.
func (s *Etcd) Txn(t Txn, timeout time.Duration, done func(TxnResponse, error)) {
	cmps := make([]clientv3.Cmp, len(t.If))
	for i, c := range t.If {
		target := clientv3.ModRevision(c.Key)
		if c.Create {
			target = clientv3.CreateRevision(c.Key)
		}
		cmps[i] = clientv3.Compare(target, "=", c.Rev)
	}
	then, els := etcdOps(t.Then), etcdOps(t.Else)
	s.call(timeout, func(ctx context.Context) {
		resp, err := attempts(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
			return s.cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
		})
		if err != nil {
			done(TxnResponse{}, Classify(err))
			return
		}
		out := TxnResponse{Succeeded: resp.Succeeded, Revision: resp.Header.Revision}
		for _, r := range resp.Responses {
			if rr := r.GetResponseRange(); rr != nil {
				kvs := make([]KV, len(rr.Kvs))
				for i, kv := range rr.Kvs {
					kvs[i] = fromKV(kv)
				}
				out.Gets = append(out.Gets, kvs)
			}
		}
		done(out, nil)
	})
}

// etcdWatch is a watch on etcd: a goroutine reads its channel and calls
// back for each response, in order.
type etcdWatch struct {
	s      *Etcd
	stream int64
	ctx    context.Context
	cancel context.CancelFunc
	ended  atomic.Bool
}

// Watch implements Store. It requires a leader (a store that lost its
// leader ends the watch with ErrNoLeader) and asks for the created
// notification.
func (s *Etcd) Watch(r WatchRequest, fn func(WatchResponse)) Watch {
	stream := s.streams.Load()
	if r.Fresh {
		stream = s.streams.Add(1)
	}
	sctx := metadata.AppendToOutgoingContext(s.ctx, "idc-watch-stream", strconv.FormatInt(stream, 10))
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(sctx))
	w := &etcdWatch{s: s, stream: stream, ctx: ctx, cancel: cancel}
	opts := []clientv3.OpOption{clientv3.WithCreatedNotify()}
	if r.End != "" {
		opts = append(opts, clientv3.WithRange(r.End))
	}
	if r.Rev != 0 {
		opts = append(opts, clientv3.WithRev(r.Rev))
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		deliver := func(resp WatchResponse) bool {
			if w.ended.Load() {
				return false
			}
			if resp.Err != nil {
				w.ended.Store(true)
				cancel()
			}
			fn(resp)
			return !w.ended.Load()
		}
		for wr := range s.cli.Watch(ctx, r.Key, opts...) {
			resp := WatchResponse{Created: wr.Created, Progress: wr.IsProgressNotify(), Revision: wr.Header.Revision}
			if resp.Progress {
				s.answered(stream)
			}
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					err = fmt.Errorf("%w (at revision %d)", ErrCompacted, wr.CompactRevision)
				}
				resp.Err = Classify(err)
			}
			for _, ev := range wr.Events {
				resp.Events = append(resp.Events, Event{Delete: ev.Type == clientv3.EventTypeDelete, KV: fromKV(ev.Kv)})
			}
			if !deliver(resp) {
				return
			}
		}
		deliver(WatchResponse{Err: fmt.Errorf("%w: watch closed", ErrUnavailable)})
	}()
	return w
}

// progressMerge is how long a request for a progress notification on a
// watch stream stands for every watch of the stream: etcd answers one
// request with a notification to each watch on the stream, so the
// watchdogs of a process's hundreds of watches need not each ask. A
// request not answered within it may be sent again (etcd ignores one made
// while a watch of the stream is catching up).
const progressMerge = time.Second

// answered notes a progress notification on watch stream n.
func (s *Etcd) answered(n int64) {
	s.progressMu.Lock()
	delete(s.progressAt, n)
	s.progressMu.Unlock()
}

// RequestProgress implements Watch: unless a request on the watch's
// stream is already waiting for its answer (progressMerge), the store is
// asked for a progress notification, which every watch of the stream
// receives.
func (w *etcdWatch) RequestProgress() {
	s := w.s
	s.progressMu.Lock()
	if at, ok := s.progressAt[w.stream]; ok && time.Since(at) < progressMerge {
		s.progressMu.Unlock()
		return
	}
	s.progressAt[w.stream] = time.Now()
	s.progressMu.Unlock()
	w.s.wg.Add(1)
	go func() {
		defer w.s.wg.Done()
		// The stream is chosen by the watch's context; a failure shows as
		// a missing notification, which is what the caller watches for.
		_ = w.s.cli.RequestProgress(w.ctx)
	}()
}

// Cancel implements Watch.
func (w *etcdWatch) Cancel() {
	w.ended.Store(true)
	w.cancel()
}
