package block

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/idc-dev/idc/token"
)

var tok = token.Token{Group: "disk1", Epoch: 7, Domain: "ft", Incarnation: 3}.Append(nil)

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []Request{
		{Op: OpWrite, Flags: FlagFUA, Length: 4, Offset: 4096, ID: 1, Token: tok, Data: []byte("abcd")},
		{Op: OpWrite, Length: 0, Offset: 0, ID: 2, Token: tok},
		{Op: OpRead, Length: 65536, Offset: 1 << 40, ID: 3, Token: tok},
		{Op: OpFlush, ID: 4, Token: tok},
		{Op: OpTrim, Length: 512, Offset: 512, ID: 5, Token: tok},
		{Op: OpZero, Flags: FlagFUA, Length: MaxLength, ID: 6, Token: tok},
		{Op: OpRead, Length: 1, ID: 7},
	} {
		b := AppendRequest([]byte("x"), r)[1:]
		got, err := Parse(b)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		if len(got.Token) == 0 {
			got.Token = nil
		}
		if len(r.Token) == 0 {
			r.Token = nil
		}
		if len(got.Data) == 0 && len(r.Data) == 0 {
			got.Data, r.Data = nil, nil
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("round trip: %+v, want %+v", got, r)
		}
	}
}

func TestParseErrors(t *testing.T) {
	w := AppendRequest(nil, Request{Op: OpWrite, Length: 4, ID: 1, Token: tok, Data: []byte("abcd")})
	mod := func(f func([]byte) []byte) []byte { return f(bytes.Clone(w)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"header cut", w[:10], ErrShort},
		{"token cut", w[:requestHeader+3], ErrShort},
		{"payload cut", w[:len(w)-1], ErrShort},
		{"payload too long", append(bytes.Clone(w), 'x'), ErrMalformed},
		{"version", mod(func(b []byte) []byte { b[0] = 9; return b }), ErrVersion},
		{"unknown op", mod(func(b []byte) []byte { b[1] = 9; return b }), ErrMalformed},
		{"unknown flag", mod(func(b []byte) []byte { b[3] |= 2; return b }), ErrMalformed},
		{"FUA on a read", AppendRequest(nil, Request{Op: OpRead, Flags: FlagFUA, Length: 4, Token: tok}), ErrMalformed},
		{"payload on a read", append(AppendRequest(nil, Request{Op: OpRead, Length: 4, Token: tok}), 'x'), ErrMalformed},
		{"flush with a length", AppendRequest(nil, Request{Op: OpFlush, Length: 4, Token: tok}), ErrMalformed},
		{"too large", AppendRequest(nil, Request{Op: OpRead, Length: MaxLength + 1, Token: tok}), ErrTooLarge},
	} {
		if _, err := Parse(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestAnswers(t *testing.T) {
	for _, a := range []Answer{
		{Status: StatusOK, ID: 9, Data: []byte("data")},
		{Status: StatusOK, ID: 10},
		{Status: StatusFenced, ID: 11, Data: []byte("stale epoch")},
		{Status: StatusShutdown, ID: 12},
	} {
		got, err := ParseAnswer(AppendAnswer(nil, a))
		if err != nil || got.Status != a.Status || got.ID != a.ID || !bytes.Equal(got.Data, a.Data) {
			t.Fatalf("%+v: %+v, %v", a, got, err)
		}
	}
	for _, tc := range []struct {
		s    Status
		want error
	}{{StatusFenced, ErrFenced}, {StatusInvalid, ErrInvalid}, {StatusIO, ErrIO}, {StatusShutdown, ErrShutdown}} {
		if err := (Answer{Status: tc.s, Data: []byte("why")}).Err(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v", tc.s, err)
		}
	}
	if err := (Answer{Status: StatusOK}).Err(); err != nil {
		t.Fatal(err)
	}
	ok := AppendAnswer(nil, Answer{Status: StatusOK, ID: 1, Data: []byte("ab")})
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"short", ok[:5], ErrShort},
		{"data cut", ok[:len(ok)-1], ErrShort},
		{"data too long", append(bytes.Clone(ok), 'x'), ErrMalformed},
		{"status", append([]byte{Version, 0}, ok[2:]...), ErrMalformed},
		{"version", append([]byte{2}, ok[1:]...), ErrVersion},
	} {
		if _, err := ParseAnswer(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestParseAllocates(t *testing.T) {
	w := AppendRequest(nil, Request{Op: OpWrite, Length: 4096, ID: 1, Token: tok, Data: make([]byte, 4096)})
	a := AppendAnswer(nil, Answer{Status: StatusOK, ID: 1, Data: make([]byte, 4096)})
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := Parse(w); err != nil {
			t.Fatal(err)
		}
		if _, err := ParseAnswer(a); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// FuzzParse: any bytes either parse into a request that encodes back to
// the same bytes, or fail with one of the package's errors.
func FuzzParse(f *testing.F) {
	f.Add(AppendRequest(nil, Request{Op: OpWrite, Flags: FlagFUA, Length: 4, Offset: 512, ID: 1, Token: tok, Data: []byte("abcd")}))
	f.Add(AppendRequest(nil, Request{Op: OpFlush, ID: 2, Token: tok}))
	f.Add(AppendAnswer(nil, Answer{Status: StatusFenced, ID: 3, Data: []byte("no")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := Parse(b); err == nil {
			if !bytes.Equal(AppendRequest(nil, r), b) {
				t.Fatalf("%+v does not encode back to %x", r, b)
			}
		} else if !errors.Is(err, ErrShort) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Parse: error %v is none of the package's", err)
		}
		if a, err := ParseAnswer(b); err == nil {
			if !bytes.Equal(AppendAnswer(nil, a), b) {
				t.Fatalf("%+v does not encode back to %x", a, b)
			}
		} else if !errors.Is(err, ErrShort) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("ParseAnswer: error %v is none of the package's", err)
		}
	})
}
