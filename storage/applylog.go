package storage

import (
	"encoding/json"
	"strconv"
)

// appendApplied appends a's line of the apply log to dst: exactly what
// encoding/json's Encoder writes for it (the fields in their order, the
// empty optional ones left out, the newline), without its reflection, as
// a line is written for every write applied.
func appendApplied(dst []byte, a *Applied) []byte {
	dst = append(dst, `{"op":`...)
	dst = appendString(dst, a.Op)
	if a.Group != "" {
		dst = append(dst, `,"group":`...)
		dst = appendString(dst, a.Group)
	}
	dst = append(dst, `,"epoch":`...)
	dst = strconv.AppendUint(dst, a.Epoch, 10)
	dst = append(dst, `,"domain":`...)
	dst = appendString(dst, a.Domain)
	dst = append(dst, `,"incarnation":`...)
	dst = strconv.AppendUint(dst, a.Inc, 10)
	dst = append(dst, `,"id":`...)
	dst = strconv.AppendUint(dst, a.ID, 10)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, a.Offset, 10)
	dst = append(dst, `,"length":`...)
	dst = strconv.AppendUint(dst, uint64(a.Length), 10)
	dst = append(dst, `,"at":`...)
	dst = strconv.AppendInt(dst, a.At, 10)
	if a.Request != "" {
		dst = append(dst, `,"request":`...)
		dst = appendString(dst, a.Request)
	}
	if a.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, a.Reason)
	}
	return append(dst, "}\n"...)
}

// appendFence appends a fence's line of the apply log to dst, as
// encoding/json's Encoder writes the fenceLine.
func appendFence(dst []byte, group string, epoch uint64, at int64) []byte {
	dst = append(dst, `{"op":"fence","group":`...)
	dst = appendString(dst, group)
	dst = append(dst, `,"epoch":`...)
	dst = strconv.AppendUint(dst, epoch, 10)
	dst = append(dst, `,"at":`...)
	dst = strconv.AppendInt(dst, at, 10)
	return append(dst, "}\n"...)
}

// appendString appends s as a JSON string, as encoding/json writes it
// (with its HTML escaping): names of groups and domains are plain ASCII,
// written as they are; anything else is left to encoding/json.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always encodes
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
