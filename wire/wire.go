// Package wire is the binary format of idc's channel frames and handshakes.
// It is pure: it encodes and decodes byte slices, with no I/O, goroutines or
// clocks; the channel implementations do the reading and writing.
//
// Every frame is a fixed 32-byte header followed by the payload. All
// integers are big-endian.
//
//	offset size field
//	0      1    Version  (Version, 1)
//	1      1    Type
//	2      2    Flags    (reserved: 0 in version 1)
//	4      4    Length   (payload length in bytes)
//	8      8    Epoch
//	16     8    Seq      (per connection direction; the first frame after the handshake is 1; handshake frames carry 0)
//	24     8    Arg      (call ID for Request, Response and Error; ping ID for Ping and Pong; credits for Credit; a CloseCode for Close; a RefuseCode for Refuse; 0 otherwise)
//
// A connection opens with a handshake: the dialer sends Hello, whose payload
// is a Handshake naming the group, the epoch and both ends (ID and
// incarnation); the acceptor answers Welcome (a Handshake naming itself as
// From) or Refuse (a RefuseCode and a reason). Then either side sends
// Message, Request, Response, Error, Credit, Heartbeat, Ping, Pong and
// finally Close.
//
// The types and their numbers (the Type byte):
//
//	type       number  Arg              payload
//	Hello      1       0                a Handshake
//	Welcome    2       0                a Handshake
//	Refuse     3       a RefuseCode     a reason text
//	Message    4       0                the message
//	Request    5       call ID (> 0)    the request
//	Response   6       call ID (> 0)    the response
//	Error      7       call ID (> 0)    the handler's error text
//	Credit     8       credits (> 0)    none
//	Heartbeat  9       0                none
//	Close      10      a CloseCode      a reason text
//	Ping       11      ping ID (> 0)    none
//	Pong       12      ping ID (> 0)    none
//
// Ping asks the peer's channel driver itself to answer at once with Pong
// (it is not handed to the application, and needs no credit): a
// round-trip probe of the channel.
//
// The format is idc's own rather than a general stream multiplexer such as
// yamux or smux: a channel is one connection between two domains in one
// epoch, so per-stream windows and stream setup buy nothing, and such a
// multiplexer costs about three times a raw socket round trip. And the
// header carries the epoch, so a receiver drops a frame of any epoch other
// than its current connected one by looking at 8 bytes, without decoding
// the payload.
//
// Parse checks a frame and returns its payload without copying or
// allocating; its errors are sentinel values (test with errors.Is) to which
// callers add context.
package wire

import (
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
)

const (
	// Version is the format version this package reads and writes.
	Version = 1
	// HeaderSize is the size in bytes of a frame header.
	HeaderSize = 32
)

// Errors returned by Parse and ParseHandshake. They are returned as they
// are, never wrapped, so that parsing does not allocate; test with errors.Is.
var (
	// ErrShort means the input ended early: a frame shorter than its
	// header, or a handshake body cut short.
	ErrShort = errors.New("idc: wire: input too short")
	// ErrVersion means a frame of a version other than Version.
	ErrVersion = errors.New("idc: wire: unsupported version")
	// ErrType means a frame of an unknown type.
	ErrType = errors.New("idc: wire: unknown frame type")
	// ErrLength means the header's Length is not the length of the payload
	// that follows it.
	ErrLength = errors.New("idc: wire: length does not match payload")
	// ErrTooLarge means a payload longer than the receiver's maximum.
	ErrTooLarge = errors.New("idc: wire: payload too large")
	// ErrMalformed means a frame or handshake that breaks a rule of the
	// format: nonzero flags, a field its type forbids or requires, a bad
	// name, a zero handshake field, trailing bytes.
	ErrMalformed = errors.New("idc: wire: malformed")
	// ErrSignature means a handshake that is well formed but signed, which
	// version 1 does not support; the receiver refuses with RefuseVersion.
	ErrSignature = errors.New("idc: wire: signed handshake not supported")
)

// Type is a frame's type.
type Type uint8

