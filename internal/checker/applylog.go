package checker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/idc-dev/idc/storage"
)

// The ops of the apply log's lines.
const (
	opWrite   = "write"
	opTrim    = "trim"
	opZero    = "zero"
	opFence   = "fence"
	opRefused = "refused"
)

// maxLine bounds an apply log line (they are some 200 bytes).
const maxLine = 1 << 20

// ReadApplyLog reads a storage's apply log: JSON lines, each a
// storage.Applied. Blank lines are skipped; a line that does not parse,
// or whose op is unknown, is an error that names the line.
func ReadApplyLog(r io.Reader) ([]storage.Applied, error) {
	var out []storage.Applied
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var a storage.Applied
		if err := json.Unmarshal(line, &a); err != nil {
			return out, fmt.Errorf("apply log line %d: %w", n, err)
		}
		if !knownOp(a.Op) {
			return out, fmt.Errorf("apply log line %d: %w %q", n, errApplyOp, a.Op)
		}
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("apply log line %d: %w", n+1, err)
	}
	return out, nil
}

// knownOp reports whether op is one the apply log writes.
func knownOp(op string) bool {
	switch op {
	case opWrite, opTrim, opZero, opFence, opRefused:
		return true
	}
	return false
}

// staleWrite is a write of an ended epoch applied after a later epoch of
// its group took over: after that epoch's fence held, or, for a group
// whose log has no fences, after it connected.
type staleWrite struct {
	storage.Applied
	later uint64 // the later epoch
	fence bool   // whether its fence held (else it connected)
	since int64  // when it took over (Unix ns)
}

// staleWrites returns the stale writes of log, in its order. A group
// whose log has fences is judged by them: a write is stale if a fence of
// a later epoch of its group held before it, in log order. A group whose
// log has none (the storage checks no tokens: lease mode) is judged by
// connected: a write of epoch e is stale if it was applied at or after
// any epoch above e connected. An unknown op makes the log invalid.
func staleWrites(log []storage.Applied, connected map[uint64]time.Time) ([]staleWrite, error) {
	fenced := map[string]bool{}
	for i, a := range log {
		if !knownOp(a.Op) {
			return nil, fmt.Errorf("apply log entry %d: %w %q", i+1, errApplyOp, a.Op)
		}
		if a.Op == opFence {
			fenced[a.Group] = true
		}
	}
	takeover := newTakeovers(connected)
	type floor struct {
		epoch uint64
		at    int64
	}
	floors := map[string]floor{} // group → its highest fence so far
	var out []staleWrite
	for _, a := range log {
		switch {
		case a.Op == opRefused:
		case a.Op == opFence:
			if f := floors[a.Group]; a.Epoch > f.epoch {
				floors[a.Group] = floor{a.Epoch, a.At}
			}
		case fenced[a.Group]:
			if f := floors[a.Group]; a.Epoch < f.epoch {
				out = append(out, staleWrite{Applied: a, later: f.epoch, fence: true, since: f.at})
			}
		default:
			if e, at, ok := takeover.after(a.Epoch); ok && a.At >= at {
				out = append(out, staleWrite{Applied: a, later: e, since: at})
			}
		}
	}
	return out, nil
}

// takeovers answers, for an epoch e, which epoch above e connected first.
type takeovers struct {
	epochs []uint64 // in order
	first  []int    // first[i]: the index of the epoch of epochs[i:] that connected first
	at     []int64  // at[i]: when epochs[i] connected (Unix ns)
}

// newTakeovers indexes connected.
func newTakeovers(connected map[uint64]time.Time) takeovers {
	var t takeovers
	for e := range connected {
		t.epochs = append(t.epochs, e)
	}
	slices.Sort(t.epochs)
	t.first = make([]int, len(t.epochs))
	t.at = make([]int64, len(t.epochs))
	for i := len(t.epochs) - 1; i >= 0; i-- {
		t.at[i] = connected[t.epochs[i]].UnixNano()
		t.first[i] = i
		if i+1 < len(t.epochs) && t.at[t.first[i+1]] < t.at[i] {
			t.first[i] = t.first[i+1]
		}
	}
	return t
}

// after returns the epoch above e that connected first, and when.
func (t takeovers) after(e uint64) (uint64, int64, bool) {
	i, found := slices.BinarySearch(t.epochs, e)
	if found {
		i++
	}
	if i == len(t.epochs) {
		return 0, 0, false
	}
	j := t.first[i]
	return t.epochs[j], t.at[j], true
}

// describeStale says what stale shows, in one clause.
func describeStale(stale []staleWrite) string {
	s := stale[0]
	how := fmt.Sprintf("the fence of epoch %d held at %s", s.later, unixTime(s.since))
	if !s.fence {
		how = fmt.Sprintf("epoch %d connected at %s", s.later, unixTime(s.since))
	}
	n := len(stale)
	return fmt.Sprintf("%d %s of ended epochs applied after a later epoch took over (first: a %s of epoch %d by %q of group %q at %s, after %s)",
		n, plural(n, "write", "writes"), s.Op, s.Epoch, s.Domain, s.Group, unixTime(s.At), how)
}

// unixTime formats Unix nanoseconds as a UTC time.
func unixTime(ns int64) string {
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

// FirstApplies returns, for each epoch of the apply log's writes, when
// its first write was applied: no earlier than the epoch connected (its
// token did not exist before), so it can stand for History.Connected when
// the connect times were not observed — a later time than the true
// connect, which makes the stale check miss what lands in between, never
// find what is not there.
func FirstApplies(log []storage.Applied) map[uint64]time.Time {
	out := map[uint64]time.Time{}
	for _, a := range log {
		if a.Op != "write" && a.Op != "trim" && a.Op != "zero" {
			continue
		}
		t := time.Unix(0, a.At)
		if old, ok := out[a.Epoch]; !ok || t.Before(old) {
			out[a.Epoch] = t
		}
	}
	return out
}
