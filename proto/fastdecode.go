package proto

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
)

// decodeStoreForm parses the store form of an epoch record (EncodeEpoch)
// without reflection: a flat JSON object whose values are strings, unsigned
// numbers and arrays of member strings. Every member reads the record at
// every change, so this is on the hot path of an epoch change. It reports
// false for anything else (the verbose form, unknown shapes, whitespace),
// which DecodeEpoch then decodes the general way (json.Unmarshal). What it
// accepts, it decodes exactly as json.Unmarshal would, and it accepts
// nothing json.Unmarshal rejects: FuzzDecodeEpoch checks both.
func decodeStoreForm(data []byte) (EpochRecord, bool) {
	p := parser{s: string(data)}
	var r EpochRecord
	if !p.byte('{') {
		return r, false
	}
	if p.byte('}') {
		return r, p.end()
	}
	for {
		key, ok := p.str()
		if !ok || !p.byte(':') {
			return r, false
		}
		switch key {
		case "group", "state", "mode", "reason":
			v, ok := p.str()
			if !ok {
				return r, false
			}
			switch key {
			case "group":
				r.Group = v
			case "state":
				r.State = State(v)
			case "mode":
				r.Mode = Mode(v)
			case "reason":
				r.Reason = v
			}
		case "number", "prev_number", "written_ms":
			n, ok := p.uint()
			if !ok {
				return r, false
			}
			switch key {
			case "number":
				r.Number = n
			case "prev_number":
				r.PrevNumber = n
			default:
				if n > 1<<63-1 {
					return r, false
				}
				r.WrittenMillis = int64(n)
			}
		case "members", "prev", "excluded":
			ms, ok := p.members()
			if !ok {
				return r, false
			}
			switch key {
			case "members":
				r.Members = ms
			case "prev":
				r.Prev = ms
			case "excluded":
				r.Excluded = ms
			}
		default:
			return r, false
		}
		if p.byte('}') {
			return r, p.end()
		}
		if !p.byte(',') {
			return r, false
		}
	}
}

// parser reads the store form: JSON without insignificant whitespace
// beyond what json.Marshal writes (none).
type parser struct {
	s string
	i int
}

func (p *parser) byte(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) end() bool { return p.i == len(p.s) }

// str reads a JSON string. One with escapes or bytes outside ASCII that
// are not valid UTF-8 is handed to encoding/json, which unescapes it and
// replaces each invalid byte with U+FFFD.
func (p *parser) str() (string, bool) {
	if !p.byte('"') {
		return "", false
	}
	start := p.i
	escaped, ascii := false, true
	for p.i < len(p.s) {
		switch c := p.s[p.i]; {
		case c == '\\':
			escaped = true
			p.i += 2
			continue
		case c == '"':
			v := p.s[start:p.i]
			p.i++
			if escaped || !ascii && !utf8.ValidString(v) {
				var out string
				if json.Unmarshal([]byte(p.s[start-1:p.i]), &out) != nil {
					return "", false
				}
				return out, true
			}
			return v, true
		case c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
		p.i++
	}
	return "", false
}

func (p *parser) uint() (uint64, bool) {
	start := p.i
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	n, err := strconv.ParseUint(p.s[start:p.i], 10, 64)
	return n, err == nil && (p.i-start == 1 || p.s[start] != '0')
}

// members reads an array of member strings (or null).
func (p *parser) members() ([]Member, bool) {
	if strings.HasPrefix(p.s[p.i:], "null") {
		p.i += 4
		return nil, true
	}
	if !p.byte('[') {
		return nil, false
	}
	if p.byte(']') {
		return []Member{}, true
	}
	if p.i == len(p.s) || p.s[p.i] != '"' { // the verbose form: not ours
		return nil, false
	}
	n := 1
	if j := strings.IndexByte(p.s[p.i:], ']'); j >= 0 {
		n += strings.Count(p.s[p.i:p.i+j], ",")
	}
	ms := make([]Member, 0, n)
	for {
		s, ok := p.str()
		if !ok {
			return nil, false
		}
		m, err := parseMember(s)
		if err != nil {
			return nil, false
		}
		ms = append(ms, m)
		if p.byte(']') {
			return ms, true
		}
		if !p.byte(',') {
			return nil, false
		}
	}
}
