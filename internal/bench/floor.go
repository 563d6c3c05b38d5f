package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// floor times the store work an epoch change needs, done with raw etcd
// calls and nothing else: a compare-and-swap write of a record the size of
// the real one, its watch notification at every process (members on one
// client are one process's, which watches once), the acknowledgements of
// each process's survivors in one transaction (each as soon as its client
// saw the record; one per survivor when each has a client of its own), the
// coordinator's watch seeing them all, and a second compare-and-swap write
// (deleting the acknowledgements) notified to every process again.
// Survivors use the clients the members use; the joiner has a client of
// its own. It is the protocol's floor on this store: what idc adds is the
// ratio of the epoch change to it.
func floor(ctx context.Context, coord *clientv3.Client, members []*clientv3.Client, joiner *clientv3.Client, reps int) ([]time.Duration, error) {
	const (
		key  = "/bench/floor/epoch"
		acks = "/bench/floor/acks/"
	)
	n := len(members)
	rec := proto.EpochRecord{Group: "bench", Number: 1, State: proto.Quiescing, Mode: proto.ModeLease}
	for i := range n + 1 {
		rec.Members = append(rec.Members, proto.Member{ID: fmt.Sprintf("m%03d", i), Incarnation: 0xf2debba1bbd61a38 + uint64(i), Lease: 0x694d9a1b0b2c4f05, TTL: 5 * time.Second})
	}
	rec.Prev = rec.Members[:n]
	val := string(proto.EncodeEpoch(rec))

	wctx, cancel := context.WithCancel(ctx)
	// The members on one client are one process's: like idc's shared
	// store (store.Shared), the process watches the record once and writes
	// its survivors' acknowledgements together, in transactions of at most
	// store.DefaultMaxBatchOps puts.
	type host struct {
		cli     *clientv3.Client
		members []int
	}
	var hosts []*host
	byClient := map[*clientv3.Client]*host{}
	for i, cli := range members {
		h := byClient[cli]
		if h == nil {
			h = &host{cli: cli}
			byClient[cli] = h
			hosts = append(hosts, h)
		}
		h.members = append(h.members, i)
	}
	// Every process watches the record: on a quiescing write it
	// acknowledges for its survivors; on a connected write each member
	// reports it saw it.
	seen := make(chan struct{}, (n+1)*reps)
	errs := make(chan error, len(hosts)+1)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	watch := func(h *host, survivor bool) {
		wch := h.cli.Watch(wctx, key, clientv3.WithCreatedNotify())
		<-wch
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wr := range wch {
				for _, ev := range wr.Events {
					switch v := ev.Kv.Value; {
					case len(v) > 0 && v[0] == 'q' && survivor:
						for chunk := range slices.Chunk(h.members, store.DefaultMaxBatchOps) {
							ops := make([]clientv3.Op, len(chunk))
							for j, i := range chunk {
								ops[j] = clientv3.OpPut(fmt.Sprintf("%s%d/%03d", acks, ev.Kv.ModRevision, i), "ack")
							}
							if _, err := h.cli.Txn(wctx).Then(ops...).Commit(); err != nil && wctx.Err() == nil {
								errs <- err
							}
						}
					case len(v) > 0 && v[0] == 'c':
						for range h.members {
							seen <- struct{}{}
						}
					}
				}
			}
		}()
	}
	for _, h := range hosts {
		watch(h, true)
	}
	watch(&host{cli: joiner, members: []int{n}}, false)
	ackw := coord.Watch(wctx, acks, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-ackw

	cas := func(prev int64, v string, ops ...clientv3.Op) (int64, error) {
		resp, err := coord.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", prev)).
			Then(append([]clientv3.Op{clientv3.OpPut(key, v)}, ops...)...).Commit()
		if err == nil && !resp.Succeeded {
			err = fmt.Errorf("bench: floor write lost its compare")
		}
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	}
	var rev int64
	var out []time.Duration
	for range reps {
		start := time.Now()
		var err error
		if rev, err = cas(rev, "q"+val); err != nil {
			return nil, err
		}
		for got := 0; got < n; {
			select {
			case wr := <-ackw:
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypePut {
						got++
					}
				}
			case err := <-errs:
				return nil, err
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if rev, err = cas(rev, "c"+val, clientv3.OpDelete(acks, clientv3.WithPrefix())); err != nil {
			return nil, err
		}
		for range n + 1 {
			select {
			case <-seen:
			case err := <-errs:
				return nil, err
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		out = append(out, time.Since(start)) // (the deletions of the acks come next; the count skips them)
	}
	return out, nil
}
