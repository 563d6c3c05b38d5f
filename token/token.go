// Package token is the token a request carries to a shared resource
// (DESIGN §2, §6): the group and epoch it was issued in and the domain
// incarnation that issued it. A resource's guard (package guard) admits a
// request only if its token names the epoch the guard is fenced at and a
// member of that epoch. Intermediaries (a driver domain forwarding a
// block request) pass the token on unchanged, byte for byte.
//
// The encoding is versioned and binary; integers are big-endian:
//
//	u8  Version (1)
//	u8  flags (0 in version 1)
//	u8  length, Group
//	u64 Epoch
//	u8  length, Domain
//	u64 Incarnation
//	u64 Seq (0 in version 1)
//	u16 length, Signature (empty in version 1)
//
// Seq and Signature are reserved for byzantine mode, where the domain
// that originates a request signs it (ed25519) with a sequence number per
// epoch, so that a faulty intermediary can neither forge nor replay it.
// Version 1 refuses a token that sets them.
package token

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Version is the encoding's version.
const Version = 1

// MaxName is the longest group or domain name a token carries, in bytes.
const MaxName = 255

// MinSize is the size of the smallest token (one-byte names); MaxSize of
// the largest version 1 encodes.
const (
	MinSize = 1 + 1 + 1 + 1 + 8 + 1 + 1 + 8 + 8 + 2
	MaxSize = MinSize - 2 + 2*MaxName
)

// Token is a request's proof of authority.
type Token struct {
	// Group is the group's name.
	Group string
	// Epoch is the epoch the request was issued in; > 0.
	Epoch uint64
	// Domain and Incarnation name the domain incarnation that issued it;
	// the incarnation is > 0.
	Domain      string
	Incarnation uint64
	// Seq numbers the domain's requests within the epoch, from 1:
	// byzantine mode; 0 in version 1.
	Seq uint64
	// Signature is the issuer's signature over the rest: byzantine mode;
	// empty in version 1.
	Signature []byte
}

func (t Token) String() string {
	return fmt.Sprintf("%s@%d:%s/%x", t.Group, t.Epoch, t.Domain, t.Incarnation)
}

// Errors of Parse, for errors.Is; Parse returns them themselves, so it
// never allocates.
var (
	// ErrShort: the bytes end before the token does.
	ErrShort = errors.New("idc: token: truncated")
	// ErrVersion: a version other than Version.
	ErrVersion = errors.New("idc: token: unsupported version")
	// ErrMalformed: flags set, an empty or invalid name, or a zero epoch or
	// incarnation.
	ErrMalformed = errors.New("idc: token: malformed")
	// ErrSigned: a sequence number or signature, which version 1 does not
	// support.
	ErrSigned = errors.New("idc: token: signed tokens are not supported")
)

// Size is the length of t's encoding.
func (t Token) Size() int { return MinSize - 2 + len(t.Group) + len(t.Domain) + len(t.Signature) }

// Append appends t's encoding to dst and returns the extended slice. It
// does not validate t (Parse does), except that it panics if a name is
// longer than MaxName bytes or the signature longer than 65535 bytes.
func (t Token) Append(dst []byte) []byte {
	if len(t.Group) > MaxName || len(t.Domain) > MaxName || len(t.Signature) > 0xffff {
		panic("idc: token: name or signature too long")
	}
	dst = append(dst, Version, 0, byte(len(t.Group)))
	dst = append(dst, t.Group...)
	dst = binary.BigEndian.AppendUint64(dst, t.Epoch)
	dst = append(dst, byte(len(t.Domain)))
	dst = append(dst, t.Domain...)
	dst = binary.BigEndian.AppendUint64(dst, t.Incarnation)
	dst = binary.BigEndian.AppendUint64(dst, t.Seq)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(t.Signature)))
	return append(dst, t.Signature...)
}

// Parse decodes the token at the start of b and returns it and its
// length in b. Its strings are copies (it allocates them); see View for a
// decoding that does not allocate.
func Parse(b []byte) (Token, int, error) {
	v, n, err := ParseView(b)
	if err != nil {
		return Token{}, 0, err
	}
	return Token{Group: string(v.Group), Epoch: v.Epoch, Domain: string(v.Domain), Incarnation: v.Incarnation}, n, nil
}

// View is a decoded token whose names alias the bytes it was parsed from.
type View struct {
	Group       []byte
	Epoch       uint64
	Domain      []byte
	Incarnation uint64
}

// ParseView decodes the token at the start of b without allocating: the
// view's names alias b. It returns the view and the token's length in b.
// It checks, and returns the sentinel error itself: the version
// (ErrVersion), the length (ErrShort), flags 0, names of 1 to MaxName
// bytes of valid UTF-8 without control characters or '/', a nonzero
// epoch and incarnation (ErrMalformed), no sequence number and no
// signature (ErrSigned).
func ParseView(b []byte) (View, int, error) {
	v, n, err := Split(b)
	if err == nil && (!ValidName(v.Group) || !ValidName(v.Domain)) {
		return View{}, 0, ErrMalformed
	}
	return v, n, err
}

// Split is ParseView without the check of the names' characters (their
// lengths are checked): for a caller that compares the names with names
// it knows to be valid, as a guard does, and refuses the others.
func Split(b []byte) (View, int, error) {
	if len(b) < 3 {
		return View{}, 0, ErrShort
	}
	if b[0] != Version {
		return View{}, 0, ErrVersion
	}
	if b[1] != 0 {
		return View{}, 0, ErrMalformed
	}
	var v View
	p := 2
	name := func() []byte {
		if p >= len(b) {
			return nil
		}
		n := int(b[p])
		if p+1+n > len(b) {
			return nil
		}
		s := b[p+1 : p+1+n]
		p += 1 + n
		return s
	}
	u64 := func() (uint64, bool) {
		if p+8 > len(b) {
			return 0, false
		}
		x := binary.BigEndian.Uint64(b[p:])
		p += 8
		return x, true
	}
	var ok bool
	if v.Group = name(); v.Group == nil {
		return View{}, 0, ErrShort
	}
	if v.Epoch, ok = u64(); !ok {
		return View{}, 0, ErrShort
	}
	if v.Domain = name(); v.Domain == nil {
		return View{}, 0, ErrShort
	}
	if v.Incarnation, ok = u64(); !ok {
		return View{}, 0, ErrShort
	}
	seq, ok := u64()
	if !ok || p+2 > len(b) {
		return View{}, 0, ErrShort
	}
	sig := int(binary.BigEndian.Uint16(b[p:]))
	p += 2
	if p+sig > len(b) {
		return View{}, 0, ErrShort
	}
	switch {
	case len(v.Group) == 0 || len(v.Domain) == 0 || v.Epoch == 0 || v.Incarnation == 0:
		return View{}, 0, ErrMalformed
	case seq != 0 || sig != 0:
		return View{}, 0, ErrSigned
	}
	return v, p + sig, nil
}

// ValidName reports whether s is a name a token may carry: 1 to MaxName
// bytes of valid UTF-8, with no control character and no '/'.
func ValidName(s []byte) bool {
	if len(s) == 0 || len(s) > MaxName || !utf8.Valid(s) {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == '/' {
			return false
		}
	}
	return true
}
