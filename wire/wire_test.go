package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

const testMax = 1 << 20

// frame builds a frame from a header as given, Length included, so tests
// can build frames AppendFrame would not.
func frame(h Header, payload []byte) []byte {
	b := make([]byte, HeaderSize+len(payload))
	h.Put(b)
	copy(b[HeaderSize:], payload)
	return b
}

// valid returns a valid header of type t for a payload of n bytes.
func valid(t Type, n int) Header {
	h := Header{Version: Version, Type: t, Length: uint32(n), Epoch: 7, Seq: 3}
	switch t {
	case Hello, Welcome, Refuse:
		h.Seq = 0
	}
	switch t {
	case Request, Response, Error, Credit, Ping, Pong:
		h.Arg = 42
	case Refuse:
		h.Arg = uint64(RefuseAhead)
	case Close:
		h.Arg = uint64(CloseStopping)
	}
	return h
}

func testHandshake() Handshake {
	return Handshake{
		Group: "store-1", Epoch: 12, FromID: "node_a.1", FromIncarnation: 0xf2debba1bbd61a38,
		ToID: "node-b", ToIncarnation: 9, Window: 64, HeartbeatMillis: 500,
	}
}

func TestParse(t *testing.T) {
	hs := testHandshake().Append(nil)
	with := func(t Type, n int, f func(*Header)) []byte {
		h := valid(t, n)
		f(&h)
		return frame(h, make([]byte, n))
	}
	type tc struct {
		name  string
		frame []byte
		max   int
		err   error
	}
	cases := []tc{
		{"hello", frame(valid(Hello, len(hs)), hs), testMax, nil},
		{"welcome", frame(valid(Welcome, len(hs)), hs), testMax, nil},
		{"refuse", frame(valid(Refuse, 3), []byte("old")), testMax, nil},
		{"refuse without epoch", with(Refuse, 0, func(h *Header) { h.Epoch = 0 }), testMax, nil},
		{"message", frame(valid(Message, 5), []byte("hello")), testMax, nil},
		{"message empty", frame(valid(Message, 0), nil), testMax, nil},
		{"request", frame(valid(Request, 2), []byte("rq")), testMax, nil},
		{"response", frame(valid(Response, 2), []byte("rs")), testMax, nil},
		{"error", frame(valid(Error, 4), []byte("oops")), testMax, nil},
		{"credit", frame(valid(Credit, 0), nil), testMax, nil},
		{"heartbeat", frame(valid(Heartbeat, 0), nil), testMax, nil},
		{"ping", frame(valid(Ping, 0), nil), testMax, nil},
		{"pong", frame(valid(Pong, 0), nil), testMax, nil},
		{"close", frame(valid(Close, 3), []byte("bye")), testMax, nil},
		{"close no reason", frame(valid(Close, 0), nil), testMax, nil},
		{"payload at max", frame(valid(Message, 16), make([]byte, 16)), 16, nil},
		{"max seq epoch arg", with(Request, 1, func(h *Header) { h.Seq, h.Epoch, h.Arg = 1<<64-1, 1<<64-1, 1<<64-1 }), testMax, nil},

		{"empty", []byte{}, testMax, ErrShort},
		{"nil", nil, testMax, ErrShort},
		{"1 byte", []byte{Version}, testMax, ErrShort},
		{"31 bytes", frame(valid(Heartbeat, 0), nil)[:31], testMax, ErrShort},

		{"version 0", with(Message, 1, func(h *Header) { h.Version = 0 }), testMax, ErrVersion},
		{"version 2", with(Message, 1, func(h *Header) { h.Version = 2 }), testMax, ErrVersion},
		{"version 255", with(Message, 1, func(h *Header) { h.Version = 255 }), testMax, ErrVersion},

		{"type 0", with(Message, 1, func(h *Header) { h.Type = 0 }), testMax, ErrType},
		{"type 13", with(Message, 1, func(h *Header) { h.Type = 13 }), testMax, ErrType},
		{"type 255", with(Message, 1, func(h *Header) { h.Type = 255 }), testMax, ErrType},

		{"flags 1", with(Message, 1, func(h *Header) { h.Flags = 1 }), testMax, ErrMalformed},
		{"flags 0x8000", with(Message, 1, func(h *Header) { h.Flags = 0x8000 }), testMax, ErrMalformed},

		{"length over payload", with(Message, 4, func(h *Header) { h.Length = 5 }), testMax, ErrLength},
		{"length under payload", with(Message, 4, func(h *Header) { h.Length = 3 }), testMax, ErrLength},
		{"length max, no payload", with(Message, 0, func(h *Header) { h.Length = 1<<32 - 1 }), testMax, ErrLength},
		{"length 0, payload", with(Heartbeat, 1, func(h *Header) { h.Length = 0 }), testMax, ErrLength},

		{"payload over max", frame(valid(Message, 17), make([]byte, 17)), 16, ErrTooLarge},
		{"payload over max 0", frame(valid(Message, 1), []byte{1}), 0, ErrTooLarge},
		{"payload with negative max", frame(valid(Message, 1), []byte{1}), -1, ErrTooLarge},

		{"heartbeat payload", frame(valid(Heartbeat, 1), []byte{0}), testMax, ErrMalformed},
		{"heartbeat arg", with(Heartbeat, 0, func(h *Header) { h.Arg = 1 }), testMax, ErrMalformed},
		{"credit zero", with(Credit, 0, func(h *Header) { h.Arg = 0 }), testMax, ErrMalformed},
		{"credit payload", frame(valid(Credit, 1), []byte{0}), testMax, ErrMalformed},
		{"ping ID 0", with(Ping, 0, func(h *Header) { h.Arg = 0 }), testMax, ErrMalformed},
		{"ping payload", frame(valid(Ping, 1), []byte{0}), testMax, ErrMalformed},
		{"pong ID 0", with(Pong, 0, func(h *Header) { h.Arg = 0 }), testMax, ErrMalformed},
		{"pong payload", frame(valid(Pong, 1), []byte{0}), testMax, ErrMalformed},
	}
	for _, typ := range []Type{Request, Response, Error} {
		cases = append(cases, tc{typ.String() + " call ID 0", with(typ, 1, func(h *Header) { h.Arg = 0 }), testMax, ErrMalformed})
	}
	for _, typ := range []Type{Hello, Welcome, Refuse} {
		cases = append(cases, tc{typ.String() + " seq 1", with(typ, 1, func(h *Header) { h.Seq = 1 }), testMax, ErrMalformed})
	}
	for _, typ := range []Type{Message, Request, Response, Error, Credit, Heartbeat, Close, Ping, Pong} {
		cases = append(cases, tc{typ.String() + " seq 0", with(typ, 0, func(h *Header) { h.Seq = 0 }), testMax, ErrMalformed})
	}
	seen := map[Type]bool{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, p, err := Parse(c.frame, c.max)
			if !errors.Is(err, c.err) || (err == nil) != (c.err == nil) {
				t.Fatalf("Parse(%x) = %+v, %v; want %v", c.frame, h, err, c.err)
			}
			if err != nil {
				if h != (Header{}) || p != nil {
					t.Errorf("failed Parse returns %+v, %x; want zero values", h, p)
				}
				return
			}
			seen[h.Type] = true
			if h.Version != c.frame[0] || h.Type != Type(c.frame[1]) || int(h.Length) != len(p) {
				t.Errorf("Parse(%x) = %+v", c.frame, h)
			}
			if !bytes.Equal(p, c.frame[HeaderSize:]) || (len(p) > 0 && &p[0] != &c.frame[HeaderSize]) {
				t.Errorf("payload %x does not alias frame[HeaderSize:]", p)
			}
			if got := AppendFrame(nil, h.Type, h.Epoch, h.Seq, h.Arg, p); !bytes.Equal(got, c.frame) {
				t.Errorf("re-encoded\n%x\nwant\n%x", got, c.frame)
			}
		})
	}
	for typ := Hello; typ <= Pong; typ++ {
		if !seen[typ] {
			t.Errorf("no valid %v frame parsed", typ)
		}
	}
}

