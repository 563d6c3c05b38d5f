package coordinator

import (
	"fmt"
	"math/bits"
	"slices"
	"testing"
	"time"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// change makes one epoch change in group g on w, as its members would: x
// joins (or, if a member, leaves gracefully), every survivor acknowledges
// the quiescing epoch, and the change connects. It fails t unless the
// group is connected with the members expected afterwards.
func change(t testing.TB, w *world, g string, x proto.Member) {
	rec, _ := w.epoch(g)
	want := proto.IDs(rec.Members)
	if proto.Contains(rec.Members, x.Ref()) {
		w.write(store.Put(w.keys.Left(g, x.ID), jsonOf(proto.Left{ID: x.ID, Incarnation: x.Incarnation}), 0), store.Delete(w.keys.Member(g, x.ID)))
		want = slices.DeleteFunc(want, func(id string) bool { return id == x.ID })
	} else {
		w.write(w.putMember(g, x))
		want = append(want, x.ID)
		slices.Sort(want)
	}
	w.drain()
	w.ackAll(g)
	w.drain()
	rec, _ = w.epoch(g)
	if rec.State != proto.Connected || !slices.Equal(proto.IDs(rec.Members), want) {
		t.Fatalf("group %s: epoch %d %s with %v, want connected with %v", g, rec.Number, rec.State, proto.IDs(rec.Members), want)
	}
}

// BenchmarkLeaderEvent is the coordinator's work for one epoch change of
// one group (a member joins or leaves: its watch event, the quiescing
// write, the acknowledgements, the connect write, the cleanup a second
// later) beside idle groups of 3 members each, on an in-memory store
// whose own cost does not grow with the number of groups. The time per
// change must stay flat in the number of idle groups.
func BenchmarkLeaderEvent(b *testing.B) {
	for _, idle := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("idle=%d", idle), func(b *testing.B) {
			w := newWorld()
			w.idleGroups(idle)
			w.write(w.idle("active", "a", "b", "c")...)
			l := StartLeader(w.leaderConfig())
			defer l.Stop()
			w.run(0)
			x := member("x")
			before := l.stats
			for b.Loop() {
				change(b, w, "active", x)
				w.run(time.Second) // the cleanup
			}
			b.ReportMetric(float64(l.stats.deadlines-before.deadlines)/float64(b.N), "deadlines/op")
			b.ReportMetric(float64(l.stats.updates-before.updates)/float64(b.N), "updates/op")
		})
	}
}

// events is how many times the leader's machines were handed something:
// a view, a tick or the outcome of an action.
func (s leaderStats) events() int { return s.updates + s.ticks + s.finished }

// TestLeaderBurstCostsTouchedGroups: a domain joins every one of n groups
// at once (one watch response of n events); every group changes epoch
// and connects. The leader's work is counted, not timed: each machine
// event costs exactly one NextDeadline evaluation (none for the groups
// it did not touch), the events per group do not grow with n, and the
// heap of deadlines does O(log n) comparisons per event — O(n log n) for
// the burst, where recomputing every group's deadline after each event
// was O(n²).
func TestLeaderBurstCostsTouchedGroups(t *testing.T) {
	sizes := []int{1, 10, 1000}
	if !testing.Short() {
		sizes = append(sizes, 5000)
	}
	perGroup := 0
	for _, n := range sizes {
		t.Run(fmt.Sprintf("groups=%d", n), func(t *testing.T) {
			w := newWorld()
			var names []string
			var ops []store.Op
			for i := range n {
				g := fmt.Sprintf("g%05d", i)
				names = append(names, g)
				ops = append(ops, w.idle(g, "a", "b", "c")...)
			}
			for i := 0; i < len(ops); i += 128 {
				w.write(ops[i:min(i+128, len(ops))]...)
			}
			l := StartLeader(w.leaderConfig())
			defer l.Stop()
			w.run(0)
			start, cmp0 := l.stats, l.dl.compares

			x := member("x")
			ops = nil
			for _, g := range names {
				ops = append(ops, w.putMember(g, x))
			}
			w.write(ops...) // one revision, one watch response
			w.drain()
			for _, g := range names {
				w.ackAll(g)
			}
			w.run(2 * time.Second) // the connects, then the cleanups
			for _, g := range names {
				rec, _ := w.epoch(g)
				if rec.Number != 2 || rec.State != proto.Connected || len(rec.Members) != 4 {
					t.Fatalf("group %s: epoch %d %s with %v, want 2 connected with a, b, c, x", g, rec.Number, rec.State, proto.IDs(rec.Members))
				}
			}

			s := l.stats
			events := s.events() - start.events()
			deadlines := s.deadlines - start.deadlines
			compares := l.dl.compares - cmp0
			t.Logf("%d groups: %d machine events, %d deadline evaluations, %d heap comparisons", n, events, deadlines, compares)
			if deadlines != events {
				t.Errorf("%d deadline evaluations for %d machine events: want exactly one each", deadlines, events)
			}
			if events%n != 0 {
				t.Errorf("%d machine events for %d groups: not the same number per group", events, n)
			}
			switch {
			case perGroup == 0:
				perGroup = events / n
			case events != perGroup*n:
				t.Errorf("%d machine events for %d groups, want %d: %d per group as with fewer groups", events, n, perGroup*n, perGroup)
			}
			// container/heap: a push or fix sifts up or down, at most
			// 2·log2(n) comparisons; a pop or removal, log2(n) down and up.
			if bound := events * 2 * (bits.Len(uint(n)) + 1); compares > bound {
				t.Errorf("%d heap comparisons for %d events on %d groups, want at most %d (O(log n) each)", compares, events, n, bound)
			}
		})
	}
}

