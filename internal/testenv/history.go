package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/proto"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// History records every epoch record and quiesce acknowledgement written in
// the store, in revision order, from a watch started before any domain
// joins, each with the store revision that wrote it and the time the
// recorder received it.
type History struct {
	cli  *clientv3.Client
	keys proto.Keys

	mu      sync.Mutex
	recs    map[string][]Entry
	acks    map[string][]AckEntry
	changed chan struct{}
}

// Entry is one epoch record as the recorder saw it.
type Entry struct {
	proto.EpochRecord
	// Rev is the store revision that wrote the record: records and marks
	// compare by it.
	Rev int64
	// Seen is when the recorder received the record: an upper bound of
	// when it was written.
	Seen time.Time
}

// AckEntry is one quiesce acknowledgement as the recorder saw it.
type AckEntry struct {
	proto.Ack
	Rev  int64
	Seen time.Time
}

// Mark is a point in the store's history, taken with History.Mark. The
// zero Mark is the beginning.
type Mark struct {
	// Rev is the store's revision when the mark was taken: everything
	// written after the mark was taken has a higher revision.
	Rev int64
	// At is when the mark was taken (read before the store was asked).
	At time.Time
}

// Precedes reports whether the mark was taken before the write of
// revision rev was committed.
func (m Mark) Precedes(rev int64) bool { return rev > m.Rev }

// Record starts recording epoch records under keys until the test ends.
func Record(t testing.TB, cli *clientv3.Client, keys proto.Keys) *History {
	h := &History{cli: cli, keys: keys, recs: map[string][]Entry{}, acks: map[string][]AckEntry{}, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	wch := cli.Watch(ctx, keys.Groups(), clientv3.WithPrefix())
	go func() {
		for wr := range wch {
			seen := time.Now()
			for _, ev := range wr.Events {
				p, ok := keys.Parse(string(ev.Kv.Key))
				if !ok || ev.Type != clientv3.EventTypePut {
					continue
				}
				if p.Kind == proto.KindAcks {
					var a proto.Ack
					if json.Unmarshal(ev.Kv.Value, &a) == nil {
						h.mu.Lock()
						h.acks[p.Group] = append(h.acks[p.Group], AckEntry{Ack: a, Rev: ev.Kv.ModRevision, Seen: seen})
						h.notify()
						h.mu.Unlock()
					}
					continue
				}
				if p.Kind != proto.KindEpoch {
					continue
				}
				var rec proto.EpochRecord
				if err := json.Unmarshal(ev.Kv.Value, &rec); err != nil {
					continue
				}
				h.mu.Lock()
				h.recs[p.Group] = append(h.recs[p.Group], Entry{EpochRecord: rec, Rev: ev.Kv.ModRevision, Seen: seen})
				h.notify()
				h.mu.Unlock()
			}
		}
	}()
	return h
}

// notify wakes the waiters. Called with h.mu held.
func (h *History) notify() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// Mark returns the present point of the store's history: records written
// after Mark was called have a higher revision.
func (h *History) Mark(t testing.TB) Mark {
	t.Helper()
	at := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := h.cli.Get(ctx, h.keys.Groups(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("mark: %v", err)
	}
	return Mark{Rev: resp.Header.Revision, At: at}
}

// Records returns the records of group g so far.
func (h *History) Records(g string) []proto.EpochRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]proto.EpochRecord, len(h.recs[g]))
	for i, e := range h.recs[g] {
		out[i] = e.EpochRecord
	}
	return out
}

// Entries returns the records of group g so far, with their revisions and
// the times they were seen.
func (h *History) Entries(g string) []Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Entry(nil), h.recs[g]...)
}

// Acks returns the quiesce acknowledgements written in group g so far.
func (h *History) Acks(g string) []AckEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]AckEntry(nil), h.acks[g]...)
}

