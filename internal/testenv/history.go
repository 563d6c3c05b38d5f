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

// History records every epoch record written in the store, in revision
// order, from a watch started before any domain joins.
type History struct {
	mu      sync.Mutex
	recs    map[string][]proto.EpochRecord
	acks    map[string][]proto.Ack
	changed chan struct{}
}

// Record starts recording epoch records under keys until the test ends.
func Record(t testing.TB, cli *clientv3.Client, keys proto.Keys) *History {
	h := &History{recs: map[string][]proto.EpochRecord{}, acks: map[string][]proto.Ack{}, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	wch := cli.Watch(ctx, keys.Groups(), clientv3.WithPrefix())
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				p, ok := keys.Parse(string(ev.Kv.Key))
				if !ok || ev.Type != clientv3.EventTypePut {
					continue
				}
				if p.Kind == proto.KindAcks {
					var a proto.Ack
					if json.Unmarshal(ev.Kv.Value, &a) == nil {
						h.mu.Lock()
						h.acks[p.Group] = append(h.acks[p.Group], a)
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
				h.recs[p.Group] = append(h.recs[p.Group], rec)
				close(h.changed)
				h.changed = make(chan struct{})
				h.mu.Unlock()
			}
		}
	}()
	return h
}

// Records returns the records of group g so far.
func (h *History) Records(g string) []proto.EpochRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]proto.EpochRecord(nil), h.recs[g]...)
}

// Acks returns the quiesce acknowledgements written in group g so far.
func (h *History) Acks(g string) []proto.Ack {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]proto.Ack(nil), h.acks[g]...)
}

// WaitFor waits until a record of group g satisfies ok and returns it.
func (h *History) WaitFor(t testing.TB, g string, timeout time.Duration, what string, ok func(proto.EpochRecord) bool) proto.EpochRecord {
	t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		h.mu.Lock()
		recs, ch := h.recs[g], h.changed
		h.mu.Unlock()
		for ; seen < len(recs); seen++ {
			if ok(recs[seen]) {
				return recs[seen]
			}
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("group %s: no epoch record %s within %v; history:\n%s", g, what, timeout, Format(recs))
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

// CheckG1 checks G1 (one authority) on the records of group g: numbers
// never fall, each number is decided once (all its records name the same
// members), and a number is connected only after it was quiescing, except
// the first, and never connected twice.
func (h *History) CheckG1(t testing.TB, g string) {
	t.Helper()
	if err := CheckG1(h.Records(g)); err != nil {
		t.Errorf("G1 violated in group %s: %v\nhistory:\n%s", g, err, Format(h.Records(g)))
	}
}

// CheckG1 is the check behind History.CheckG1.
func CheckG1(recs []proto.EpochRecord) error {
	decided := map[uint64][]proto.Member{}
	connected := map[uint64]bool{}
	var last uint64
	for i, r := range recs {
		if r.Number < last {
			return fmt.Errorf("record %d: epoch %d after %d", i, r.Number, last)
		}
		if r.Number > last+1 && last != 0 {
			return fmt.Errorf("record %d: epoch %d skips from %d", i, r.Number, last)
		}
		last = r.Number
		if ms, ok := decided[r.Number]; ok && !proto.SameMembers(ms, r.Members) {
			return fmt.Errorf("epoch %d decided twice: %v then %v", r.Number, proto.IDs(ms), proto.IDs(r.Members))
		}
		decided[r.Number] = r.Members
		if r.State == proto.Connected {
			if connected[r.Number] {
				return fmt.Errorf("epoch %d connected twice", r.Number)
			}
			connected[r.Number] = true
		}
	}
	return nil
}