// The frame types.
const (
	// Hello opens a handshake, dialer to acceptor; payload: a Handshake.
	Hello Type = iota + 1
	// Welcome accepts a handshake, acceptor to dialer; payload: a Handshake
	// naming the acceptor as From.
	Welcome
	// Refuse refuses a handshake. Arg: a RefuseCode; Epoch: the refuser's
	// current epoch (0 if none); payload: a reason text (UTF-8, at most
	// MaxReason bytes; see RefuseReason).
	Refuse
	// Message is a one-way message; payload: the message.
	Message
	// Request is a call. Arg: the call ID; payload: the request.
	Request
	// Response answers a Request. Arg: its call ID; payload: the response.
	Response
	// Error answers a Request whose handler failed. Arg: its call ID;
	// payload: the handler's error text.
	Error
	// Credit grants the sender more frames (flow control). Arg: the number
	// of Message and Request frames the receiver grants; no payload.
	Credit
	// Heartbeat shows the sender alive; no payload, Arg 0.
	Heartbeat
	// Close closes the channel in order. Arg: a CloseCode; payload: a
	// reason text.
	Close
	// Ping asks the receiver's channel driver to answer with Pong at once
	// (not through the application; it takes no credit). Arg: a nonzero
	// ping ID; no payload.
	Ping
	// Pong answers a Ping. Arg: the ping's ID; no payload.
	Pong
)

var typeNames = [...]string{
	Hello:     "hello",
	Welcome:   "welcome",
	Refuse:    "refuse",
	Message:   "message",
	Request:   "request",
	Response:  "response",
	Error:     "error",
	Credit:    "credit",
	Heartbeat: "heartbeat",
	Close:     "close",
	Ping:      "ping",
	Pong:      "pong",
}

// known reports whether t is a type of this version.
func (t Type) known() bool { return t >= Hello && t <= Pong }