func TestHeaderLayout(t *testing.T) {
	h := Header{Version: 1, Type: Request, Flags: 0x0203, Length: 0x04050607, Epoch: 0x08090a0b0c0d0e0f, Seq: 0x1011121314151617, Arg: 0x18191a1b1c1d1e1f}
	b := make([]byte, HeaderSize+1)
	b[HeaderSize] = 0xee
	h.Put(b)
	want := []byte{1, 5, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 0xee}
	if !bytes.Equal(b, want) {
		t.Fatalf("Put wrote\n%x\nwant\n%x", b, want)
	}
	defer func() {
		if recover() == nil {
			t.Error("Put into a short buffer did not panic")
		}
	}()
	h.Put(make([]byte, HeaderSize-1))
}

func TestAppendFrameRoundTrip(t *testing.T) {
	prefix := []byte("prefix")
	for typ := Hello; typ <= Pong; typ++ {
		for _, n := range []int{0, 1, 64, 4096} {
			h := valid(typ, n)
			if typ == Credit || typ == Heartbeat || typ == Ping || typ == Pong {
				if n > 0 {
					continue
				}
			}
			payload := bytes.Repeat([]byte{byte(typ)}, n)
			b := AppendFrame(bytes.Clone(prefix), typ, h.Epoch, h.Seq, h.Arg, payload)
			if !bytes.Equal(b[:len(prefix)], prefix) || len(b) != len(prefix)+HeaderSize+n {
				t.Fatalf("%v/%d: AppendFrame gave %x", typ, n, b)
			}
			got, p, err := Parse(b[len(prefix):], n)
			if err != nil || got != h || !bytes.Equal(p, payload) {
				t.Fatalf("%v/%d: Parse gives %+v, %x, %v; want %+v", typ, n, got, p, err, h)
			}
		}
	}
}

