package wire

import (
	"encoding/binary"
	"strings"
	"unicode/utf8"
)

// Handshake is the payload of Hello and Welcome: who speaks, to whom, in
// which group and epoch. Its body is, in order (integers big-endian):
//
//	u8 length, Group
//	u64 Epoch
//	u8 length, FromID
//	u64 FromIncarnation
//	u8 length, ToID
//	u64 ToIncarnation
//	u32 Window
//	u32 HeartbeatMillis
//	u16 length, Signature
//
// and nothing after.
type Handshake struct {
	// Group is the group's name.
	Group string
	// Epoch is the epoch the channel belongs to; > 0.
	Epoch uint64
	// FromID and FromIncarnation name the speaker; the incarnation is > 0.
	FromID          string
	FromIncarnation uint64
	// ToID and ToIncarnation name the peer the speaker means to reach; the
	// incarnation is > 0.
	ToID          string
	ToIncarnation uint64
	// Window is how many Message and Request frames the speaker will accept
	// before it grants more (Credit); > 0.
	Window uint32
	// HeartbeatMillis is the speaker's heartbeat interval in milliseconds
	// (informational); > 0.
	HeartbeatMillis uint32
	// Signature is reserved for byzantine mode (an ed25519 signature over
	// the rest); in version 1 it must be empty.
	Signature []byte
}

// MaxName is the longest name (group or ID) a handshake can carry, in bytes.
const MaxName = 255

// MaxReason is the longest reason text a Refuse frame should carry, in
// bytes; RefuseReason truncates longer ones.
const MaxReason = 1024

// Append appends h's body to dst and returns the extended slice. It does
// not validate h (ParseHandshake does), except that it panics if a name is
// longer than MaxName bytes or the signature longer than 65535 bytes:
// callers validate names first.
func (h Handshake) Append(dst []byte) []byte {
	for _, s := range [...]string{h.Group, h.FromID, h.ToID} {
		if len(s) > MaxName {
			panic("idc: wire: handshake name longer than 255 bytes")
		}
	}
	if len(h.Signature) > 1<<16-1 {
		panic("idc: wire: handshake signature longer than 65535 bytes")
	}
	dst = append(dst, byte(len(h.Group)))
	dst = append(dst, h.Group...)
	dst = binary.BigEndian.AppendUint64(dst, h.Epoch)
	dst = append(dst, byte(len(h.FromID)))
	dst = append(dst, h.FromID...)
	dst = binary.BigEndian.AppendUint64(dst, h.FromIncarnation)
	dst = append(dst, byte(len(h.ToID)))
	dst = append(dst, h.ToID...)
	dst = binary.BigEndian.AppendUint64(dst, h.ToIncarnation)
	dst = binary.BigEndian.AppendUint32(dst, h.Window)
	dst = binary.BigEndian.AppendUint32(dst, h.HeartbeatMillis)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(h.Signature)))
	return append(dst, h.Signature...)
}

// ParseHandshake decodes a handshake body (the payload of Hello or
// Welcome). It fails with ErrShort if b ends early and with ErrMalformed if
// bytes follow the body, a name is empty or has a character other than a
// letter, digit, '.', '_' or '-', or Epoch, an incarnation, Window or
// HeartbeatMillis is 0. A body that is otherwise valid but carries a
// signature is returned whole, with ErrSignature: version 1 does not
// support signed handshakes, and the receiver refuses with RefuseVersion.
// The Handshake shares no memory with b.
func ParseHandshake(b []byte) (Handshake, error) {
	r := reader{b: b}
	var h Handshake
	var name [3][]byte
	name[0] = r.name()
	h.Epoch = r.u64()
	name[1] = r.name()
	h.FromIncarnation = r.u64()
	name[2] = r.name()
	h.ToIncarnation = r.u64()
	h.Window = r.u32()
	h.HeartbeatMillis = r.u32()
	sig := r.bytes(int(r.u16()))
	switch {
	case r.short:
		return Handshake{}, ErrShort
	case len(r.b) != 0:
		return Handshake{}, ErrMalformed
	case !validName(name[0]) || !validName(name[1]) || !validName(name[2]):
		return Handshake{}, ErrMalformed
	case h.Epoch == 0 || h.FromIncarnation == 0 || h.ToIncarnation == 0 || h.Window == 0 || h.HeartbeatMillis == 0:
		return Handshake{}, ErrMalformed
	}
	h.Group, h.FromID, h.ToID = string(name[0]), string(name[1]), string(name[2])
	if len(sig) > 0 {
		h.Signature = append([]byte(nil), sig...)
		return h, ErrSignature
	}
	return h, nil
}

// validName reports whether s is 1 to MaxName bytes of letters, digits,
// '.', '_' and '-'.
func validName(s []byte) bool {
	if len(s) == 0 || len(s) > MaxName {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// reader consumes a byte slice front to back. Once it runs short every
// further read returns zero and short stays set.
type reader struct {
	b     []byte
	short bool
}

func (r *reader) bytes(n int) []byte {
	if r.short || len(r.b) < n {
		r.short = true
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) name() []byte {
	n := r.bytes(1)
	if n == nil {
		return nil
	}
	return r.bytes(int(n[0]))
}

func (r *reader) u16() uint16 {
	if p := r.bytes(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.bytes(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.bytes(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// RefuseReason returns the reason text of a Refuse (or Close) payload for
// logs: at most MaxReason bytes of it (cut back to a whole character), with
// each run of invalid UTF-8 replaced by U+FFFD.
func RefuseReason(payload []byte) string {
	if len(payload) > MaxReason {
		payload = payload[:MaxReason]
		// Drop a character the cut split in two.
		j := len(payload) - 1
		for j > 0 && j > len(payload)-utf8.UTFMax && !utf8.RuneStart(payload[j]) {
			j--
		}
		if !utf8.FullRune(payload[j:]) {
			payload = payload[:j]
		}
	}
	return strings.ToValidUTF8(string(payload), "\uFFFD")
}
