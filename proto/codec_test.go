package proto

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func record(n int) EpochRecord {
	var ms []Member
	for i := range n {
		ms = append(ms, Member{ID: fmt.Sprintf("m%03d", i), Incarnation: 0xf2debba1bbd61a38 + uint64(i), Lease: 7587890123456789 + int64(i), TTL: 5 * time.Second, Priority: i % 3})
	}
	return EpochRecord{Group: "g", Number: 123, State: Quiescing, Mode: ModeLease, Members: ms, Prev: ms[:max(0, n-1)], PrevNumber: 122, Reason: "x joined", Excluded: ms[n/2 : n/2+min(n, 1)]}
}

func TestEpochCodecRoundTrip(t *testing.T) {
	for _, tc := range []EpochRecord{
		record(0), record(1), record(100),
		{Group: "g", Number: 1, State: Connected, Mode: ModeFence, Members: []Member{{ID: "a.b_c-d", Incarnation: 1<<64 - 1, Lease: 1<<63 - 1, TTL: 2500 * time.Millisecond, Priority: -7}}},
		{Group: "g", Number: 2, State: Connected, Mode: ModeLease, Members: []Member{
			{ID: "a", Incarnation: 1, TTL: time.Second, Addr: "tcp://127.0.0.1:4001"},
			{ID: "b", Incarnation: 2, TTL: time.Second, Addr: "unix:///run/idc/b.sock"},
			{ID: "c", Incarnation: 3, TTL: time.Second, Addr: "unix:///tmp/a \"q\"\\ \x01/x"},
			{ID: "d", Incarnation: 4, TTL: time.Second},
		}},
	} {
		for name, enc := range map[string][]byte{"store": EncodeEpoch(tc), "verbose": must(json.Marshal(tc))} {
			var got EpochRecord
			if err := json.Unmarshal(enc, &got); err != nil {
				t.Fatalf("%s form: %v\n%s", name, err, enc)
			}
			direct, err := DecodeEpoch(enc)
			if err != nil || !reflect.DeepEqual(direct, got) {
				t.Fatalf("%s form: DecodeEpoch gives %+v, %v; json.Unmarshal %+v", name, direct, err, got)
			}
			want := tc
			if len(want.Members) == 0 { // both forms keep an empty member list empty
				want.Members, got.Members = nil, nil
			}
			if len(want.Prev) == 0 {
				want.Prev = nil
			}
			if len(want.Excluded) == 0 {
				want.Excluded = nil
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s form round trip:\n got %+v\nwant %+v\n%s", name, got, want, enc)
			}
		}
	}
}

func TestEpochCodecRejectsBadMembers(t *testing.T) {
	for _, bad := range []string{
		`{"number":1,"members":["a/1/2/3"]}`,
		`{"number":1,"members":["a/zz/2/3/0"]}`,
		`{"number":1,"members":["/1/2/3/0"]}`,
		`{"number":1,"members":["a/1/2/3/0",7]}`,
		`{"number":1,"members":{"a":1}}`,
		`{"number":1,"members":["a/1/2/3/0"`,
		`{"number":1,"members":0}`,
		`{"number":1,"prev":"a/1/2/3/0"}`,
	} {
		var r EpochRecord
		if err := json.Unmarshal([]byte(bad), &r); err == nil {
			t.Errorf("%s: decoded as %+v, want an error", bad, r)
		}
		if r, err := DecodeEpoch([]byte(bad)); err == nil {
			t.Errorf("%s: DecodeEpoch gives %+v, want an error", bad, r)
		}
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkDecodeEpoch compares the two forms of a 100-member record.
func BenchmarkDecodeEpoch(b *testing.B) {
	rec := record(100)
	for name, enc := range map[string][]byte{"store": EncodeEpoch(rec), "verbose": must(json.Marshal(rec))} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				if _, err := DecodeEpoch(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSetOperations checks Survivors, Departed and SameMembers on sorted
// lists (the merge) and unsorted ones (the general path) alike.
func TestSetOperations(t *testing.T) {
	m := func(id string, inc uint64) Member { return Member{ID: id, Incarnation: inc} }
	a1, b2, b3, c3, d4 := m("a", 1), m("b", 2), m("b", 3), m("c", 3), m("d", 4)
	for _, tc := range []struct {
		name               string
		members, prev      []Member
		survivors, departd []string
		same               bool
	}{
		{"join", []Member{a1, b2, c3}, []Member{a1, b2}, []string{"a/1", "b/2"}, nil, false},
		{"leave", []Member{a1}, []Member{a1, b2}, []string{"a/1"}, []string{"b/2"}, false},
		{"new incarnation", []Member{a1, b3}, []Member{a1, b2}, []string{"a/1"}, []string{"b/2"}, false},
		{"same", []Member{a1, b2, d4}, []Member{a1, b2, d4}, []string{"a/1", "b/2", "d/4"}, nil, true},
		{"disjoint", []Member{c3, d4}, []Member{a1, b2}, nil, []string{"a/1", "b/2"}, false},
		{"unsorted", []Member{d4, a1, b2}, []Member{b2, c3, a1}, []string{"a/1", "b/2"}, []string{"c/3"}, false},
		{"unsorted same", []Member{d4, a1}, []Member{a1, d4}, []string{"d/4", "a/1"}, nil, true},
	} {
		r := &EpochRecord{Members: tc.members, Prev: tc.prev}
		refs := func(ms []Member) []string {
			var out []string
			for _, m := range ms {
				out = append(out, fmt.Sprintf("%s/%d", m.ID, m.Incarnation))
			}
			return out
		}
		if got := refs(r.Survivors()); !reflect.DeepEqual(got, tc.survivors) {
			t.Errorf("%s: survivors %v, want %v", tc.name, got, tc.survivors)
		}
		if got := refs(r.Departed()); !reflect.DeepEqual(got, tc.departd) {
			t.Errorf("%s: departed %v, want %v", tc.name, got, tc.departd)
		}
		if got := SameMembers(tc.members, tc.prev); got != tc.same {
			t.Errorf("%s: same %v, want %v", tc.name, got, tc.same)
		}
	}
}

// TestDecodeEpochOddInputs: escapes in the reason, whitespace, nulls and
// unknown fields all decode as encoding/json decodes them.
func TestDecodeEpochOddInputs(t *testing.T) {
	for _, in := range []string{
		`{"group":"g","number":2,"state":"connected","mode":"lease","members":["a/1/2/3/0"],"reason":"a said \"hi\"\n\u00e9"}`,
		`{ "group" : "g", "number" : 2, "members" : [ "a/1/2/3/0" ] }`,
		`{"group":"g","number":2,"members":null,"prev":null}`,
		`{"group":"g","number":2,"members":[],"extra":{"x":[1,2]}}`,
		`{"number":07}`,
		`{}`,
	} {
		var want EpochRecord
		wantErr := json.Unmarshal([]byte(in), &want)
		got, err := DecodeEpoch([]byte(in))
		if (err != nil) != (wantErr != nil) || err == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n DecodeEpoch %+v, %v\nencoding/json %+v, %v", in, got, err, want, wantErr)
		}
	}
}
