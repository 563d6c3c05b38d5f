package nbd

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

func twoExports() Config {
	return Config{Exports: []Export{
		{Name: "disk", Description: "the disk", Backend: NewMemBackend(1 << 20)},
		{Name: "other", Backend: NewMemBackend(4096)},
	}}
}

// step is one option sent in a negotiation test and the reply types
// expected for it, in order. eof means the server must close instead.
type step struct {
	opt     uint32
	data    []byte
	replies []uint32
	eof     bool
}

func TestNegotiation(t *testing.T) {
	long := make([]byte, maxOptionLen+1)
	tests := []struct {
		name  string
		flags uint32
		steps []step
	}{
		{"go default export", 3, []step{{opt: optGo, data: infoData(""), replies: []uint32{repInfo, repInfo, repAck}}}},
		{"go with name and description", 3, []step{{opt: optGo, data: infoData("disk", infoName, infoDescription, infoBlockSize),
			replies: []uint32{repInfo, repInfo, repInfo, repInfo, repAck}}}},
		{"info then go", 3, []step{
			{opt: optInfo, data: infoData("other", infoName), replies: []uint32{repInfo, repInfo, repInfo, repAck}},
			{opt: optGo, data: infoData("other"), replies: []uint32{repInfo, repInfo, repAck}}}},
		{"list", 3, []step{
			{opt: optList, replies: []uint32{repServer, repServer, repAck}},
			{opt: optAbort, replies: []uint32{repAck}, eof: true}}},
		{"list with data is invalid", 3, []step{
			{opt: optList, data: []byte{1}, replies: []uint32{repErrInvalid}},
			{opt: optGo, data: infoData("disk"), replies: []uint32{repInfo, repInfo, repAck}}}},
		{"abort", 3, []step{{opt: optAbort, replies: []uint32{repAck}, eof: true}}},
		{"abort with data", 3, []step{{opt: optAbort, data: []byte("x"), replies: []uint32{repAck}, eof: true}}},
		{"unsupported options go on", 3, []step{
			{opt: optStructuredReply, replies: []uint32{repErrUnsup}},
			{opt: optStartTLS, replies: []uint32{repErrUnsup}},
			{opt: 10, data: []byte("base:allocation"), replies: []uint32{repErrUnsup}},
			{opt: 0xdeadbeef, data: []byte("xyz"), replies: []uint32{repErrUnsup}},
			{opt: optGo, data: infoData("disk"), replies: []uint32{repInfo, repInfo, repAck}}}},
		{"unknown export", 3, []step{
			{opt: optGo, data: infoData("nope"), replies: []uint32{repErrUnknown}},
			{opt: optInfo, data: infoData("nope"), replies: []uint32{repErrUnknown}},
			{opt: optGo, data: infoData("disk"), replies: []uint32{repInfo, repInfo, repAck}}}},
		{"go too short", 3, []step{{opt: optGo, data: []byte{0, 0, 0, 0, 0}, replies: []uint32{repErrInvalid}}}},
		{"go name length beyond data", 3, []step{{opt: optGo, data: []byte{0, 0, 0, 9, 'd', 0, 0}, replies: []uint32{repErrInvalid}}}},
		{"go info count beyond data", 3, []step{{opt: optGo, data: []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 1}, replies: []uint32{repErrInvalid}}}},
		{"go trailing data", 3, []step{{opt: optGo, data: append(infoData("disk"), 7), replies: []uint32{repErrInvalid}}}},
		{"option data too long", 3, []step{{opt: 0x1234, data: long, eof: true}}},
		{"export name unknown", 3, []step{{opt: optExportName, data: []byte("nope"), eof: true}}},
		{"unknown client flags", 1 << 5, []step{{opt: optList, eof: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sock := startServer(t, twoExports())
			rc := dial(t, sock)
			rc.clientFlags(tt.flags)
			for _, st := range tt.steps {
				rc.lenient = st.eof
				rc.option(st.opt, st.data)
				for _, want := range st.replies {
					r := rc.optReply()
					if r.opt != st.opt || r.typ != want {
						t.Fatalf("%s: reply (%d, %#x %q), want (%d, %#x)", optionName(st.opt), r.opt, r.typ, r.data, st.opt, want)
					}
				}
				if st.eof {
					rc.expectEOF()
					return
				}
			}
		})
	}
}

