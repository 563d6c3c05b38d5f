// Package block is the block protocol of the multipath disk (DESIGN §8):
// the requests the FT domain's disk sends through a driver domain to the
// shared storage, and the storage's answers. They travel as the payloads
// of idc channel calls (Epoch.Call); a driver forwards a request byte for
// byte, so the token inside it — the disk's, of the disk's epoch — reaches
// the storage's guard unchanged.
//
// A request is, integers big-endian:
//
//	u8  Version (1)
//	u8  Op
//	u16 Flags
//	u32 Length     bytes to read, write, trim or zero
//	u64 Offset     in bytes
//	u64 ID         the disk's request number: unique per write, so that a
//	               block's content names the write that put it there
//	u16 token length, the token (package token)
//	the payload    Length bytes for OpWrite, nothing otherwise
//
// and an answer:
//
//	u8  Version (1)
//	u8  Status
//	u16 0
//	u32 payload length
//	u64 ID         the request's
//	the payload    the data read (OpRead and StatusOK), or the error's
//	               text (other statuses)
//
// Parse and ParseAnswer allocate nothing: payloads and tokens alias the
// bytes given.
package block

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the format's version.
const Version = 1

// Sizes of the fixed parts.
const (
	requestHeader = 1 + 1 + 2 + 4 + 8 + 8 + 2
	answerHeader  = 1 + 1 + 2 + 4 + 8
)

// MaxLength is the longest read, write, trim or zero one request carries
// (32 MiB, the largest NBD request stock clients send).
const MaxLength = 32 << 20

// Op is what a request asks.
type Op uint8

// The operations.
const (
	OpRead Op = iota + 1
	OpWrite
	// OpFlush makes every write the storage acknowledged durable.
	OpFlush
	// OpTrim may discard Length bytes at Offset.
	OpTrim
	// OpZero writes Length zero bytes at Offset.
	OpZero
)

var opNames = [...]string{OpRead: "read", OpWrite: "write", OpFlush: "flush", OpTrim: "trim", OpZero: "zero"}

