package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// FuzzParseRequest: any 28 bytes either fail on the magic or decode into
// fields that encode back to the same bytes.
func FuzzParseRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < requestHeaderLen {
			return
		}
		var hdr [requestHeaderLen]byte
		copy(hdr[:], b)
		req, err := parseRequest(&hdr)
		if err != nil {
			if binary.BigEndian.Uint32(hdr[:]) == magicRequest {
				t.Fatalf("error %v on a header with the right magic", err)
			}
			return
		}
		var enc []byte
		enc = binary.BigEndian.AppendUint32(enc, magicRequest)
		enc = binary.BigEndian.AppendUint16(enc, req.flags)
		enc = binary.BigEndian.AppendUint16(enc, req.typ)
		enc = binary.BigEndian.AppendUint64(enc, req.cookie)
		enc = binary.BigEndian.AppendUint64(enc, req.offset)
		enc = binary.BigEndian.AppendUint32(enc, req.length)
		if !bytes.Equal(enc, hdr[:]) {
			t.Fatalf("round trip %x != %x", enc, hdr)
		}
	})
}

// FuzzParseInfoRequest: NBD_OPT_INFO/NBD_OPT_GO data either is rejected
// or decodes into a request that encodes back to the same bytes.
func FuzzParseInfoRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := parseInfoRequest(data)
		if err != nil {
			return
		}
		if len(req.name) > maxStringLen {
			t.Fatalf("name of %d bytes accepted", len(req.name))
		}
		if enc := infoData(req.name, req.infos...); !bytes.Equal(enc, data) {
			t.Fatalf("round trip %x != %x", enc, data)
		}
	})
}

// FuzzConn sends arbitrary client bytes to a server over a net.Pipe and
// then hangs up: the server must not panic, must end the connection
// within a few seconds, and allocates at most MaxInFlight requests of
// MaxRequestSize at once (the configuration below keeps that small).
func FuzzConn(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		b := NewMemBackend(1 << 20)
		s, err := NewServer(Config{
			Exports:        []Export{{Name: "disk", Description: "fuzz", Backend: b}, {Name: "ro", Backend: readOnly{b}}},
			MaxRequestSize: 64 << 10,
			MaxInFlight:    4,
			Logger:         slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			s.ServeConn(context.Background(), server)
			close(done)
		}()
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, client)
			close(drained)
		}()
		client.Write(data)
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("server did not end the connection after the client hung up")
		}
		<-drained
	})
}

// readOnly is a backend whose features make the export read-only.
type readOnly struct{ *MemBackend }

func (r readOnly) Features() Features {
	f := r.MemBackend.Features()
	f.ReadOnly = true
	return f
}