func TestNegotiationReplyData(t *testing.T) {
	_, sock := startServer(t, twoExports())
	rc := dial(t, sock)
	rc.clientFlags(3)
	rc.option(optList, nil)
	var names []string
	for r := rc.optReply(); r.typ != repAck; r = rc.optReply() {
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if got := names; len(got) != 2 || got[0] != "disk|the disk" || got[1] != "other|" {
		t.Fatalf("NBD_OPT_LIST exports %q", got)
	}
	rc.option(optInfo, infoData("disk", infoName, infoDescription))
	infos := map[uint16][]byte{}
	for r := rc.optReply(); r.typ != repAck; r = rc.optReply() {
		infos[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	want := map[uint16][]byte{
		infoExport:      {0, 0, 0, 0, 0, 0x10, 0, 0, 0x1, 0x6d},
		infoBlockSize:   {0, 0, 0, 1, 0, 0, 0x10, 0, 0x2, 0, 0, 0},
		infoName:        []byte("disk"),
		infoDescription: []byte("the disk"),
	}
	for k, v := range want {
		if !bytes.Equal(infos[k], v) {
			t.Errorf("info %d = %x, want %x", k, infos[k], v)
		}
	}
	if len(infos) != len(want) {
		t.Errorf("infos %v", infos)
	}
}

func TestExportName(t *testing.T) {
	for _, tt := range []struct {
		name     string
		flags    uint32
		replyLen int
	}{
		{"zeroes", clientFlagFixedNewstyle, 134},
		{"no zeroes", clientFlagFixedNewstyle | clientFlagNoZeroes, 10},
		{"non-fixed newstyle client", 0, 134},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, sock := startServer(t, twoExports())
			rc := dial(t, sock)
			rc.clientFlags(tt.flags)
			rc.option(optExportName, []byte("other"))
			b := make([]byte, tt.replyLen)
			rc.read(b)
			if size := binary.BigEndian.Uint64(b); size != 4096 {
				t.Fatalf("size %d", size)
			}
			if !bytes.Equal(b[10:], make([]byte, tt.replyLen-10)) {
				t.Fatalf("padding not zero: %x", b[10:])
			}
			// Transmission has begun: a read works.
			rc.request(cmdRead, 0, 7, 0, 512, nil)
			if c, code, _ := rc.reply(map[uint64]int{7: 512}); c != 7 || code != 0 {
				t.Fatalf("read after NBD_OPT_EXPORT_NAME: cookie %d errno %d", c, code)
			}
		})
	}
}

func TestBadOptionMagic(t *testing.T) {
	_, sock := startServer(t, twoExports())
	rc := dial(t, sock)
	rc.clientFlags(3)
	rc.write(make([]byte, 16))
	rc.expectEOF()
}

func TestParseInfoRequest(t *testing.T) {
	for _, tt := range []struct {
		name string
		data []byte
		ok   bool
		want infoRequest
	}{
		{"empty list", infoData("a"), true, infoRequest{name: "a", infos: []uint16{}}},
		{"two infos", infoData("", 1, 3), true, infoRequest{name: "", infos: []uint16{1, 3}}},
		{"short", []byte{0, 0, 0, 0, 0}, false, infoRequest{}},
		{"huge name length", []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, false, infoRequest{}},
		{"name above 4096", infoData(string(make([]byte, 4097))), false, infoRequest{}},
		{"odd tail", append(infoData("a", 1), 0), false, infoRequest{}},
	} {
		got, err := parseInfoRequest(tt.data)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v", tt.name, err)
			continue
		}
		if tt.ok && (got.name != tt.want.name || len(got.infos) != len(tt.want.infos)) {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestHandshakeTimeout(t *testing.T) {
	cfg := twoExports()
	cfg.HandshakeTimeout = 100 * time.Millisecond
	_, sock := startServer(t, cfg)
	rc := dial(t, sock)
	start := time.Now()
	rc.expectEOF() // the client never sends its flags
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
}