func TestHandshakeRoundTrip(t *testing.T) {
	long := strings.Repeat("x", 255)
	for _, h := range []Handshake{
		testHandshake(),
		{Group: "g", Epoch: 1, FromID: "a", FromIncarnation: 1, ToID: "b", ToIncarnation: 1, Window: 1, HeartbeatMillis: 1},
		{Group: long, Epoch: 1<<64 - 1, FromID: long, FromIncarnation: 1<<64 - 1, ToID: "AZaz09._-", ToIncarnation: 1<<64 - 1, Window: 1<<32 - 1, HeartbeatMillis: 1<<32 - 1},
		{Group: "g", Epoch: 2, FromID: "a", FromIncarnation: 3, ToID: "a", ToIncarnation: 3, Window: 8, HeartbeatMillis: 250, Signature: []byte{}},
	} {
		b := h.Append([]byte("x"))[1:]
		got, err := ParseHandshake(b)
		if err != nil {
			t.Fatalf("ParseHandshake(%x): %v", b, err)
		}
		if len(h.Signature) == 0 {
			h.Signature = nil
		}
		if !reflect.DeepEqual(got, h) {
			t.Fatalf("ParseHandshake(Append(%+v)) = %+v", h, got)
		}
	}

	h := testHandshake()
	h.Signature = bytes.Repeat([]byte{0xab}, 64)
	b := h.Append(nil)
	got, err := ParseHandshake(b)
	if err != ErrSignature || !reflect.DeepEqual(got, h) {
		t.Fatalf("signed handshake: %+v, %v; want %+v, ErrSignature", got, err, h)
	}
	b[len(b)-1] = 0
	if got.Signature[63] != 0xab {
		t.Error("the parsed signature aliases the input")
	}
}

func TestHandshakeLayout(t *testing.T) {
	h := Handshake{Group: "g", Epoch: 2, FromID: "ab", FromIncarnation: 3, ToID: "c", ToIncarnation: 4, Window: 5, HeartbeatMillis: 6, Signature: []byte{7}}
	want := []byte{
		1, 'g', 0, 0, 0, 0, 0, 0, 0, 2,
		2, 'a', 'b', 0, 0, 0, 0, 0, 0, 0, 3,
		1, 'c', 0, 0, 0, 0, 0, 0, 0, 4,
		0, 0, 0, 5, 0, 0, 0, 6,
		0, 1, 7,
	}
	if got := h.Append(nil); !bytes.Equal(got, want) {
		t.Fatalf("Append gave\n%x\nwant\n%x", got, want)
	}
}

