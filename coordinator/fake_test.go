package coordinator

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc/clock"
	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// world is a small deterministic store.Store and clock.Clock for the
// coordinator's unit tests and benchmarks: everything runs on the test's
// goroutine. A call's callback is queued, never run within the call, and
// runs when the test drains the queue (run); timers fire as the test
// advances the clock. Transactions apply when their callback runs, unless
// hold says to keep them: those wait in held until the test answers them.
//
// Range operations within one group's keys touch only that group's keys,
// so that the store's own cost stays flat in the number of groups and a
// benchmark measures the coordinator.
type world struct {
	keys proto.Keys
	now  time.Duration

	queue  []func()
	timers []*fakeTimer
	seq    int

	rev      int64
	kv       map[string]store.KV
	byGroup  map[string]map[string]bool // group → its keys
	other    map[string]bool            // keys outside any group
	leases   map[store.LeaseID]time.Duration
	leased   map[store.LeaseID]map[string]bool
	nextID   store.LeaseID
	watchers []*fakeWatch

	// hold, if set, is asked about every transaction: true keeps it in
	// held, unapplied and unanswered, until answer.
	hold func(store.Txn) bool
	held []heldTxn
	// txns counts the transactions the drivers issued (not the test's own).
	txns int
	// renewal, if set, says how the n-th KeepAlive (from 0) is answered:
	// after delay, or (lost) never.
	renewal    func(n int) (delay time.Duration, lost bool)
	keepAlives int
	// failedCmps counts transactions whose compares did not hold.
	failedCmps int
}

type heldTxn struct {
	t    store.Txn
	done func(store.TxnResponse, error)
}

type fakeTimer struct {
	w       *world
	at      time.Duration
	seq     int
	f       func()
	stopped bool
}

func (t *fakeTimer) Stop() bool {
	was := !t.stopped
	t.stopped = true
	i := slices.Index(t.w.timers, t)
	if i < 0 {
		return false
	}
	t.w.timers = slices.Delete(t.w.timers, i, i+1)
	return was
}

type fakeWatch struct {
	w        *world
	key, end string
	fn       func(store.WatchResponse)
	off      bool
}

func (fw *fakeWatch) RequestProgress() {
	fw.w.later(func() {
		if !fw.off {
			fw.fn(store.WatchResponse{Progress: true, Revision: fw.w.rev})
		}
	})
}

func (fw *fakeWatch) Cancel() {
	fw.off = true
	fw.w.watchers = slices.DeleteFunc(fw.w.watchers, func(x *fakeWatch) bool { return x == fw })
}

// fail ends the watch with err, as a store does (the driver must relist).
func (fw *fakeWatch) fail(err error) {
	fw.w.later(func() {
		if !fw.off {
			fw.off = true
			fw.fn(store.WatchResponse{Err: err})
		}
	})
	fw.w.watchers = slices.DeleteFunc(fw.w.watchers, func(x *fakeWatch) bool { return x == fw })
}

func (fw *fakeWatch) covers(key string) bool {
	if fw.end == "" {
		return key == fw.key
	}
	return key >= fw.key && key < fw.end
}

func newWorld() *world {
	return &world{
		keys: proto.Keys{Prefix: "/t"}, now: time.Hour, rev: 1,
		kv: map[string]store.KV{}, byGroup: map[string]map[string]bool{}, other: map[string]bool{},
		leases: map[store.LeaseID]time.Duration{}, leased: map[store.LeaseID]map[string]bool{}, nextID: 100,
	}
}

// clock.Clock

func (w *world) Now() time.Duration { return w.now }

func (w *world) AfterFunc(d time.Duration, f func()) clock.Timer {
	w.seq++
	t := &fakeTimer{w: w, at: w.now + max(d, 0), seq: w.seq, f: f}
	w.timers = append(w.timers, t)
	return t
}

func (w *world) later(f func()) { w.queue = append(w.queue, f) }

// drain runs queued callbacks, and timers due now (a callback's
// AfterFunc(0)), until none is left.
func (w *world) drain() {
	w.run(0)
}

// drainQueue runs queued callbacks until none is left.
func (w *world) drainQueue() {
	for len(w.queue) > 0 {
		f := w.queue[0]
		w.queue = w.queue[1:]
		f()
	}
}

// run drains the queue and fires the timers due within d, in order, then
// leaves the clock d later.
func (w *world) run(d time.Duration) {
	end := w.now + d
	for {
		w.drainQueue()
		if len(w.timers) == 0 {
			break
		}
		t := slices.MinFunc(w.timers, func(a, b *fakeTimer) int {
			if a.at != b.at {
				return int(a.at - b.at)
			}
			return a.seq - b.seq
		})
		if t.at > end {
			break
		}
		t.Stop()
		w.now = max(w.now, t.at)
		t.f()
	}
	w.now = end
}

// pending reports whether a timer is armed.
func (w *world) pending() int { return len(w.timers) }

// store.Store

