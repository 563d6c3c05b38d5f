package wire

import (
	"bytes"
	"testing"
)

// FuzzParse checks that Parse never panics and that what it accepts is
// exactly what AppendFrame writes: re-encoding the header and payload of a
// parsed frame gives back the input, byte for byte.
func FuzzParse(f *testing.F) {
	hs := testHandshake().Append(nil)
	for _, b := range [][]byte{
		AppendFrame(nil, Hello, 1, 0, 0, hs),
		AppendFrame(nil, Welcome, 1, 0, 0, hs),
		AppendFrame(nil, Refuse, 4, 0, uint64(RefuseAhead), []byte("epoch 3 ended")),
		AppendFrame(nil, Message, 7, 1, 0, []byte("m")),
		AppendFrame(nil, Request, 7, 2, 1, []byte("rq")),
		AppendFrame(nil, Response, 7, 2, 1, []byte("rs")),
		AppendFrame(nil, Error, 7, 3, 1, []byte("no such method")),
		AppendFrame(nil, Credit, 7, 4, 64, nil),
		AppendFrame(nil, Heartbeat, 7, 5, 0, nil),
		AppendFrame(nil, Close, 7, 6, uint64(CloseEpochEnded), []byte("bye")),
		AppendFrame(nil, Ping, 7, 7, 9, nil),
		AppendFrame(nil, Pong, 7, 7, 9, nil),
		// Invalid: short, wrong version, unknown type, flags, length,
		// per-type rules.
		nil,
		{Version},
		AppendFrame(nil, Message, 7, 1, 0, nil)[:HeaderSize-1],
		append([]byte{2}, AppendFrame(nil, Message, 7, 1, 0, nil)[1:]...),
		append([]byte{Version, 13}, AppendFrame(nil, Message, 7, 1, 0, nil)[2:]...),
		append([]byte{Version, byte(Message), 0, 1}, AppendFrame(nil, Message, 7, 1, 0, nil)[4:]...),
		AppendFrame(nil, Message, 7, 1, 0, []byte("xy"))[:HeaderSize+1],
		AppendFrame(nil, Heartbeat, 7, 5, 0, []byte{0}),
		AppendFrame(nil, Credit, 7, 4, 0, nil),
		AppendFrame(nil, Ping, 7, 7, 0, nil),
		AppendFrame(nil, Pong, 7, 7, 9, []byte{0}),
		AppendFrame(nil, Request, 7, 2, 0, nil),
		AppendFrame(nil, Hello, 1, 1, 0, hs),
		AppendFrame(nil, Message, 7, 0, 0, nil),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, p, err := Parse(data, 1<<16)
		if err != nil {
			if h != (Header{}) || p != nil {
				t.Fatalf("Parse(%x) failed with %v but returned %+v, %x", data, err, h, p)
			}
			return
		}
		if got := AppendFrame(nil, h.Type, h.Epoch, h.Seq, h.Arg, p); !bytes.Equal(got, data) {
			t.Fatalf("Parse(%x) = %+v, %x; re-encoded as %x", data, h, p, got)
		}
		var hb [HeaderSize]byte
		h.Put(hb[:])
		if !bytes.Equal(hb[:], data[:HeaderSize]) {
			t.Fatalf("Parse(%x) = %+v; Put writes %x", data, h, hb)
		}
	})
}

// FuzzParseHandshake checks that ParseHandshake never panics and that what
// it accepts, signed or not, is exactly what Append writes.
func FuzzParseHandshake(f *testing.F) {
	good := testHandshake()
	signed := good
	signed.Signature = bytes.Repeat([]byte{0x5a}, 64)
	smallest := Handshake{Group: "g", Epoch: 1, FromID: "a", FromIncarnation: 1, ToID: "b", ToIncarnation: 1, Window: 1, HeartbeatMillis: 1}
	zero := good
	zero.Window = 0
	badName := good
	badName.FromID = "a/b"
	for _, b := range [][]byte{
		good.Append(nil),
		signed.Append(nil),
		smallest.Append(nil),
		zero.Append(nil),
		badName.Append(nil),
		good.Append(nil)[:20],
		append(good.Append(nil), 0),
		nil,
		{0},
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHandshake(data)
		if err != nil && err != ErrSignature {
			return
		}
		if (err == ErrSignature) != (len(h.Signature) > 0) {
			t.Fatalf("ParseHandshake(%x) = %+v, %v", data, h, err)
		}
		if got := h.Append(nil); !bytes.Equal(got, data) {
			t.Fatalf("ParseHandshake(%x) = %+v, %v; Append gives %x", data, h, err, got)
		}
	})
}