// quiescing returns the operations that put group g in epoch 2,
// quiescing, with members a and b, of which only a acknowledged, and a
// quiesce timeout of its own.
func (w *world) quiescing(g string, timeout time.Duration) []store.Op {
	a, b := member("a"), member("b")
	rec := proto.EpochRecord{Group: g, Number: 2, State: proto.Quiescing, Mode: proto.ModeLease,
		Members: []proto.Member{a, b}, Prev: []proto.Member{a, b}, PrevNumber: 1}
	return []store.Op{
		w.putMember(g, a), w.putMember(g, b),
		store.Put(w.keys.Epoch(g), proto.EncodeEpoch(rec), 0),
		store.Put(w.keys.Ack(g, 2, "a"), jsonOf(proto.Ack{Epoch: 2, ID: "a", Incarnation: 1}), 0),
		store.Put(w.keys.Config(g), jsonOf(proto.GroupConfig{QuiesceTimeoutMillis: timeout.Milliseconds()}), 0),
	}
}

// TestLeaderTimerFiresDueGroups: groups whose quiesce deadlines fall at
// different times are each ticked when theirs passes — every group of a
// deadline shared by many, none before its time, none that is not due.
func TestLeaderTimerFiresDueGroups(t *testing.T) {
	w := newWorld()
	timeouts := []time.Duration{time.Second, 2 * time.Second, 5 * time.Second}
	const per = 20
	var groups [3][]string
	for i := range per * len(timeouts) {
		g := fmt.Sprintf("q%03d", i)
		groups[i%3] = append(groups[i%3], g)
		w.write(w.quiescing(g, timeouts[i%3])...)
	}
	w.idleGroups(100)
	l := StartLeader(w.leaderConfig())
	defer l.Stop()
	w.hold = func(t store.Txn) bool { _, ok := w.epochWrite(t); return ok }
	w.run(0)
	elapsed := time.Duration(0)
	for k, d := range timeouts {
		w.run(d - time.Millisecond - elapsed)
		if n := len(w.held); n != k*per {
			t.Fatalf("%v before the %v deadlines: %d epoch writes, want %d", d-time.Millisecond, d, n, k*per)
		}
		ticks := l.stats.ticks
		w.run(time.Millisecond)
		elapsed = d
		if n := len(w.held); n != (k+1)*per {
			t.Fatalf("at the %v deadlines: %d epoch writes, want %d", d, n, (k+1)*per)
		}
		if got := l.stats.ticks - ticks; got != per {
			t.Errorf("at the %v deadlines: %d groups ticked, want the %d due", d, got, per)
		}
		var wrote []string
		for _, h := range w.held[k*per:] {
			g, _ := w.epochWrite(h.t)
			wrote = append(wrote, g)
		}
		slices.Sort(wrote)
		if !slices.Equal(wrote, groups[k]) {
			t.Errorf("at the %v deadlines wrote %v, want %v", d, wrote, groups[k])
		}
	}
}

// TestLeaderRearmsForEarlierDeadline: with the timer armed for a
// deadline 10 s away, a deadline that moves earlier — a retry of another
// group, the same group's shorter quiesce timeout — is met on time, not
// when the timer happens to fire.
func TestLeaderRearmsForEarlierDeadline(t *testing.T) {
	for _, tc := range []struct {
		name  string
		group string        // whose epoch write is watched
		event func(*world)  // moves a deadline earlier
		early time.Duration // the new deadline, from the event
	}{
		{"retry of another group", "fast", func(w *world) {
			w.write(w.putMember("fast", member("x")))
			w.drain()
			if len(w.held) != 1 {
				t.Fatalf("%d epoch writes of group fast held, want 1", len(w.held))
			}
			w.answer(0, store.ErrUnavailable)
		}, core.RetryDelay},
		{"shorter timeout of the same group", "slow", func(w *world) {
			w.write(store.Put(w.keys.Config("slow"), jsonOf(proto.GroupConfig{QuiesceTimeoutMillis: 2000}), 0))
		}, time.Second}, // 2 s from when it was first seen quiescing, a second ago
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			w.write(w.quiescing("slow", 10*time.Second)...)
			w.write(w.idle("fast", "a", "b", "c")...)
			l := StartLeader(w.leaderConfig())
			defer l.Stop()
			w.hold = func(t store.Txn) bool { g, ok := w.epochWrite(t); return ok && g == tc.group }
			w.run(time.Second)
			tc.event(w)
			w.run(tc.early - time.Millisecond)
			if len(w.held) != 0 {
				t.Fatalf("group %s wrote %v after the event, before its deadline", tc.group, tc.early-time.Millisecond)
			}
			w.run(time.Millisecond)
			if len(w.held) != 1 {
				t.Fatalf("group %s did not write %v after the event, at its deadline (timer still armed for 10 s?)", tc.group, tc.early)
			}
		})
	}
}