func TestParseHandshakeBad(t *testing.T) {
	good := testHandshake()
	body := good.Append(nil)
	for i := range body {
		if _, err := ParseHandshake(body[:i]); err != ErrShort {
			t.Errorf("truncated to %d of %d bytes: %v; want ErrShort", i, len(body), err)
		}
	}
	signed := good
	signed.Signature = []byte{1, 2, 3}
	sbody := signed.Append(nil)
	for i := range sbody {
		if _, err := ParseHandshake(sbody[:i]); err != ErrShort {
			t.Errorf("signed, truncated to %d of %d bytes: %v; want ErrShort", i, len(sbody), err)
		}
	}
	if _, err := ParseHandshake(append(bytes.Clone(body), 0)); err != ErrMalformed {
		t.Errorf("trailing byte: %v; want ErrMalformed", err)
	}
	if _, err := ParseHandshake(append(bytes.Clone(sbody), 0)); err != ErrMalformed {
		t.Errorf("signed, trailing byte: %v; want ErrMalformed", err)
	}

	mod := func(f func(*Handshake)) []byte {
		h := good
		f(&h)
		return h.Append(nil)
	}
	for name, b := range map[string][]byte{
		"empty group":      mod(func(h *Handshake) { h.Group = "" }),
		"empty from":       mod(func(h *Handshake) { h.FromID = "" }),
		"empty to":         mod(func(h *Handshake) { h.ToID = "" }),
		"group with slash": mod(func(h *Handshake) { h.Group = "a/b" }),
		"from with space":  mod(func(h *Handshake) { h.FromID = "a b" }),
		"to with NUL":      mod(func(h *Handshake) { h.ToID = "a\x00" }),
		"to non-ASCII":     mod(func(h *Handshake) { h.ToID = "é" }),
		"group colon":      mod(func(h *Handshake) { h.Group = "g:1" }),
		"zero epoch":       mod(func(h *Handshake) { h.Epoch = 0 }),
		"zero from inc":    mod(func(h *Handshake) { h.FromIncarnation = 0 }),
		"zero to inc":      mod(func(h *Handshake) { h.ToIncarnation = 0 }),
		"zero window":      mod(func(h *Handshake) { h.Window = 0 }),
		"zero heartbeat":   mod(func(h *Handshake) { h.HeartbeatMillis = 0 }),
		"bad name, signed": mod(func(h *Handshake) { h.Group, h.Signature = "a b", []byte{1} }),
		"zero epoch, signed": mod(func(h *Handshake) {
			h.Epoch, h.Signature = 0, []byte{1}
		}),
	} {
		if got, err := ParseHandshake(b); err != ErrMalformed || !reflect.DeepEqual(got, Handshake{}) {
			t.Errorf("%s: %+v, %v; want ErrMalformed", name, got, err)
		}
	}

	// A signature length field that claims more than there is.
	b := bytes.Clone(body)
	binary.BigEndian.PutUint16(b[len(b)-2:], 0xffff)
	if _, err := ParseHandshake(b); err != ErrShort {
		t.Errorf("signature length 65535 with no signature: %v; want ErrShort", err)
	}
	b = append(b, 1, 2, 3)
	if _, err := ParseHandshake(b); err != ErrShort {
		t.Errorf("signature length 65535 with 3 bytes: %v; want ErrShort", err)
	}
	// A name length field that claims more than there is.
	if _, err := ParseHandshake([]byte{200, 'g'}); err != ErrShort {
		t.Errorf("group length 200 with 1 byte: %v; want ErrShort", err)
	}
}

func TestHandshakeAppendPanics(t *testing.T) {
	long := strings.Repeat("x", 256)
	for name, h := range map[string]Handshake{
		"group":     {Group: long},
		"from":      {FromID: long},
		"to":        {ToID: long},
		"signature": {Signature: make([]byte, 1<<16)},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Append with a long %s did not panic", name)
				}
			}()
			h.Append(nil)
		}()
	}
}

func TestStrings(t *testing.T) {
	for v, want := range map[interface{ String() string }]string{
		Hello: "hello", Welcome: "welcome", Refuse: "refuse", Message: "message", Request: "request",
		Response: "response", Error: "error", Credit: "credit", Heartbeat: "heartbeat", Close: "close",
		Ping: "ping", Pong: "pong",
		Type(0): "type(0)", Type(13): "type(13)", Type(255): "type(255)",
		RefuseBehind: "behind", RefuseAhead: "ahead", RefuseNotMember: "not-member", RefuseWrongPeer: "wrong-peer",
		RefuseVersion: "version", RefuseDuplicate: "duplicate", RefuseClosing: "closing",
		RefuseCode(0): "refuse(0)", RefuseCode(8): "refuse(8)", RefuseCode(1<<64 - 1): "refuse(18446744073709551615)",
		CloseEpochEnded: "epoch-ended", CloseStopping: "stopping", CloseProtocol: "protocol", CloseSuspect: "suspect",
		CloseCode(0): "close(0)", CloseCode(5): "close(5)",
	} {
		if got := v.String(); got != want {
			t.Errorf("%#v.String() = %q; want %q", v, got, want)
		}
	}
}