func (o Op) String() string {
	if o >= OpRead && o <= OpZero {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Writes reports whether the operation changes the storage (the guard's
// reservation, if any, admits it only from the epoch's writer).
func (o Op) Writes() bool { return o == OpWrite || o == OpTrim || o == OpZero }

// Flags of a request.
const (
	// FlagFUA: the write is durable before it is acknowledged.
	FlagFUA uint16 = 1 << iota
)

// Request is a decoded request.
type Request struct {
	Op     Op
	Flags  uint16
	Length uint32
	Offset uint64
	ID     uint64
	// Token is the encoded token (package token), as the disk wrote it.
	Token []byte
	// Data is the payload of a write.
	Data []byte
}

// Status is an answer's outcome.
type Status uint8

// The statuses.
const (
	StatusOK Status = iota + 1
	// StatusFenced: the storage's guard refused the request's token (an
	// ended epoch, not a member, not fenced yet): it was not applied.
	StatusFenced
	// StatusInvalid: the request is malformed or out of bounds.
	StatusInvalid
	// StatusIO: the storage failed to apply it.
	StatusIO
	// StatusShutdown: the storage is stopping.
	StatusShutdown
)

var statusNames = [...]string{StatusOK: "ok", StatusFenced: "fenced", StatusInvalid: "invalid", StatusIO: "io-error", StatusShutdown: "shutdown"}

func (s Status) String() string {
	if s >= StatusOK && s <= StatusShutdown {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Answer is a decoded answer.
type Answer struct {
	Status Status
	ID     uint64
	// Data is what was read (StatusOK) or the error's text.
	Data []byte
}

// Errors of Parse and ParseAnswer, for errors.Is; they return them
// themselves, so they never allocate.
var (
	ErrShort     = errors.New("idc: block: truncated")
	ErrVersion   = errors.New("idc: block: unsupported version")
	ErrMalformed = errors.New("idc: block: malformed")
	ErrTooLarge  = errors.New("idc: block: request above MaxLength")
)

// AppendRequest appends r's encoding to dst (r.Data is written only for
// OpWrite, and must then be Length bytes long).
func AppendRequest(dst []byte, r Request) []byte {
	if len(r.Token) > 0xffff {
		panic("idc: block: token longer than 65535 bytes")
	}
	dst = append(dst, Version, byte(r.Op))
	dst = binary.BigEndian.AppendUint16(dst, r.Flags)
	dst = binary.BigEndian.AppendUint32(dst, r.Length)
	dst = binary.BigEndian.AppendUint64(dst, r.Offset)
	dst = binary.BigEndian.AppendUint64(dst, r.ID)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(r.Token)))
	dst = append(dst, r.Token...)
	if r.Op == OpWrite {
		dst = append(dst, r.Data...)
	}
	return dst
}

// Parse decodes a whole request. It checks the version, a known
// operation, known flags (FUA only on writes), the length (at most
// MaxLength; 0 for a flush) and that the bytes are exactly the request:
// a write carries Length bytes of payload, nothing else carries any.
func Parse(b []byte) (Request, error) {
	if len(b) < requestHeader {
		return Request{}, ErrShort
	}
	if b[0] != Version {
		return Request{}, ErrVersion
	}
	r := Request{
		Op:     Op(b[1]),
		Flags:  binary.BigEndian.Uint16(b[2:]),
		Length: binary.BigEndian.Uint32(b[4:]),
		Offset: binary.BigEndian.Uint64(b[8:]),
		ID:     binary.BigEndian.Uint64(b[16:]),
	}
	n := int(binary.BigEndian.Uint16(b[24:]))
	rest := b[requestHeader:]
	if len(rest) < n {
		return Request{}, ErrShort
	}
	r.Token, rest = rest[:n:n], rest[n:]
	switch {
	case r.Op < OpRead || r.Op > OpZero:
		return Request{}, ErrMalformed
	case r.Flags&^FlagFUA != 0 || r.Flags&FlagFUA != 0 && !r.Op.Writes():
		return Request{}, ErrMalformed
	case r.Length > MaxLength:
		return Request{}, ErrTooLarge
	case r.Op == OpFlush && (r.Length != 0 || r.Offset != 0):
		return Request{}, ErrMalformed
	case r.Op == OpWrite && uint64(len(rest)) < uint64(r.Length):
		return Request{}, ErrShort
	case r.Op == OpWrite && uint64(len(rest)) > uint64(r.Length), r.Op != OpWrite && len(rest) != 0:
		return Request{}, ErrMalformed
	}
	if r.Op == OpWrite {
		r.Data = rest
	}
	return r, nil
}

// AppendAnswer appends a's encoding to dst.
func AppendAnswer(dst []byte, a Answer) []byte {
	if uint64(len(a.Data)) > 1<<32-1 {
		panic("idc: block: answer longer than 2^32-1 bytes")
	}
	dst = append(dst, Version, byte(a.Status), 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(a.Data)))
	dst = binary.BigEndian.AppendUint64(dst, a.ID)
	return append(dst, a.Data...)
}

// ParseAnswer decodes a whole answer.
func ParseAnswer(b []byte) (Answer, error) {
	if len(b) < answerHeader {
		return Answer{}, ErrShort
	}
	if b[0] != Version {
		return Answer{}, ErrVersion
	}
	a := Answer{Status: Status(b[1]), ID: binary.BigEndian.Uint64(b[8:])}
	n := uint64(binary.BigEndian.Uint32(b[4:]))
	switch {
	case a.Status < StatusOK || a.Status > StatusShutdown || b[2] != 0 || b[3] != 0:
		return Answer{}, ErrMalformed
	case uint64(len(b)-answerHeader) < n:
		return Answer{}, ErrShort
	case uint64(len(b)-answerHeader) > n:
		return Answer{}, ErrMalformed
	}
	a.Data = b[answerHeader:]
	return a, nil
}

// Err returns the answer's error: nil for StatusOK, else an error wrapping
// the status's sentinel (ErrFenced, ...) with the storage's text.
func (a Answer) Err() error {
	var base error
	switch a.Status {
	case StatusOK:
		return nil
	case StatusFenced:
		base = ErrFenced
	case StatusInvalid:
		base = ErrInvalid
	case StatusShutdown:
		base = ErrShutdown
	default:
		base = ErrIO
	}
	return fmt.Errorf("%w: %s", base, a.Data)
}

// Errors of an answer (Answer.Err), for errors.Is.
var (
	// ErrFenced: the storage's guard refused the request; it was not
	// applied.
	ErrFenced = errors.New("idc: block: refused by the storage's guard")
	// ErrInvalid: the request was malformed or out of bounds.
	ErrInvalid = errors.New("idc: block: invalid request")
	// ErrIO: the storage failed to apply the request.
	ErrIO = errors.New("idc: block: storage I/O error")
	// ErrShutdown: the storage is stopping.
	ErrShutdown = errors.New("idc: block: storage shutting down")
)