// TestLeaderRelistUpdatesEveryGroupOnce: after the watch fails, the
// leader lists again and hands every group's machine its view exactly
// once; a change made while it was not watching is seen, and a deadline
// kept from before the relist still fires on time.
func TestLeaderRelistUpdatesEveryGroupOnce(t *testing.T) {
	w := newWorld()
	const n = 50
	w.idleGroups(n)
	w.write(w.quiescing("q", time.Second)...)
	l := StartLeader(w.leaderConfig())
	defer l.Stop()
	w.hold = func(t store.Txn) bool { _, ok := w.epochWrite(t); return ok }
	w.run(0)
	if len(w.watchers) != 1 {
		t.Fatalf("%d watches, want 1", len(w.watchers))
	}
	w.watchers[0].fail(store.ErrCompacted)
	w.drain()
	w.write(w.putMember("idle00007", member("x"))) // unwatched
	updates := l.stats.updates
	w.run(500 * time.Millisecond) // the relist
	if got := l.stats.updates - updates; got != n+1 {
		t.Errorf("relist handed %d views to machines, want %d (every group once)", got, n+1)
	}
	if len(w.held) != 1 {
		t.Fatalf("%d epoch writes after the relist, want 1 (the join in idle00007)", len(w.held))
	}
	if g, _ := w.epochWrite(w.held[0].t); g != "idle00007" {
		t.Fatalf("wrote the epoch of %s, want idle00007", g)
	}
	w.run(500*time.Millisecond - time.Millisecond)
	if len(w.held) != 1 {
		t.Fatalf("group q wrote before its quiesce deadline")
	}
	w.run(time.Millisecond)
	if len(w.held) != 2 {
		t.Fatalf("group q did not write at its quiesce deadline after the relist")
	}
}

// TestLeaderWritesOfGroupsInFlightAtOnce: with group A's epoch write
// unanswered, group B's is issued all the same (groups do not wait for
// each other); A's further changes wait for its write (one
// compare-and-swap per decision, G1), and every write applies.
func TestLeaderWritesOfGroupsInFlightAtOnce(t *testing.T) {
	w := newWorld()
	w.write(w.idle("A", "a", "b", "c")...)
	w.write(w.idle("B", "a", "b", "c")...)
	l := StartLeader(w.leaderConfig())
	defer l.Stop()
	w.hold = func(t store.Txn) bool { _, ok := w.epochWrite(t); return ok }
	w.run(0)
	w.write(w.putMember("A", member("x")))
	w.drain()
	w.write(w.putMember("B", member("x")))
	w.drain()
	var inFlight []string
	for _, h := range w.held {
		g, _ := w.epochWrite(h.t)
		inFlight = append(inFlight, g)
	}
	if !slices.Equal(inFlight, []string{"A", "B"}) {
		t.Fatalf("epoch writes in flight: %v, want A's and B's at once", inFlight)
	}
	w.write(w.putMember("A", member("y"))) // while A's write is unanswered
	w.drain()
	if len(w.held) != 2 {
		t.Fatalf("%d epoch writes in flight after another change of A, want still 2", len(w.held))
	}
	writes := map[string]int{}
	for steps := 0; len(w.held) > 0 && steps < 20; steps++ {
		for len(w.held) > 0 {
			g, _ := w.epochWrite(w.held[0].t)
			writes[g]++
			w.answer(0, nil)
		}
		w.drain()
		w.ackAll("A")
		w.ackAll("B")
		w.drain()
	}
	for g, want := range map[string][]string{"A": {"a", "b", "c", "x", "y"}, "B": {"a", "b", "c", "x"}} {
		rec, _ := w.epoch(g)
		if rec.State != proto.Connected || !slices.Equal(proto.IDs(rec.Members), want) {
			t.Errorf("group %s: epoch %d %s with %v, want connected with %v", g, rec.Number, rec.State, proto.IDs(rec.Members), want)
		}
	}
	// A: quiescing 2 (x), quiescing 3 (x, y), connected 3; B: quiescing
	// 2, connected 2 — each write one compare-and-swap that applied.
	if writes["A"] != 3 || writes["B"] != 2 {
		t.Errorf("epoch writes %v, want A 3 and B 2", writes)
	}
	if w.failedCmps != 0 {
		t.Errorf("%d compare-and-swaps failed, want none", w.failedCmps)
	}
}
