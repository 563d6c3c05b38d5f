package coordinator

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/idc-dev/idc/proto"
)

// TestDropSuspect checks the default topology policy (DESIGN §4 step 1):
// the suspect of a report is dropped; when two members report each other
// the one of higher priority stays, and with equal priorities the smaller
// ID stays; reports naming a non-member (as suspect or reporter) drop
// nobody; duplicates change nothing.
func TestDropSuspect(t *testing.T) {
	members := []proto.Member{
		{ID: "a", Incarnation: 1},
		{ID: "b", Incarnation: 2},
		{ID: "c", Incarnation: 3, Priority: 5},
		{ID: "d", Incarnation: 4, Priority: -1},
	}
	rep := func(reporter, suspect string) proto.FaultReport {
		inc := uint64(0)
		if m, ok := proto.Find(members, reporter); ok {
			inc = m.Incarnation
		}
		return proto.FaultReport{Epoch: 7, Reporter: reporter, ReporterIncarnation: inc, Suspect: suspect}
	}
	for _, tc := range []struct {
		name    string
		reports []proto.FaultReport
		want    string // dropped incarnation: reason; sorted
	}{
		{"no reports", nil, ""},
		{"single report", []proto.FaultReport{rep("a", "b")},
			"b/2: a reported losing b"},
		{"two suspects", []proto.FaultReport{rep("a", "b"), rep("a", "d")},
			"b/2: a reported losing b; d/4: a reported losing d"},
		{"mutual, equal priority: smaller ID stays", []proto.FaultReport{rep("a", "b"), rep("b", "a")},
			"b/2: a and b reported each other; b has lower priority"},
		{"mutual, equal priority, other order", []proto.FaultReport{rep("b", "a"), rep("a", "b")},
			"b/2: a and b reported each other; b has lower priority"},
		{"mutual, higher priority stays though its ID is larger", []proto.FaultReport{rep("a", "c"), rep("c", "a")},
			"a/1: c and a reported each other; a has lower priority"},
		{"mutual, negative priority loses", []proto.FaultReport{rep("d", "a"), rep("a", "d")},
			"d/4: a and d reported each other; d has lower priority"},
		{"suspect not a member", []proto.FaultReport{rep("a", "zz")}, ""},
		{"reporter not a member", []proto.FaultReport{rep("zz", "a")}, ""},
		{"mutual with a non-member", []proto.FaultReport{rep("zz", "a"), rep("a", "zz")}, ""},
		{"mutual with a non-member of lower priority", []proto.FaultReport{rep("zz", "d"), rep("d", "zz")}, ""},
		{"duplicates", []proto.FaultReport{rep("a", "b"), rep("a", "b"), rep("a", "b")},
			"b/2: a reported losing b"},
		{"duplicate mutual", []proto.FaultReport{rep("a", "b"), rep("b", "a"), rep("b", "a"), rep("a", "b")},
			"b/2: a and b reported each other; b has lower priority"},
		{"two reporters, one suspect: the first report names it", []proto.FaultReport{rep("a", "d"), rep("b", "d")},
			"d/4: a reported losing d"},
		{"mutual pair and a third report", []proto.FaultReport{rep("a", "b"), rep("b", "a"), rep("c", "d")},
			"b/2: a and b reported each other; b has lower priority; d/4: c reported losing d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.reports)
			got := DropSuspect{}.Drop(members, tc.reports)
			var parts []string
			for _, r := range slices.SortedFunc(maps.Keys(got), func(a, b proto.Ref) int { return strings.Compare(a.ID, b.ID) }) {
				parts = append(parts, fmt.Sprintf("%s/%d: %s", r.ID, r.Incarnation, got[r]))
				if !proto.Contains(members, r) {
					t.Errorf("drops %v, not a member incarnation", r)
				}
			}
			if s := strings.Join(parts, "; "); s != tc.want {
				t.Errorf("Drop(%v)\n got: %s\nwant: %s", tc.reports, s, tc.want)
			}
			if !slices.Equal(in, tc.reports) {
				t.Errorf("Drop modified its input")
			}
			// A pure function: the same answer again.
			if again := (DropSuspect{}).Drop(members, tc.reports); !maps.Equal(again, got) {
				t.Errorf("Drop is not deterministic: %v then %v", got, again)
			}
		})
	}
}

// TestDropSuspectNeverDropsBoth checks, over every pair of members and
// both report orders, that a mutual pair loses exactly one member.
func TestDropSuspectNeverDropsBoth(t *testing.T) {
	members := []proto.Member{
		{ID: "a", Incarnation: 1, Priority: 1},
		{ID: "b", Incarnation: 2, Priority: 1},
		{ID: "c", Incarnation: 3},
		{ID: "d", Incarnation: 4, Priority: 9},
	}
	for _, x := range members {
		for _, y := range members {
			if x.ID == y.ID {
				continue
			}
			reports := []proto.FaultReport{
				{Reporter: x.ID, ReporterIncarnation: x.Incarnation, Suspect: y.ID},
				{Reporter: y.ID, ReporterIncarnation: y.Incarnation, Suspect: x.ID},
			}
			got := DropSuspect{}.Drop(members, reports)
			if len(got) != 1 {
				t.Fatalf("%s<->%s: dropped %v, want exactly one", x.ID, y.ID, got)
			}
			stays := x
			if outranks(y, x) {
				stays = y
			}
			if _, ok := got[stays.Ref()]; ok {
				t.Errorf("%s<->%s: dropped %s, the one that outranks", x.ID, y.ID, stays.ID)
			}
		}
	}
}
