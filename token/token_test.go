package token

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, tok := range []Token{
		{Group: "g", Epoch: 1, Domain: "d", Incarnation: 1},
		{Group: "storage-7", Epoch: 1 << 40, Domain: "ft-disk", Incarnation: 0x1234abcd},
		{Group: strings.Repeat("g", MaxName), Epoch: ^uint64(0), Domain: strings.Repeat("é", MaxName/2), Incarnation: ^uint64(0)},
	} {
		b := tok.Append([]byte("prefix"))[len("prefix"):]
		if len(b) != tok.Size() {
			t.Fatalf("%v: %d bytes, Size says %d", tok, len(b), tok.Size())
		}
		got, n, err := Parse(append(b, "trailing"...))
		if err != nil || n != len(b) || got.Group != tok.Group || got.Epoch != tok.Epoch || got.Domain != tok.Domain || got.Incarnation != tok.Incarnation {
			t.Fatalf("%v: parsed %v, %d bytes, %v", tok, got, n, err)
		}
	}
	if MinSize != (Token{Group: "g", Epoch: 1, Domain: "d", Incarnation: 1}).Size() {
		t.Fatal("MinSize is not the size of the smallest token")
	}
}

func TestParseErrors(t *testing.T) {
	good := Token{Group: "g", Epoch: 3, Domain: "d", Incarnation: 2}.Append(nil)
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"version", with(func(b []byte) []byte { b[0] = 2; return b }), ErrVersion},
		{"flags", with(func(b []byte) []byte { b[1] = 1; return b }), ErrMalformed},
		{"truncated", good[:len(good)-1], ErrShort},
		{"name past the end", with(func(b []byte) []byte { b[2] = 200; return b }), ErrShort},
		{"empty group", Token{Group: "", Epoch: 3, Domain: "d", Incarnation: 2}.Append(nil), ErrMalformed},
		{"slash in domain", Token{Group: "g", Epoch: 3, Domain: "a/b", Incarnation: 2}.Append(nil), ErrMalformed},
		{"control character", Token{Group: "g\n", Epoch: 3, Domain: "d", Incarnation: 2}.Append(nil), ErrMalformed},
		{"invalid UTF-8", Token{Group: "g\xff", Epoch: 3, Domain: "d", Incarnation: 2}.Append(nil), ErrMalformed},
		{"epoch 0", Token{Group: "g", Epoch: 0, Domain: "d", Incarnation: 2}.Append(nil), ErrMalformed},
		{"incarnation 0", Token{Group: "g", Epoch: 3, Domain: "d", Incarnation: 0}.Append(nil), ErrMalformed},
		{"sequence number", Token{Group: "g", Epoch: 3, Domain: "d", Incarnation: 2, Seq: 1}.Append(nil), ErrSigned},
		{"signature", Token{Group: "g", Epoch: 3, Domain: "d", Incarnation: 2, Signature: []byte{1, 2}}.Append(nil), ErrSigned},
		{"signature past the end", Token{Group: "g", Epoch: 3, Domain: "d", Incarnation: 2, Signature: []byte{1, 2}}.Append(nil)[:MinSize+1], ErrShort},
	} {
		_, _, err := Parse(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestParseViewAllocates(t *testing.T) {
	b := Token{Group: "group", Epoch: 3, Domain: "domain", Incarnation: 2}.Append(nil)
	if n := testing.AllocsPerRun(1000, func() {
		if _, _, err := ParseView(b); err != nil {
			t.Fatal(err)
		}
		_, _, _ = ParseView(b[:5]) // an error too
	}); n != 0 {
		t.Fatalf("ParseView allocates %v times", n)
	}
}

// FuzzParse: any bytes either parse into a token that encodes back to the
// same bytes, or fail with one of the package's errors; never a panic.
func FuzzParse(f *testing.F) {
	f.Add(Token{Group: "g", Epoch: 3, Domain: "d", Incarnation: 2}.Append(nil))
	f.Add(Token{Group: "storage", Epoch: 1 << 33, Domain: "ft", Incarnation: 7, Seq: 1}.Append(nil))
	f.Add([]byte{1, 0, 1, 'g'})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, n, err := Parse(b)
		if err != nil {
			for _, e := range []error{ErrShort, ErrVersion, ErrMalformed, ErrSigned} {
				if err == e {
					return
				}
			}
			t.Fatalf("error %v is none of the package's", err)
		}
		if n > len(b) || !bytes.Equal(tok.Append(nil), b[:n]) {
			t.Fatalf("%v (%d bytes) does not encode back to %x", tok, n, b[:n])
		}
	})
}
