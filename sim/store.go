package sim

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// Store is a simulated etcd: a linearizable key-value store with a global
// revision, per-key create and mod revisions, leases (keys attached to a
// lease are deleted when it expires or is revoked), transactions with
// compares on mod and create revision, delete-range, and prefix watches that
// deliver every event in revision order to each watcher after a delay of
// its own. It runs on the store node with the global clock; requests reach
// it through the network (see World.call).
type Store struct {
	w      *World
	rev    int64
	kvs    map[string]*kv
	leases map[int64]*slease
	nextID int64
	// watchers in registration order.
	watchers []*watcher
	// history holds every change since compacted, for watches from a past
	// revision.
	history   []batch
	compacted int64
	// leaderlessUntil: until then the store has no leader (nemesis).
	leaderlessUntil time.Duration
}

// leaderless reports whether the store has no leader now.
func (s *Store) leaderless() bool { return s.w.now < s.leaderlessUntil }

// loseLeader makes the store leaderless until the given time: requests
// fail with ErrNoLeader, and every watch (idc's drivers require a leader)
// ends with it.
func (s *Store) loseLeader(until time.Duration) {
	s.leaderlessUntil = max(s.leaderlessUntil, until)
	for _, wt := range s.watchers {
		s.deliverEnd(wt, store.ErrNoLeader)
	}
	s.watchers = nil
	s.w.endStreams(store.ErrNoLeader)
}

// hang makes every watch of node n silently deliver nothing more, as a
// stream on a blackholed connection does.
func (s *Store) hang(n NodeID) int {
	hung := 0
	for _, wt := range s.watchers {
		if wt.node == n && !wt.hung {
			wt.hung = true
			hung++
		}
	}
	return hung
}

// compact forgets the history: watches from a revision up to now fail with
// ErrCompacted.
func (s *Store) compact() {
	s.compacted, s.history = s.rev, nil
}

// batch is the changes of one revision.
type batch struct {
	rev int64
	evs []Event
}

type kv struct {
	val         []byte
	create, mod int64
	lease       int64
}

type slease struct {
	id       int64
	ttl      time.Duration
	expireAt time.Duration
	keys     map[string]struct{}
}

// Event is one key change delivered by a watch.
type Event struct {
	Key    string
	Val    []byte // nil for a deletion
	Del    bool
	Mod    int64
	Create int64
}

type watcher struct {
	id     uint64
	node   NodeID
	gen    uint64 // the process of node that watches: a later one does not read it
	key    string
	prefix bool
	lastAt time.Duration // FIFO per watcher
	fn     func(evs []Event, rev int64)
	// end ends the watch with an error (no leader), after the responses
	// already on their way.
	end func(error)
	// hung: the stream silently delivers nothing more (nemesis).
	hung bool
}

func newStore(w *World) *Store {
	return &Store{w: w, kvs: map[string]*kv{}, leases: map[int64]*slease{}, nextID: 0x6f00}
}

func (s *Store) start() {}

// Grant grants a lease of ttl.
func (s *Store) Grant(ttl time.Duration) int64 {
	s.nextID++
	l := &slease{id: s.nextID, ttl: ttl, keys: map[string]struct{}{}}
	s.leases[l.id] = l
	s.w.hist.add(Rec{Kind: HGrant, At: s.w.now, Lease: l.id, TTL: ttl})
	s.keepAlive(l)
	return l.id
}

// KeepAlive renews lease id; false if the store does not have it.
func (s *Store) KeepAlive(id int64) bool {
	l, ok := s.leases[id]
	if ok {
		s.keepAlive(l)
	}
	return ok
}

func (s *Store) keepAlive(l *slease) {
	w := s.w
	w.hist.add(Rec{Kind: HKeepAlive, At: w.now, Lease: l.id, TTL: l.ttl})
	pending := l.expireAt > w.now
	l.expireAt = w.now + l.ttl
	if !pending {
		s.expireLater(l)
	}
}

// expireLater keeps one pending expiry event per lease, moved forward
// when keepalives have pushed the expiry back.
func (s *Store) expireLater(l *slease) {
	w := s.w
	w.after(storeNode, l.expireAt-w.now, "lease expires?", l.id, 0, func() {
		switch {
		case s.leases[l.id] != l:
		case l.expireAt > w.now:
			s.expireLater(l)
		default:
			s.revoke(l, "expired")
		}
	})
}

// Revoke revokes lease id, deleting its keys; false if it did not exist.
func (s *Store) Revoke(id int64) bool {
	l, ok := s.leases[id]
	if ok {
		s.revoke(l, "revoked")
	}
	return ok
}

func (s *Store) revoke(l *slease, why string) {
	delete(s.leases, l.id)
	s.w.note(storeNode, "lease %d %s", l.id, why)
	var ops []Op
	for _, k := range slices.Sorted(maps.Keys(l.keys)) {
		ops = append(ops, Op{Kind: OpDelete, Key: k})
	}
	s.apply(ops)
}

// leaseLive reports whether the store has lease id.
func (s *Store) leaseLive(id int64) bool { _, ok := s.leases[id]; return ok }

// OpKind is the kind of a transaction operation.
type OpKind uint8

const (
	OpPut OpKind = iota
	OpDelete
	// OpDeleteRange deletes every key in [Key, End).
	OpDeleteRange
)

// Op is one operation of a transaction.
type Op struct {
	Kind  OpKind
	Key   string
	End   string
	Val   []byte
	Lease int64
}

// apply carries out the writes of ops as one revision and notifies the
// watchers.
func (s *Store) apply(ops []Op) {
	rev := s.rev + 1
	var evs []Event
	for _, o := range ops {
		evs = s.write(o, rev, evs)
	}
	s.publish(evs, rev)
}

