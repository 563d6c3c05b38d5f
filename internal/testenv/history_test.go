package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/proto"
)

func TestCheckG1(t *testing.T) {
	ms := func(ids ...string) []proto.Member {
		var out []proto.Member
		for _, id := range ids {
			out = append(out, proto.Member{ID: id, Incarnation: uint64(id[0])})
		}
		return out
	}
	q := func(n uint64, ids ...string) proto.EpochRecord {
		return proto.EpochRecord{Number: n, State: proto.Quiescing, Members: ms(ids...)}
	}
	c := func(n uint64, ids ...string) proto.EpochRecord {
		return proto.EpochRecord{Number: n, State: proto.Connected, Members: ms(ids...)}
	}
	other := c(2, "a", "b")
	other.Members[1].Incarnation++ // b's next incarnation

	tests := []struct {
		name string
		recs []proto.EpochRecord
		want string // "" if the history holds G1; else part of the error
	}{
		{"empty", nil, ""},
		{"first connected directly", []proto.EpochRecord{c(1, "a")}, ""},
		{"quiescing then connected", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), c(2, "a", "b")}, ""},
		{"further change before connect", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), q(3, "a", "b", "c"), c(3, "a", "b", "c")}, ""},
		{"several changes", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), c(2, "a", "b"), q(3, "a"), c(3, "a"), q(4, "a", "c"), c(4, "a", "c")}, ""},
		{"recording starts mid-change", []proto.EpochRecord{q(5, "a", "b"), c(5, "a", "b")}, ""},
		{"recording starts at a connect", []proto.EpochRecord{c(5, "a", "b"), q(6, "a")}, ""},

		{"number zero", []proto.EpochRecord{c(0, "a")}, "epoch number 0"},
		{"number falls", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), q(1, "a")}, "epoch 1 after 2"},
		{"number skips", []proto.EpochRecord{c(1, "a"), q(3, "a", "b")}, "skips"},
		{"quiescing twice, other members", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), q(2, "a", "c")}, "decided twice"},
		{"quiescing twice, same members", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), q(2, "a", "b")}, "quiescing twice"},
		{"quiescing twice around a later number", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), q(2, "a", "b"), c(2, "a", "b")}, "quiescing twice"},
		{"connected with other members", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), c(2, "a", "c")}, "decided twice"},
		{"connected with another incarnation", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), other}, "decided twice"},
		{"connected twice", []proto.EpochRecord{c(1, "a"), q(2, "a", "b"), c(2, "a", "b"), c(2, "a", "b")}, "after it connected"},
		{"first connected twice", []proto.EpochRecord{c(1, "a"), c(1, "a")}, "after it connected"},
		{"quiescing after connected", []proto.EpochRecord{c(1, "a"), q(1, "a")}, "after it connected"},
		{"connected without quiescing", []proto.EpochRecord{c(1, "a"), c(2, "a", "b")}, "without being written quiescing"},
		{"unknown state", []proto.EpochRecord{{Number: 1, State: "odd", Members: ms("a")}}, "unknown state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckG1(tt.recs)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CheckG1 = %v, want the history to pass\n%s", err, Format(tt.recs))
			case tt.want != "" && err == nil:
				t.Errorf("CheckG1 passed, want an error saying %q\n%s", tt.want, Format(tt.recs))
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("CheckG1 = %v, want it to say %q", err, tt.want)
			}
		})
	}
}

// TestWaitForSince: a wait from a mark does not match a record written
// before the mark, however well it fits, but the next one that fits.
func TestWaitForSince(t *testing.T) {
	e := Etcd(t)
	cli := Client(t, e.Endpoints)
	keys := proto.Keys{}
	h := Record(t, cli, keys)
	put := func(r proto.EpochRecord) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, keys.Epoch("g"), string(proto.EncodeEpoch(r))); err != nil {
			t.Fatal(err)
		}
	}
	withA := func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && len(r.Members) == 1 && r.Members[0].ID == "a"
	}
	a := []proto.Member{{ID: "a", Incarnation: 1}}
	put(proto.EpochRecord{Group: "g", Number: 1, State: proto.Connected, Members: a})
	first := h.WaitFor(t, "g", Mark{}, 10*time.Second, "connected with a", withA)
	if first.Number != 1 {
		t.Fatalf("from the beginning: got epoch %d, want 1", first.Number)
	}
	m := h.Mark(t)
	if m.Precedes(first.Rev) {
		t.Fatalf("mark %d taken after epoch 1 (rev %d) was seen precedes it", m.Rev, first.Rev)
	}
	put(proto.EpochRecord{Group: "g", Number: 2, State: proto.Quiescing, Members: a})
	put(proto.EpochRecord{Group: "g", Number: 2, State: proto.Connected, Members: a})
	got := h.WaitFor(t, "g", m, 10*time.Second, "connected with a", withA)
	if got.Number != 2 || !m.Precedes(got.Rev) {
		t.Fatalf("from the mark (rev %d): got epoch %d (rev %d), want epoch 2 written after the mark", m.Rev, got.Number, got.Rev)
	}
	if got.Seen.Before(m.At) {
		t.Errorf("epoch 2 seen at %v, before the mark was taken at %v", got.Seen, m.At)
	}
}
