package sim

import (
	"fmt"

	"github.com/idc-dev/idc/store"
)

// txnBytes runs a store.Txn of a real driver: compares on mod or create
// revision, then the branch's puts, deletes (one key or a range) and gets
// (one key or a range), at one revision.
func (s *Store) txnBytes(t store.Txn) (store.TxnResponse, error) {
	ok := true
	for _, c := range t.If {
		var rev int64
		if e := s.kvs[c.Key]; e != nil {
			rev = e.mod
			if c.Create {
				rev = e.create
			}
		}
		if rev != c.Rev {
			ok = false
			break
		}
	}
	branch := t.Then
	if !ok {
		branch = t.Else
	}
	for _, o := range branch {
		if o.Type == store.OpPut && o.Lease != 0 && !s.leaseLive(int64(o.Lease)) {
			return store.TxnResponse{}, fmt.Errorf("%w (lease %d)", store.ErrLeaseNotFound, o.Lease)
		}
	}
	// The branch's operations run in order at one revision: a get sees
	// the writes before it in the same transaction, as in etcd.
	resp := store.TxnResponse{Succeeded: ok}
	rev := s.rev + 1
	var evs []Event
	for _, o := range branch {
		switch o.Type {
		case store.OpGet:
			var kvs []store.KV
			for _, k := range s.rangeKeys(o.Key, o.End) {
				e := s.kvs[k]
				kvs = append(kvs, store.KV{Key: k, Value: e.val, CreateRev: e.create, ModRev: e.mod, Lease: store.LeaseID(e.lease)})
			}
			resp.Gets = append(resp.Gets, kvs)
		case store.OpPut:
			evs = s.write(Op{Kind: OpPut, Key: o.Key, Val: o.Value, Lease: int64(o.Lease)}, rev, evs)
		case store.OpDelete:
			if o.End == "" {
				evs = s.write(Op{Kind: OpDelete, Key: o.Key}, rev, evs)
			} else {
				evs = s.write(Op{Kind: OpDeleteRange, Key: o.Key, End: o.End}, rev, evs)
			}
		}
	}
	s.publish(evs, rev)
	resp.Revision = s.rev
	return resp, nil
}

// rangeKeys returns key alone (if present) or the keys in [key, end).
func (s *Store) rangeKeys(key, end string) []string {
	if end == "" {
		if s.kvs[key] != nil {
			return []string{key}
		}
		return nil
	}
	return s.sortedKeys(key, end)
}

// Watch registers a watch of a real driver at the store: the request goes
// through the network; once the store has it, the watch delivers a
// Created response, then every change, each response after a delay of its
// own but in order. A request that is lost ends the watch with an error
// after the driver's op timeout, as a broken stream would.
func (c storeClient) Watch(r store.WatchRequest, fn func(store.WatchResponse)) store.Watch {
	w := c.w
	sw := &simWatch{c: c, id: w.id()}
	key, prefix := r.Key, r.End != ""
	// A watch request still on its way when its process crashed reaches
	// the store for nobody: the stream died with the process.
	wt := &watcher{id: sw.id, node: c.n, gen: w.nodes[c.n].gen, key: key, prefix: prefix, fn: func(evs []Event, rev int64) {
		if sw.cancelled {
			return
		}
		resp := store.WatchResponse{Revision: rev}
		for _, ev := range evs {
			resp.Events = append(resp.Events, store.Event{Delete: ev.Del, KV: store.KV{Key: ev.Key, Value: ev.Val, CreateRev: ev.Create, ModRev: ev.Mod}})
		}
		fn(resp)
	}}
	wt.end = func(err error) {
		if !sw.cancelled {
			sw.cancelled = true
			fn(store.WatchResponse{Err: err})
		}
	}
	sw.wt = wt
	w.call(c.n, w.cfg.OpTimeout, "watch", func() any {
		switch {
		case w.nodes[c.n].gen != wt.gen:
			return answer{err: store.ErrUnavailable}
		case w.store.leaderless():
			return answer{err: store.ErrNoLeader}
		case !w.store.watchFrom(wt, r.Rev):
			return answer{err: fmt.Errorf("%w (from revision %d)", store.ErrCompacted, r.Rev)}
		}
		return answer{v: w.store.rev}
	}, func(resp any) {
		a := resp.(answer)
		switch {
		case sw.cancelled:
		case a.err != nil:
			wt.end(a.err)
		default:
			fn(store.WatchResponse{Created: true, Revision: a.v.(int64)})
		}
	}, func() {
		w.store.cancelWatch(sw.id) // if it arrived after all, it is a stream nobody reads
		wt.end(timeout("watch", w.cfg.OpTimeout))
	})
	return sw
}

type simWatch struct {
	c         storeClient
	id        uint64
	wt        *watcher
	cancelled bool
}

// RequestProgress asks the store for a progress notification, delivered
// in order with the watch's events (unless the watch hangs).
func (sw *simWatch) RequestProgress() {
	w := sw.c.w
	w.net.send(sw.c.n, storeNode, "progress request", 0, func() {
		if w.store.watching(sw.id) {
			w.store.deliver(sw.wt, nil, w.store.rev)
		}
	})
}

func (sw *simWatch) Cancel() {
	sw.cancelled = true
	w := sw.c.w
	w.net.send(sw.c.n, storeNode, "cancel watch", 0, func() { w.store.cancelWatch(sw.id) })
}