// write carries out one write at revision rev and returns evs with its
// events appended.
func (s *Store) write(o Op, rev int64, evs []Event) []Event {
	del := func(k string) {
		e := s.kvs[k]
		if e == nil {
			return
		}
		if l := s.leases[e.lease]; l != nil {
			delete(l.keys, k)
		}
		delete(s.kvs, k)
		evs = append(evs, Event{Key: k, Del: true, Mod: rev, Create: e.create})
	}
	switch o.Kind {
	case OpPut:
		e := s.kvs[o.Key]
		if e == nil {
			e = &kv{create: rev}
			s.kvs[o.Key] = e
		} else if l := s.leases[e.lease]; l != nil && e.lease != o.Lease {
			delete(l.keys, o.Key)
		}
		e.val, e.mod, e.lease = o.Val, rev, o.Lease
		if l := s.leases[o.Lease]; l != nil {
			l.keys[o.Key] = struct{}{}
		}
		evs = append(evs, Event{Key: o.Key, Val: o.Val, Mod: rev, Create: e.create})
	case OpDelete:
		del(o.Key)
	case OpDeleteRange:
		for _, k := range s.sortedKeys(o.Key, o.End) {
			del(k)
		}
	}
	return evs
}

// publish makes the events of revision rev visible: the revision, the
// history, the simulator's records and the watchers. No events, no
// revision.
func (s *Store) publish(evs []Event, rev int64) {
	w := s.w
	if len(evs) == 0 {
		return
	}
	s.rev = rev
	s.history = append(s.history, batch{rev, evs})
	for _, ev := range evs {
		var rec *proto.EpochRecord
		if p, isKey := keys.Parse(ev.Key); isKey && p.Kind == proto.KindEpoch && !ev.Del {
			if r, err := proto.DecodeEpoch(ev.Val); err == nil {
				rec = &r
			}
		}
		if rec != nil {
			w.hist.add(Rec{Kind: HEpoch, At: w.now, Record: rec, Rev: rev})
			w.note(storeNode, "epoch written rev %d: %s", rev, fmtRecord(rec))
			if rec.State == proto.Connected {
				w.epochs++
			}
		}
	}
	for _, wt := range s.watchers {
		var mine []Event
		for _, ev := range evs {
			if ev.Key == wt.key || wt.prefix && strings.HasPrefix(ev.Key, wt.key) {
				mine = append(mine, ev)
			}
		}
		if len(mine) > 0 {
			s.deliver(wt, mine, rev)
		}
	}
}

// deliver sends a watch response to its watcher after a delay of its own,
// never before an earlier one (etcd's watch streams are FIFO), held back
// while the watcher's node is cut off (the client resumes the watch from
// its last revision once it reconnects).
func (s *Store) deliver(wt *watcher, evs []Event, rev int64) {
	if wt.hung || s.w.nodes[wt.node].gen != wt.gen {
		return
	}
	w := s.w
	at := w.now + w.net.delay(storeNode, wt.node)
	if end := w.net.partitioned[wt.node]; end > w.now {
		at = max(at, end+w.net.delay(storeNode, wt.node))
	}
	at = max(at, wt.lastAt)
	wt.lastAt = at
	w.after(wt.node, at-w.now, "watch event", rev, int64(len(evs)), func() { wt.fn(evs, rev) })
}

// deliverEnd ends a watch with err after the responses already on their
// way.
func (s *Store) deliverEnd(wt *watcher, err error) {
	if wt.hung || wt.end == nil || s.w.nodes[wt.node].gen != wt.gen {
		return
	}
	w := s.w
	at := max(w.now+w.net.delay(storeNode, wt.node), wt.lastAt)
	wt.lastAt = at
	w.after(wt.node, at-w.now, "watch ends", 0, 0, func() { wt.end(err) })
}

// sortedKeys returns the keys in [from, to), sorted; to == "" means every
// key with prefix from.
func (s *Store) sortedKeys(from, to string) []string {
	var out []string
	for k := range s.kvs {
		if to == "" && strings.HasPrefix(k, from) || to != "" && k >= from && k < to {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// watch registers wt, replacing any earlier watcher with the same id.
func (s *Store) watch(wt *watcher) {
	for i, o := range s.watchers {
		if o.id == wt.id {
			s.watchers[i] = wt
			return
		}
	}
	s.watchers = append(s.watchers, wt)
}

// unwatch drops every watcher of node n (its process ended).
func (s *Store) unwatch(n NodeID) {
	s.watchers = slices.DeleteFunc(s.watchers, func(wt *watcher) bool { return wt.node == n })
}

// watchFrom registers wt and delivers at once every change since
// revision from (0: none), in order; false if from is compacted.
func (s *Store) watchFrom(wt *watcher, from int64) bool {
	if from > 0 && from <= s.compacted {
		return false
	}
	if from > 0 {
		i, _ := slices.BinarySearchFunc(s.history, from, func(b batch, r int64) int { return int(b.rev - r) })
		for _, b := range s.history[i:] {
			var mine []Event
			for _, ev := range b.evs {
				if ev.Key == wt.key || wt.prefix && strings.HasPrefix(ev.Key, wt.key) {
					mine = append(mine, ev)
				}
			}
			if len(mine) > 0 {
				s.deliver(wt, mine, b.rev)
			}
		}
	}
	s.watch(wt)
	return true
}

// watching reports whether the watcher with id is registered.
func (s *Store) watching(id uint64) bool {
	return slices.ContainsFunc(s.watchers, func(wt *watcher) bool { return wt.id == id })
}

// cancelWatch drops the watcher with id.
func (s *Store) cancelWatch(id uint64) {
	s.watchers = slices.DeleteFunc(s.watchers, func(wt *watcher) bool { return wt.id == id })
}
