package inspect

import (
	"reflect"
	"testing"
	"time"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
)

func TestSummarize(t *testing.T) {
	m := func(id string, inc uint64) proto.Member {
		return proto.Member{ID: id, Incarnation: inc, TTL: 2 * time.Second}
	}
	a, b, c, d, x, j := m("a", 1), m("b", 2), m("c", 3), m("d", 4), m("x", 9), m("j", 10)
	// Channel addresses: a and c have one; b has none; d's epoch record
	// names another address than its member record; j is only registered.
	a.Addr, c.Addr, d.Addr, j.Addr = "tcp://127.0.0.1:4001", "unix:///run/idc/c.sock", "tcp://127.0.0.1:4004", "tcp://[::1]:4010"
	v := core.NewView("g")
	for _, lm := range []proto.Member{a, b, d, x, j} { // c is gone
		v.Live[lm.ID] = lm
	}
	d.Addr = "tcp://127.0.0.1:9999" // as the epoch record has it
	v.Epoch = &proto.EpochRecord{Group: "g", Number: 5, State: proto.Quiescing, Mode: proto.ModeBoth,
		Members: []proto.Member{a, b, d}, Prev: []proto.Member{a, b, c}, PrevNumber: 3,
		Excluded: []proto.Member{x}, Reason: "c lease gone; d joined"}
	v.Acks[5] = map[string]uint64{"a": 1, "b": 7} // b's ack is another incarnation's
	v.Left["c"] = 3
	v.Resources = []string{"r1", "r2"}
	v.FenceAcks[5] = map[string]bool{"r1": true}

	g := Summarize(&v, 42)
	type row struct {
		id, role       string
		live, acked, l bool
		addr           string
	}
	var got []row
	for _, dm := range g.Domains {
		got = append(got, row{dm.ID, dm.Role, dm.Live, dm.Acked, dm.Left, dm.Addr})
	}
	want := []row{
		{"a", RoleSurvivor, true, true, false, "tcp://127.0.0.1:4001"},
		{"b", RoleSurvivor, true, false, false, ""},
		{"d", RoleJoiner, true, false, false, "tcp://127.0.0.1:4004"},     // the member record's
		{"c", RoleDeparted, false, false, true, "unix:///run/idc/c.sock"}, // the epoch record's: c's member record is gone
		{"x", RoleExcluded, true, false, false, ""},
		{"j", RoleRegistered, true, false, false, "tcp://[::1]:4010"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("domains:\n got %v\nwant %v", got, want)
	}
	if !reflect.DeepEqual(g.PendingAcks, []string{"b"}) || !reflect.DeepEqual(g.PendingFenceAcks, []string{"r2"}) {
		t.Errorf("pending acks %v, fence acks %v; want [b], [r2]", g.PendingAcks, g.PendingFenceAcks)
	}
	if g.Epoch != 5 || g.PrevEpoch != 3 || g.State != proto.Quiescing || g.Revision != 42 || g.Domains[3].LeaseLeftMs != -1 || g.Domains[0].LeaseLeftMs != 0 {
		t.Errorf("summary %+v", g)
	}

	// Connected: every member is a member; nothing pending.
	v.Epoch = &proto.EpochRecord{Group: "g", Number: 6, State: proto.Connected, Mode: proto.ModeLease, Members: []proto.Member{a, b, d}}
	g = Summarize(&v, 43)
	if len(g.PendingAcks)+len(g.PendingFenceAcks) != 0 || g.Domains[0].Role != RoleMember || g.Domains[2].Role != RoleMember {
		t.Errorf("connected summary %+v", g)
	}

	// No epoch yet: everyone is registered.
	empty := core.NewView("h")
	empty.Live["a"] = a
	if g := Summarize(&empty, 1); g.Epoch != 0 || len(g.Domains) != 1 || g.Domains[0].Role != RoleRegistered {
		t.Errorf("no-epoch summary %+v", g)
	}
}