// String returns the type's name ("hello", "welcome", ...), or "type(N)"
// for an unknown type.
func (t Type) String() string {
	if t.known() {
		return typeNames[t]
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// RefuseCode says why an acceptor refused a handshake (the Arg of Refuse).
type RefuseCode uint64

// The refuse codes.
const (
	// RefuseBehind: the acceptor is not (yet) connected in the epoch asked.
	RefuseBehind RefuseCode = iota + 1
	// RefuseAhead: the acceptor is connected in a later epoch (the epoch
	// asked ended).
	RefuseAhead
	// RefuseNotMember: the dialer (ID, incarnation) is not a member of that
	// epoch.
	RefuseNotMember
	// RefuseWrongPeer: the acceptor is not the (ID, incarnation) the dialer
	// named, or is in another group.
	RefuseWrongPeer
	// RefuseVersion: unsupported version or handshake field (such as a
	// signature).
	RefuseVersion
	// RefuseDuplicate: a channel for this peer and epoch already exists.
	RefuseDuplicate
	// RefuseClosing: the acceptor is stopping.
	RefuseClosing
)

var refuseNames = [...]string{
	RefuseBehind:    "behind",
	RefuseAhead:     "ahead",
	RefuseNotMember: "not-member",
	RefuseWrongPeer: "wrong-peer",
	RefuseVersion:   "version",
	RefuseDuplicate: "duplicate",
	RefuseClosing:   "closing",
}

// String returns the code's name ("behind", "ahead", ...), or "refuse(N)"
// for an unknown code.
func (c RefuseCode) String() string {
	if c >= RefuseBehind && c <= RefuseClosing {
		return refuseNames[c]
	}
	return "refuse(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// CloseCode says why a side closed a channel (the Arg of Close).
type CloseCode uint64

// The close codes.
const (
	// CloseEpochEnded: the sender's epoch ended (it disconnected).
	CloseEpochEnded CloseCode = iota + 1
	// CloseStopping: the sender's membership stopped (left, fenced, closed).
	CloseStopping
	// CloseProtocol: the sender received a frame it could not accept.
	CloseProtocol
	// CloseSuspect: the sender stopped hearing from the receiver
	// (heartbeats missed).
	CloseSuspect
)

var closeNames = [...]string{
	CloseEpochEnded: "epoch-ended",
	CloseStopping:   "stopping",
	CloseProtocol:   "protocol",
	CloseSuspect:    "suspect",
}

// String returns the code's name ("epoch-ended", "stopping", ...), or
// "close(N)" for an unknown code.
func (c CloseCode) String() string {
	if c >= CloseEpochEnded && c <= CloseSuspect {
		return closeNames[c]
	}
	return "close(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// Header is a frame's header, as laid out in the package documentation.
type Header struct {
	// Version is the format version, Version.
	Version uint8
	// Type is the frame's type.
	Type Type
	// Flags is reserved: 0 in version 1.
	Flags uint16
	// Length is the payload's length in bytes.
	Length uint32
	// Epoch is the sender's epoch (for Refuse, the refuser's current
	// epoch, 0 if none).
	Epoch uint64
	// Seq numbers the frames of one direction of a connection from 1;
	// handshake frames (Hello, Welcome, Refuse) carry 0.
	Seq uint64
	// Arg is the type-specific argument: the call ID of Request, Response
	// and Error, the ping ID of Ping and Pong, the credits of Credit, the
	// CloseCode of Close, the RefuseCode of Refuse; 0 otherwise.
	Arg uint64
}

// Put writes h into b[:HeaderSize]; b must be at least HeaderSize bytes
// long. It does not allocate.
func (h Header) Put(b []byte) {
	_ = b[HeaderSize-1]
	b[0] = h.Version
	b[1] = byte(h.Type)
	binary.BigEndian.PutUint16(b[2:4], h.Flags)
	binary.BigEndian.PutUint32(b[4:8], h.Length)
	binary.BigEndian.PutUint64(b[8:16], h.Epoch)
	binary.BigEndian.PutUint64(b[16:24], h.Seq)
	binary.BigEndian.PutUint64(b[24:32], h.Arg)
}

// AppendFrame appends a frame to dst: a header (Version, t, Flags 0,
// Length len(payload), epoch, seq, arg) followed by payload, and returns the
// extended slice. It does not allocate when dst has room for the frame. It
// does not check the frame against the rules of Parse; a payload longer
// than 2^32-1 bytes makes it panic.
func AppendFrame(dst []byte, t Type, epoch, seq, arg uint64, payload []byte) []byte {
	if uint64(len(payload)) > 1<<32-1 {
		panic("idc: wire: payload longer than 2^32-1 bytes")
	}
	n := len(dst)
	dst = slices.Grow(dst, HeaderSize+len(payload))[:n+HeaderSize+len(payload)]
	Header{Version: Version, Type: t, Length: uint32(len(payload)), Epoch: epoch, Seq: seq, Arg: arg}.Put(dst[n:])
	copy(dst[n+HeaderSize:], payload)
	return dst
}

// Parse splits a whole frame into its header and payload. The payload
// aliases frame. It checks, in this order, and returns the sentinel error
// itself, so it never allocates:
//
//   - the frame holds a header (ErrShort);
//   - Version is Version (ErrVersion);
//   - Type is known (ErrType);
//   - Flags is 0 (ErrMalformed);
//   - Length is len(frame)-HeaderSize (ErrLength);
//   - Length is at most maxPayload (ErrTooLarge);
//   - the rules of the type (ErrMalformed): Hello, Welcome and Refuse carry
//     Seq 0, every other type Seq > 0; Request, Response and Error carry a
//     call ID (Arg > 0); Credit, Ping and Pong carry Arg > 0 and no
//     payload; Heartbeat carries Arg 0 and no payload.
//
// It does not decode the payload: see ParseHandshake for Hello and Welcome.
func Parse(frame []byte, maxPayload int) (Header, []byte, error) {
	if len(frame) < HeaderSize {
		return Header{}, nil, ErrShort
	}
	h := Header{
		Version: frame[0],
		Type:    Type(frame[1]),
		Flags:   binary.BigEndian.Uint16(frame[2:4]),
		Length:  binary.BigEndian.Uint32(frame[4:8]),
		Epoch:   binary.BigEndian.Uint64(frame[8:16]),
		Seq:     binary.BigEndian.Uint64(frame[16:24]),
		Arg:     binary.BigEndian.Uint64(frame[24:32]),
	}
	switch {
	case h.Version != Version:
		return Header{}, nil, ErrVersion
	case !h.Type.known():
		return Header{}, nil, ErrType
	case h.Flags != 0:
		return Header{}, nil, ErrMalformed
	case uint64(h.Length) != uint64(len(frame)-HeaderSize):
		return Header{}, nil, ErrLength
	case int64(h.Length) > int64(maxPayload):
		return Header{}, nil, ErrTooLarge
	}
	var ok bool
	switch h.Type {
	case Hello, Welcome, Refuse:
		ok = h.Seq == 0
	case Request, Response, Error:
		ok = h.Seq > 0 && h.Arg > 0
	case Credit, Ping, Pong:
		ok = h.Seq > 0 && h.Arg > 0 && h.Length == 0
	case Heartbeat:
		ok = h.Seq > 0 && h.Arg == 0 && h.Length == 0
	default: // Message, Close
		ok = h.Seq > 0
	}
	if !ok {
		return Header{}, nil, ErrMalformed
	}
	return h, frame[HeaderSize:], nil
}
