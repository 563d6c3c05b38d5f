package sim

import (
	"maps"
	"slices"
	"time"

	"github.com/idc-dev/idc/store"
)

// procStore is what one process of a node shares between its drivers, as
// package idc shares it between the memberships on one etcd client: the
// lease renewer (store.Renewer) with its keep-alive streams, and the
// shared store (store.Shared) that gives them one watch of a record and
// one write for the acknowledgements that gather.
type procStore struct {
	gen     uint64
	r       *store.Renewer
	shared  *store.Shared
	streams []*simStream
}

// proc returns the shared state of node n's current process.
func (w *World) proc(n NodeID) *procStore {
	if w.renewers == nil {
		w.renewers = map[NodeID]*procStore{}
	}
	p := w.renewers[n]
	if p == nil || p.gen != w.nodes[n].gen {
		p = &procStore{gen: w.nodes[n].gen}
		p.r = store.NewRenewer(func(h store.StreamHandler) store.KeepAliveStream {
			s := &simStream{w: w, n: n, gen: p.gen, h: h}
			p.streams = append(liveStreams(p.streams), s)
			return s
		}, nodeClock{w, n})
		p.shared = store.NewShared(storeClient{w, n}, nodeClock{w, n}, w.cfg.MaxTxnOps)
		w.renewers[n] = p
	}
	return p
}

// renewer returns the lease renewer of node n's current process.
func (w *World) renewer(n NodeID) *store.Renewer { return w.proc(n).r }

// sharedStore returns the store node n's current process shares between
// its memberships.
func (w *World) sharedStore(n NodeID) store.Store { return w.proc(n).shared }

func liveStreams(ss []*simStream) []*simStream {
	var out []*simStream
	for _, s := range ss {
		if !s.closed && !s.ended {
			out = append(out, s)
		}
	}
	return out
}

// simStream is a keep-alive stream between a node and the store, as etcd's
// LeaseKeepAlive over TCP: requests reach the store in order and are
// answered in order, each message after a delay the network draws (never
// overtaking the one before it on the stream). Where the network would
// lose a message — the node is cut off from the store — the connection
// goes silent for good, as a blackholed TCP connection does: nothing more
// is delivered either way, and nothing says so (the Renewer must notice).
// Without a leader the store ends the stream with ErrNoLeader, after the
// answers already on their way.
type simStream struct {
	w   *World
	n   NodeID
	gen uint64 // the process that opened it
	h   store.StreamHandler
	// up and down are when the last request reaches the store and the
	// last answer reaches the node: later messages come after them.
	up, down time.Duration
	// silent: the connection is blackholed; closed: the node closed it;
	// ended: the store ended it.
	silent, closed, ended bool
}

// Send implements store.KeepAliveStream.
func (s *simStream) Send(id store.LeaseID) {
	w := s.w
	if s.closed || s.ended || s.silent {
		return
	}
	if w.net.cut(s.n) {
		s.silent = true
		return
	}
	s.up = max(w.now+w.net.delay(s.n, storeNode), s.up)
	w.after(storeNode, s.up-w.now, "keepalive", int64(id), 0, func() {
		if s.closed || s.ended || s.silent {
			return // the stream was cancelled: the store reads no more of it
		}
		if w.store.leaderless() {
			s.end(store.ErrNoLeader)
			return
		}
		var ttl time.Duration
		if w.store.KeepAlive(int64(id)) {
			ttl = w.cfg.TTL
		}
		s.deliver("keepalive answered", int64(id), func() { s.h.Answer(id, ttl) })
	})
}

// deliver sends fn to the node after the answers before it, unless the
// connection is (or goes) silent.
func (s *simStream) deliver(what string, a int64, fn func()) {
	w := s.w
	if s.silent || w.net.cut(s.n) {
		s.silent = true
		return
	}
	s.down = max(w.now+w.net.delay(storeNode, s.n), s.down)
	w.after(s.n, s.down-w.now, what, a, 0, func() {
		if s.closed || s.silent || w.nodes[s.n].gen != s.gen {
			return
		}
		fn()
	})
}

// end ends the stream from the store's side with err.
func (s *simStream) end(err error) {
	if s.ended {
		return
	}
	s.ended = true
	s.deliver("keepalive stream ended", 0, func() { s.h.End(err) })
}

// Close implements store.KeepAliveStream.
func (s *simStream) Close() { s.closed = true }

// hangStreams makes node n's keep-alive streams silent; it returns how
// many were live.
func (w *World) hangStreams(n NodeID) int {
	nr := w.renewers[n]
	if nr == nil || nr.gen != w.nodes[n].gen {
		return 0
	}
	hung := 0
	for _, s := range liveStreams(nr.streams) {
		if !s.silent {
			s.silent = true
			hung++
		}
	}
	return hung
}

// endStreams ends every live keep-alive stream with err (the store lost
// its leader).
func (w *World) endStreams(err error) {
	for _, n := range slices.Sorted(maps.Keys(w.renewers)) {
		for _, s := range liveStreams(w.renewers[n].streams) {
			s.end(err)
		}
	}
}
