package proto

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeEpoch checks that DecodeEpoch and json.Unmarshal into an
// EpochRecord agree on every input: both fail, or both succeed with the
// same record. The hand-written decoder of the store form must never accept
// what encoding/json rejects, nor decode anything differently.
func FuzzDecodeEpoch(f *testing.F) {
	for _, r := range []EpochRecord{
		{},
		record(0), record(1), record(3), record(10),
		{Group: "g", Number: 1, State: Connected, Mode: ModeFence, Members: []Member{{ID: "a.b_c-d", Incarnation: 1<<64 - 1, Lease: 1<<63 - 1, TTL: 2500 * time.Millisecond, Priority: -7}}},
		{Group: "g", Number: 3, State: Connected, Members: []Member{{ID: "a", Incarnation: 1, Addr: "tcp://[::1]:80"}, {ID: "b", Incarnation: 2, Addr: "unix:///x/\"y\\"}}},
		{Group: "g\"é\n", Number: 7, State: Connected, Mode: ModeBoth, Reason: "a said \"hi\"\t\u2028", Members: []Member{{ID: "x", Incarnation: 2, Lease: -1, TTL: -time.Millisecond}}},
	} {
		f.Add(EncodeEpoch(r))
		f.Add(must(json.Marshal(r)))
	}
	for _, s := range []string{
		"{\"group\":\"\xff\",\"number\":1,\"members\":[]}", // invalid UTF-8
		"{\"group\":\"g\",\"number\":1,\"members\":[\"a\xc3/1/2/3/0\"]}",
		`{"group":"g","number":1,"members":["a\u002f1/2/3/0"]}`,
		`{"group":"g","number":1,"members":["a,b/1/2/3/0"]}`,
		`{"group":"g","number":2,"state":"connected","mode":"lease","members":["a/1/2/3/0"],"reason":"a said \"hi\"\n\u00e9"}`,
		`{ "group" : "g", "number" : 2, "members" : [ "a/1/2/3/0" ] }`,
		`{"group":"g","number":2,"members":null,"prev":null}`,
		`{"group":"g","number":2,"members":[],"extra":{"x":[1,2]}}`,
		`{"Group":"g","NUMBER":2}`,
		`{"number":07}`,
		`{"group":"g","number":3,"members":[],"written_ms":1764131000000}`,
		`{"group":"g","number":3,"members":[],"written_ms":-5}`,
		`{"group":"g","number":3,"members":[],"written_ms":9223372036854775808}`,
		`{"number":1,"number":2}`,
		`{"number":1,"members":["a/1/2/3"]}`,
		`{"number":1,"members":["a/1/2/3/0/"]}`,
		`{"number":1,"members":["a/1/2/3/0/unix:///p/q"]}`,
		`{"number":1,"members":["a/1/2/3/0",7]}`,
		`null`,
		`{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := DecodeEpoch(data)
		var want EpochRecord
		wantErr := json.Unmarshal(data, &want)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("%q:\nDecodeEpoch   %+v, %v\nencoding/json %+v, %v", data, got, err, want, wantErr)
		}
		if err != nil {
			return
		}
		normalise(&got)
		normalise(&want)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\nDecodeEpoch   %+v\nencoding/json %+v", data, got, want)
		}
	})
}

// normalise makes empty member lists nil, as TestEpochCodecRoundTrip does:
// an empty list and a missing one mean the same.
func normalise(r *EpochRecord) {
	if len(r.Members) == 0 {
		r.Members = nil
	}
	if len(r.Prev) == 0 {
		r.Prev = nil
	}
	if len(r.Excluded) == 0 {
		r.Excluded = nil
	}
}
