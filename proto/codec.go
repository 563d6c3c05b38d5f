package proto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The epoch record is read by every member at every change, so its store
// form is compact: a JSON object like the record's own encoding, but with
// each member as one string "id/incarnation/lease/ttl/priority" and, if
// the member accepts channels, "/addr" (incarnation and lease in hex, ttl in
// milliseconds; the address is the rest of the string, slashes and all). Decoding 100 members
// that way costs a fraction of decoding 100 objects. EpochRecord's
// UnmarshalJSON reads both forms; json.Marshal of a record gives the
// verbose one, for people and tools.

// epochWire is the store form of an EpochRecord.
type epochWire struct {
	Group      string          `json:"group"`
	Number     uint64          `json:"number"`
	State      State           `json:"state"`
	Mode       Mode            `json:"mode"`
	Members    json.RawMessage `json:"members"`
	PrevNumber uint64          `json:"prev_number,omitempty"`
	Prev       json.RawMessage `json:"prev,omitempty"`
	Excluded   json.RawMessage `json:"excluded,omitempty"`
	Reason     string          `json:"reason,omitempty"`
	Written    int64           `json:"written_ms,omitempty"`
}

// EncodeEpoch returns the store form of r.
func EncodeEpoch(r EpochRecord) []byte {
	w := epochWire{
		Group: r.Group, Number: r.Number, State: r.State, Mode: r.Mode,
		Members: compact(r.Members), PrevNumber: r.PrevNumber, Reason: r.Reason, Written: r.WrittenMillis,
	}
	if len(r.Prev) > 0 {
		w.Prev = compact(r.Prev)
	}
	if len(r.Excluded) > 0 {
		w.Excluded = compact(r.Excluded)
	}
	b, err := json.Marshal(w)
	if err != nil {
		panic(fmt.Sprintf("proto: encode epoch record: %v", err)) // only strings and numbers
	}
	return b
}

// compact writes ms as a JSON array of member strings. Names are checked
// by CheckName, so they need no escaping.
func compact(ms []Member) json.RawMessage {
	b := make([]byte, 0, 2+len(ms)*48)
	b = append(b, '[')
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, m.ID...)
		b = append(b, '/')
		b = strconv.AppendUint(b, m.Incarnation, 16)
		b = append(b, '/')
		b = strconv.AppendUint(b, uint64(m.Lease), 16)
		b = append(b, '/')
		b = strconv.AppendInt(b, m.TTL.Milliseconds(), 10)
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(m.Priority), 10)
		if m.Addr != "" {
			b = append(b, '/')
			b = appendEscaped(b, m.Addr)
		}
		b = append(b, '"')
	}
	return append(b, ']')
}

// appendEscaped appends s as the inside of a JSON string. Names need no
// escaping (CheckName), but an address is whatever a member registered.
func appendEscaped(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return b
}

// DecodeEpoch decodes an epoch record as the store holds it (either form).
// It is json.Unmarshal, done by hand without reflection when the value is
// in the store form: the members' hot path (docs/BENCHMARKS.md, "Epoch
// record decoding"). FuzzDecodeEpoch holds the two to the same results.
func DecodeEpoch(data []byte) (EpochRecord, error) {
	if rec, ok := decodeStoreForm(data); ok {
		return rec, nil
	}
	var rec EpochRecord
	err := json.Unmarshal(data, &rec)
	return rec, err
}

// UnmarshalJSON reads an epoch record in its store form or in the verbose
// form json.Marshal gives. It is the general path, built on encoding/json
// alone, and the reference that DecodeEpoch's hand-written decoder of the
// store form is fuzzed against.
func (r *EpochRecord) UnmarshalJSON(data []byte) error {
	var w epochWire
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	out := EpochRecord{Group: w.Group, Number: w.Number, State: w.State, Mode: w.Mode, PrevNumber: w.PrevNumber, Reason: w.Reason, WrittenMillis: w.Written}
	var err error
	if out.Members, err = members(w.Members); err != nil {
		return fmt.Errorf("members: %w", err)
	}
	if out.Prev, err = members(w.Prev); err != nil {
		return fmt.Errorf("prev: %w", err)
	}
	if out.Excluded, err = members(w.Excluded); err != nil {
		return fmt.Errorf("excluded: %w", err)
	}
	*r = out
	return nil
}

// members decodes a member list in either form: an array of member strings
// (the store form) or of Member objects (the verbose form).
func members(raw json.RawMessage) ([]Member, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] == '[' && bytes.HasPrefix(bytes.TrimLeft(raw[1:], " \t\r\n"), []byte{'"'}) {
		var ss []string
		if err := json.Unmarshal(raw, &ss); err != nil {
			return nil, err
		}
		ms := make([]Member, len(ss))
		for i, s := range ss {
			m, err := parseMember(s)
			if err != nil {
				return nil, err
			}
			ms[i] = m
		}
		return ms, nil
	}
	var ms []Member
	err := json.Unmarshal(raw, &ms)
	return ms, err
}

func parseMember(s string) (Member, error) {
	id, rest, ok1 := strings.Cut(s, "/")
	incS, rest, ok2 := strings.Cut(rest, "/")
	leaseS, rest, ok3 := strings.Cut(rest, "/")
	ttlS, rest, ok4 := strings.Cut(rest, "/")
	prioS, addr, withAddr := strings.Cut(rest, "/")
	if !ok1 || !ok2 || !ok3 || !ok4 || withAddr && addr == "" {
		return Member{}, fmt.Errorf("bad member %q: want id/incarnation/lease/ttl/priority[/address]", s)
	}
	inc, err1 := strconv.ParseUint(incS, 16, 64)
	lease, err2 := strconv.ParseUint(leaseS, 16, 64)
	ttl, err3 := strconv.ParseInt(ttlS, 10, 64)
	prio, err4 := strconv.Atoi(prioS)
	if id == "" || err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return Member{}, fmt.Errorf("bad member %q", s)
	}
	return Member{ID: id, Incarnation: inc, Lease: int64(lease), TTL: time.Duration(ttl) * time.Millisecond, Priority: prio, Addr: addr}, nil
}
