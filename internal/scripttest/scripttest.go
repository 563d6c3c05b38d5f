// Package scripttest holds what the interaction scripts of the pure
// machines (core/member, core/coordinator; cockroachdb/datadriven) share:
// reading their arguments and printing members.
package scripttest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/idc-dev/idc/proto"
)

// Dur reads the duration argument key=1.5s; a missing one gives def, or
// fails the script if def is negative.
func Dur(t *testing.T, td *datadriven.TestData, key string, def time.Duration) time.Duration {
	t.Helper()
	if !td.HasArg(key) {
		if def < 0 {
			td.Fatalf(t, "%s: missing %s=", td.Cmd, key)
		}
		return def
	}
	var s string
	td.ScanArgs(t, key, &s)
	v, err := time.ParseDuration(s)
	if err != nil {
		td.Fatalf(t, "%s=%q: %v", key, s, err)
	}
	return v
}

// Uint reads the argument key=N.
func Uint(t *testing.T, td *datadriven.TestData, key string) uint64 {
	t.Helper()
	var v uint64
	td.ScanArgs(t, key, &v)
	return v
}

// Ref reads a member written id/incarnation.
func Ref(t *testing.T, td *datadriven.TestData, s string) proto.Ref {
	t.Helper()
	id, inc, ok := strings.Cut(s, "/")
	n, err := strconv.ParseUint(inc, 10, 64)
	if !ok || err != nil || id == "" {
		td.Fatalf(t, "member %q: want id/incarnation", s)
	}
	return proto.Ref{ID: id, Incarnation: n}
}

// Members reads a/1,b/2 and returns the members sorted by ID; complete
// fills in the rest of each member (nil: ID and incarnation only).
func Members(t *testing.T, td *datadriven.TestData, s string, complete func(proto.Ref) proto.Member) []proto.Member {
	t.Helper()
	var out []proto.Member
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		r := Ref(t, td, f)
		m := proto.Member{ID: r.ID, Incarnation: r.Incarnation}
		if complete != nil {
			m = complete(r)
		}
		out = append(out, m)
	}
	return proto.SortMembers(out)
}

// MembersArg reads the argument key=a/1,b/2 as Members does; nil if absent.
func MembersArg(t *testing.T, td *datadriven.TestData, key string, complete func(proto.Ref) proto.Member) []proto.Member {
	t.Helper()
	if !td.HasArg(key) {
		return nil
	}
	var s string
	td.ScanArgs(t, key, &s)
	return Members(t, td, s, complete)
}

// FmtMembers prints members as a/1,b/2, or "none".
func FmtMembers(ms []proto.Member) string {
	if len(ms) == 0 {
		return "none"
	}
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = fmt.Sprintf("%s/%d", m.ID, m.Incarnation)
	}
	return strings.Join(s, ",")
}
