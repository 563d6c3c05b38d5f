package storage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
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

// OpenApplyLog opens the apply log at path for appending, creating it if
// need be. A store killed while it wrote its log may have left a last
// line cut short; OpenApplyLog cuts it off, so that the lines appended
// next are whole, and returns how many bytes it dropped.
func OpenApplyLog(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, 0, err
	}
	fail := func(err error) (*os.File, int64, error) {
		f.Close()
		return nil, 0, fmt.Errorf("apply log %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	// Find the last newline, reading backwards a piece at a time.
	end, keep := fi.Size(), int64(0)
	buf := make([]byte, 4096)
	for off := end; off > 0 && keep == 0; {
		n := min(off, int64(len(buf)))
		off -= n
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return fail(err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			keep = off + int64(i) + 1
		}
	}
	if keep < end {
		if err := f.Truncate(keep); err != nil {
			return fail(err)
		}
	}
	if _, err := f.Seek(keep, io.SeekStart); err != nil {
		return fail(err)
	}
	return f, end - keep, nil
}