// WaitFor waits until a record of group g written after since satisfies
// ok and returns the first such. Records written before since never
// match, however long ago they were seen: pass the zero Mark to match the
// whole history.
func (h *History) WaitFor(t testing.TB, g string, since Mark, timeout time.Duration, what string, ok func(proto.EpochRecord) bool) Entry {
	t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		h.mu.Lock()
		recs, ch := h.recs[g], h.changed
		h.mu.Unlock()
		for ; seen < len(recs); seen++ {
			if r := recs[seen]; since.Precedes(r.Rev) && ok(r.EpochRecord) {
				return r
			}
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("group %s: no epoch record %s written after revision %d within %v; history:\n%s", g, what, since.Rev, timeout, FormatEntries(recs))
		}
	}
}

// WaitForAck waits until an acknowledgement of group g written after since
// satisfies ok and returns the first such.
func (h *History) WaitForAck(t testing.TB, g string, since Mark, timeout time.Duration, what string, ok func(proto.Ack) bool) AckEntry {
	t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		h.mu.Lock()
		acks, ch := h.acks[g], h.changed
		h.mu.Unlock()
		for ; seen < len(acks); seen++ {
			if a := acks[seen]; since.Precedes(a.Rev) && ok(a.Ack) {
				return a
			}
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("group %s: no acknowledgement %s written after revision %d within %v", g, what, since.Rev, timeout)
		}
	}
}

// Format renders records one a line.
func Format(recs []proto.EpochRecord) string {
	s := ""
	for _, r := range recs {
		s += fmt.Sprintf("  %d %-9s %v  (%s)\n", r.Number, r.State, proto.IDs(r.Members), r.Reason)
	}
	return s
}

// FormatEntries renders entries one a line, with their revisions.
func FormatEntries(es []Entry) string {
	s := ""
	for _, e := range es {
		s += fmt.Sprintf("  rev %d seen %s: %d %-9s %v  (%s)\n", e.Rev, e.Seen.Format("15:04:05.000"), e.Number, e.State, proto.IDs(e.Members), e.Reason)
	}
	return s
}

// CheckG1 checks G1 (one authority) on the records of group g.
func (h *History) CheckG1(t testing.TB, g string) {
	t.Helper()
	if err := CheckG1(h.Records(g)); err != nil {
		t.Errorf("G1 violated in group %s: %v\nhistory:\n%s", g, err, FormatEntries(h.Entries(g)))
	}
}

// CheckG1 is the check behind History.CheckG1, on every epoch record
// written in one group, in the order written. Each number is decided once:
//
//   - numbers never fall, nor skip one;
//   - the first record may be connected directly (nothing to quiesce);
//     every later number is written quiescing first, then at most once
//     connected, with the same members;
//   - a number is written quiescing at most once: a second write, even
//     naming the same members, was a second decision (each decision is one
//     compare-and-swap on the record);
//   - nothing is written for a number after it was connected.
func CheckG1(recs []proto.EpochRecord) error {
	type state struct {
		members   []proto.Member
		quiescing bool
		connected bool
	}
	seen := map[uint64]*state{}
	var last uint64
	for i, r := range recs {
		if r.Number == 0 {
			return fmt.Errorf("record %d: epoch number 0", i)
		}
		if i > 0 && r.Number < last {
			return fmt.Errorf("record %d: epoch %d after %d", i, r.Number, last)
		}
		if i > 0 && r.Number > last+1 {
			return fmt.Errorf("record %d: epoch %d skips from %d", i, r.Number, last)
		}
		last = r.Number
		s := seen[r.Number]
		if s == nil {
			s = &state{members: r.Members}
			seen[r.Number] = s
		}
		if !proto.SameMembers(s.members, r.Members) {
			return fmt.Errorf("record %d: epoch %d decided twice: %v then %v", i, r.Number, proto.IDs(s.members), proto.IDs(r.Members))
		}
		if s.connected {
			return fmt.Errorf("record %d: epoch %d written %s after it connected", i, r.Number, r.State)
		}
		switch r.State {
		case proto.Quiescing:
			if s.quiescing {
				return fmt.Errorf("record %d: epoch %d written quiescing twice: decided twice", i, r.Number)
			}
			s.quiescing = true
		case proto.Connected:
			if !s.quiescing && i > 0 {
				return fmt.Errorf("record %d: epoch %d connected without being written quiescing first", i, r.Number)
			}
			s.connected = true
		default:
			return fmt.Errorf("record %d: epoch %d in unknown state %q", i, r.Number, r.State)
		}
	}
	return nil
}