func (w *world) Grant(ttl, _ time.Duration, done func(store.Lease, error)) {
	w.later(func() {
		w.nextID++
		w.leases[w.nextID] = ttl
		w.leased[w.nextID] = map[string]bool{}
		done(store.Lease{ID: w.nextID, TTL: ttl}, nil)
	})
}

func (w *world) KeepAlive(id store.LeaseID, _ time.Duration, done func(time.Duration, error)) {
	n := w.keepAlives
	w.keepAlives++
	answer := func() {
		ttl, ok := w.leases[id]
		if !ok {
			done(0, store.ErrLeaseNotFound)
			return
		}
		done(ttl, nil)
	}
	if w.renewal != nil {
		delay, lost := w.renewal(n)
		if !lost {
			w.AfterFunc(delay, answer)
		}
		return
	}
	w.later(answer)
}

func (w *world) Revoke(id store.LeaseID, _ time.Duration, done func(error)) {
	w.later(func() {
		err := w.revoke(id)
		if done != nil {
			done(err)
		}
	})
}

func (w *world) revoke(id store.LeaseID) error {
	if _, ok := w.leases[id]; !ok {
		return store.ErrLeaseNotFound
	}
	var ops []store.Op
	for _, k := range slices.Sorted(mapsKeys(w.leased[id])) {
		ops = append(ops, store.Delete(k))
	}
	delete(w.leases, id)
	delete(w.leased, id)
	if len(ops) > 0 {
		w.apply(store.Txn{Then: ops})
	}
	return nil
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (w *world) Txn(t store.Txn, _ time.Duration, done func(store.TxnResponse, error)) {
	w.txns++
	if w.hold != nil && w.hold(t) {
		w.held = append(w.held, heldTxn{t, done})
		return
	}
	w.later(func() { done(w.apply(t)) })
}

// answer applies held transaction i and answers it (err: answers err
// without applying it).
func (w *world) answer(i int, err error) {
	h := w.held[i]
	w.held = slices.Delete(w.held, i, i+1)
	w.later(func() {
		if err != nil {
			h.done(store.TxnResponse{}, err)
			return
		}
		h.done(w.apply(h.t))
	})
}

func (w *world) Watch(r store.WatchRequest, fn func(store.WatchResponse)) store.Watch {
	if r.Rev > 0 && r.Rev <= w.rev {
		panic(fmt.Sprintf("fake store: watch from revision %d, already at %d (no history kept)", r.Rev, w.rev))
	}
	fw := &fakeWatch{w: w, key: r.Key, end: r.End, fn: fn}
	w.watchers = append(w.watchers, fw)
	w.later(func() {
		if !fw.off {
			fn(store.WatchResponse{Created: true, Revision: w.rev})
		}
	})
	return fw
}

// group returns the group a key belongs to, "" if none.
func (w *world) group(key string) string {
	rest, ok := strings.CutPrefix(key, w.keys.Groups())
	if !ok {
		return ""
	}
	g, _, _ := strings.Cut(rest, "/")
	return g
}

// scan returns the keys in [key, end), sorted.
func (w *world) scan(key, end string) []string {
	if end == "" {
		if _, ok := w.kv[key]; ok {
			return []string{key}
		}
		return nil
	}
	in := func(k string) bool { return k >= key && k < end }
	var out []string
	g := w.group(key)
	if g != "" && strings.HasPrefix(key, w.keys.Group(g)) && end <= store.PrefixEnd(w.keys.Group(g)) {
		for k := range w.byGroup[g] {
			if in(k) {
				out = append(out, k)
			}
		}
	} else {
		for k := range w.kv {
			if in(k) {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return out
}

func (w *world) index(key string, add bool) {
	g := w.group(key)
	set := w.other
	if g != "" {
		set = w.byGroup[g]
		if set == nil {
			set = map[string]bool{}
			w.byGroup[g] = set
		}
	}
	if add {
		set[key] = true
	} else {
		delete(set, key)
	}
}

func (w *world) holds(c store.Cmp) bool {
	kv := w.kv[c.Key]
	if c.Create {
		return kv.CreateRev == c.Rev
	}
	return kv.ModRev == c.Rev
}

// apply runs a transaction at once and publishes its changes.
func (w *world) apply(t store.Txn) (store.TxnResponse, error) {
	ok := true
	for _, c := range t.If {
		ok = ok && w.holds(c)
	}
	ops := t.Then
	if !ok {
		ops = t.Else
		w.failedCmps++
	}
	resp := store.TxnResponse{Succeeded: ok}
	var evs []store.Event
	rev := w.rev + 1
	for _, o := range ops {
		switch o.Type {
		case store.OpGet:
			var got []store.KV
			for _, k := range w.scan(o.Key, o.End) {
				got = append(got, w.kv[k])
			}
			resp.Gets = append(resp.Gets, got)
		case store.OpPut:
			if o.Lease != 0 {
				if _, ok := w.leases[o.Lease]; !ok {
					return store.TxnResponse{}, store.ErrLeaseNotFound
				}
			}
			kv, had := w.kv[o.Key]
			if !had {
				kv.CreateRev = rev
				w.index(o.Key, true)
			} else if kv.Lease != 0 {
				delete(w.leased[kv.Lease], o.Key)
			}
			kv.Key, kv.Value, kv.ModRev, kv.Lease = o.Key, o.Value, rev, o.Lease
			if o.Lease != 0 {
				w.leased[o.Lease][o.Key] = true
			}
			w.kv[o.Key] = kv
			evs = append(evs, store.Event{KV: kv})
		case store.OpDelete:
			for _, k := range w.scan(o.Key, o.End) {
				kv := w.kv[k]
				delete(w.kv, k)
				w.index(k, false)
				if kv.Lease != 0 {
					delete(w.leased[kv.Lease], k)
				}
				evs = append(evs, store.Event{Delete: true, KV: store.KV{Key: k, ModRev: rev}})
			}
		}
	}
	if len(evs) > 0 {
		w.rev = rev
		for _, fw := range w.watchers {
			var mine []store.Event
			for _, ev := range evs {
				if fw.covers(ev.KV.Key) {
					mine = append(mine, ev)
				}
			}
			if len(mine) > 0 {
				w.later(func() {
					if !fw.off {
						fw.fn(store.WatchResponse{Events: mine, Revision: rev})
					}
				})
			}
		}
	}
	resp.Revision = w.rev
	return resp, nil
}

// The test's own writes, as members and the operator make them: applied
// at once (their watch events are queued).

func (w *world) write(ops ...store.Op) int64 {
	if _, err := w.apply(store.Txn{Then: ops}); err != nil {
		panic(err)
	}
	return w.rev
}

func jsonOf(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// member returns the member record of domain id, incarnation 1.
func member(id string) proto.Member {
	return proto.Member{ID: id, Incarnation: 1, Lease: 7, TTL: 5 * time.Second}
}

func (w *world) putMember(g string, m proto.Member) store.Op {
	return store.Put(w.keys.Member(g, m.ID), jsonOf(m), 0)
}

// idle returns the operations that make group g connected in epoch 1 with
// members ids: nothing for a coordinator to do.
func (w *world) idle(g string, ids ...string) []store.Op {
	var ms []proto.Member
	var ops []store.Op
	for _, id := range ids {
		m := member(id)
		ms = append(ms, m)
		ops = append(ops, w.putMember(g, m))
	}
	rec := proto.EpochRecord{Group: g, Number: 1, State: proto.Connected, Mode: proto.ModeLease, Members: ms}
	return append(ops, store.Put(w.keys.Epoch(g), proto.EncodeEpoch(rec), 0))
}

// idleGroups writes n idle groups of 3 members, named idle00000…, in
// transactions of 128 operations.
func (w *world) idleGroups(n int) {
	var ops []store.Op
	for i := range n {
		ops = append(ops, w.idle(fmt.Sprintf("idle%05d", i), "a", "b", "c")...)
		if len(ops) >= 128 {
			w.write(ops...)
			ops = nil
		}
	}
	if len(ops) > 0 {
		w.write(ops...)
	}
}

// epoch returns group g's epoch record, if any.
func (w *world) epoch(g string) (proto.EpochRecord, bool) {
	kv, ok := w.kv[w.keys.Epoch(g)]
	if !ok {
		return proto.EpochRecord{}, false
	}
	rec, err := proto.DecodeEpoch(kv.Value)
	if err != nil {
		panic(err)
	}
	return rec, true
}

// ackAll acknowledges group g's quiescing epoch for every survivor, as the
// members would.
func (w *world) ackAll(g string) {
	rec, ok := w.epoch(g)
	if !ok || rec.State != proto.Quiescing {
		return
	}
	var ops []store.Op
	for _, s := range rec.Survivors() {
		ops = append(ops, store.Put(w.keys.Ack(g, rec.Number, s.ID), jsonOf(proto.Ack{Epoch: rec.Number, ID: s.ID, Incarnation: s.Incarnation}), 0))
	}
	if len(ops) > 0 {
		w.write(ops...)
	}
}

// epochWrite returns the group whose epoch record t writes, if it does.
func (w *world) epochWrite(t store.Txn) (string, bool) {
	for _, o := range t.Then {
		if p, ok := w.keys.Parse(o.Key); ok && o.Type == store.OpPut && p.Kind == proto.KindEpoch {
			return p.Group, true
		}
	}
	return "", false
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// leaderConfig is a Leader's configuration on w.
func (w *world) leaderConfig() LeaderConfig {
	return LeaderConfig{
		Store: w, Clock: w, Keys: w.keys,
		Machine: core.Config{
			Mode: proto.ModeLease, QuiesceTimeout: 10 * time.Second, Rho: 0.01, Margin: 100 * time.Millisecond,
			Damping: core.Damping{Drops: -1, Window: time.Minute, Hold: time.Minute},
		},
		OpTimeout: time.Second, WatchCheck: time.Hour, MaxTxnOps: 128,
		WallClock: func() time.Time { return time.Unix(0, 0) },
		Logger:    discard,
	}
}