func TestErrors(t *testing.T) {
	all := []error{ErrShort, ErrVersion, ErrType, ErrLength, ErrTooLarge, ErrMalformed, ErrSignature}
	for i, e := range all {
		if !strings.HasPrefix(e.Error(), "idc: wire: ") {
			t.Errorf("%q does not start with \"idc: wire: \"", e)
		}
		for j, f := range all {
			if i != j && errors.Is(e, f) {
				t.Errorf("errors.Is(%v, %v)", e, f)
			}
		}
	}
}

func TestRefuseReason(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"epoch 7 ended", "epoch 7 ended"},
		{"bad \xff byte", "bad \uFFFD byte"},
		{"two \xff\xfe bytes", "two \uFFFD bytes"},
		{strings.Repeat("a", 2000), strings.Repeat("a", 1024)},
		{strings.Repeat("a", 1024), strings.Repeat("a", 1024)},
		// A 2-byte character cut by the limit is dropped, not replaced.
		{strings.Repeat("a", 1023) + "é", strings.Repeat("a", 1023)},
		{strings.Repeat("a", 1022) + "€x", strings.Repeat("a", 1022)},
		{strings.Repeat("a", 1021) + "€x", strings.Repeat("a", 1021) + "€"},
		// Invalid bytes at the cut are still replaced.
		{strings.Repeat("a", 1023) + "\x80\x80", strings.Repeat("a", 1023) + "\uFFFD"},
	} {
		got := RefuseReason([]byte(c.in))
		if got != c.want {
			t.Errorf("RefuseReason(%q…) = %q…; want %q…", trunc(c.in), trunc(got), trunc(c.want))
		}
		if !utf8.ValidString(got) {
			t.Errorf("RefuseReason(%q…) is not valid UTF-8", trunc(c.in))
		}
	}
}

func trunc(s string) string {
	if len(s) > 20 {
		return "…" + s[len(s)-20:]
	}
	return s
}

func TestAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	payload := make([]byte, 64)
	good := AppendFrame(nil, Request, 3, 9, 17, payload)
	bad := bytes.Clone(good)
	bad[1] = 0
	short := good[:HeaderSize-1]
	over := good
	for name, f := range map[string]func(){
		"Parse valid":     func() { _, _, _ = Parse(good, testMax) },
		"Parse bad type":  func() { _, _, _ = Parse(bad, testMax) },
		"Parse short":     func() { _, _, _ = Parse(short, testMax) },
		"Parse too large": func() { _, _, _ = Parse(over, 8) },
		"Header.Put": func() {
			Header{Version: Version, Type: Message, Length: 1, Epoch: 2, Seq: 3}.Put(good)
		},
		"AppendFrame": func() {
			buf := make([]byte, 0, 256) // on the stack: AppendFrame must not move it
			_ = AppendFrame(buf, Request, 3, 9, 17, payload)
		},
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per run; want 0", name, n)
		}
	}
	buf := make([]byte, 0, HeaderSize+len(payload))
	if n := testing.AllocsPerRun(100, func() { buf = AppendFrame(buf[:0], Request, 3, 9, 17, payload) }); n != 0 {
		t.Errorf("AppendFrame into a reused buffer: %v allocations per run; want 0", n)
	}
}

func BenchmarkParse(b *testing.B) {
	f := AppendFrame(nil, Request, 3, 9, 17, make([]byte, 64))
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	for b.Loop() {
		if _, _, err := Parse(f, testMax); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendFrame(b *testing.B) {
	payload := make([]byte, 64)
	buf := make([]byte, 0, HeaderSize+len(payload))
	b.ReportAllocs()
	b.SetBytes(int64(HeaderSize + len(payload)))
	for b.Loop() {
		buf = AppendFrame(buf[:0], Request, 3, 9, 17, payload)
	}
}
