package inspect

import (
	"reflect"
	"testing"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
)

// fenceView is group g with disk1 and disk2 expected, disk1 and disk3
// registered, epoch 7 quiescing (written in lease mode, the coordinator's
// default) and a configuration in fence mode; disk1 acknowledged epochs
// 6 and 7, disk3 epoch 6, gone (removed) epoch 7.
func fenceView() core.View {
	a := proto.Member{ID: "a", Incarnation: 1}
	b := proto.Member{ID: "b", Incarnation: 2}
	v := core.NewView("g")
	v.Epoch = &proto.EpochRecord{Group: "g", Number: 7, State: proto.Quiescing, Mode: proto.ModeLease,
		Members: []proto.Member{a}, Prev: []proto.Member{a, b}, PrevNumber: 6}
	v.EpochRevision = 40
	v.Config = proto.GroupConfig{Mode: proto.ModeFence, Resources: []string{"disk2", "disk1"}}
	v.Resources = []string{"disk1", "disk3"}
	v.FenceAcks[6] = map[string]bool{"disk1": true, "disk3": true}
	v.FenceAcks[7] = map[string]bool{"disk1": true, "gone": true}
	return v
}

// TestSummarizeFences: every resource registered or expected, with the
// highest epoch it acknowledged and whether the current fence is
// acknowledged or pending; pending ones hold a quiescing epoch back only
// in fence modes, and the configuration's mode is the group's.
func TestSummarizeFences(t *testing.T) {
	v := fenceView()
	g := SummarizeFences(&v, 42)
	want := []ResourceFence{
		{Name: "disk1", Registered: true, Expected: true, Acked: 7, AckEpochs: []uint64{6, 7}, Fence: FenceAcked},
		{Name: "disk2", Expected: true, Fence: FencePending, HoldsBack: true},
		{Name: "disk3", Registered: true, Acked: 6, AckEpochs: []uint64{6}, Fence: FencePending, HoldsBack: true},
	}
	if !reflect.DeepEqual(g.Resources, want) {
		t.Errorf("resources:\n got %+v\nwant %+v", g.Resources, want)
	}
	if g.Name != "g" || g.Revision != 42 || g.Epoch != 7 || g.State != proto.Quiescing || g.EpochRevision != 40 ||
		g.Mode != proto.ModeFence || !g.ModeConfigured || !g.Configured {
		t.Errorf("summary %+v", g)
	}
	if p := g.Pending(); !reflect.DeepEqual(p, []string{"disk2", "disk3"}) {
		t.Errorf("pending %v, want [disk2 disk3]", p)
	}

	// Without a configured mode, the record's applies: lease mode waits
	// for no fence.
	v.Config.Mode = ""
	g = SummarizeFences(&v, 43)
	if g.Mode != proto.ModeLease || g.ModeConfigured || g.Resources[1].Fence != FencePending || g.Resources[1].HoldsBack {
		t.Errorf("lease mode: %+v", g)
	}

	// A connected epoch holds nothing back.
	v = fenceView()
	v.Epoch.State, v.Epoch.Prev, v.Epoch.PrevNumber = proto.Connected, nil, 0
	g = SummarizeFences(&v, 44)
	if g.Resources[1].Fence != FencePending || g.Resources[1].HoldsBack || g.Resources[2].HoldsBack {
		t.Errorf("connected: %+v", g.Resources)
	}

	// No epoch yet: no fence to acknowledge.
	v = fenceView()
	v.Epoch, v.EpochRevision = nil, 0
	g = SummarizeFences(&v, 45)
	if g.Epoch != 0 || g.Mode != proto.ModeFence || g.Resources[0].Fence != "" || g.Resources[1].HoldsBack {
		t.Errorf("no epoch: %+v", g)
	}

	// Neither mode nor epoch: the mode is unknown.
	v.Config.Mode = ""
	if g := SummarizeFences(&v, 46); g.Mode != "" || g.ModeConfigured {
		t.Errorf("no mode: %+v", g)
	}
}

// TestSummarizePendingExpected: idc status's pending fence
// acknowledgements are those of every resource registered or expected,
// the expected ones not registered named apart, in the group's configured
// mode.
func TestSummarizePendingExpected(t *testing.T) {
	v := fenceView()
	g := Summarize(&v, 42)
	if !reflect.DeepEqual(g.PendingFenceAcks, []string{"disk2", "disk3"}) || !reflect.DeepEqual(g.PendingUnregistered, []string{"disk2"}) {
		t.Errorf("pending fence acks %v, not registered %v; want [disk2 disk3], [disk2]", g.PendingFenceAcks, g.PendingUnregistered)
	}
	// The configuration says lease: nothing is waited for, whatever the
	// record's mode.
	v.Config.Mode = proto.ModeLease
	v.Epoch.Mode = proto.ModeFence
	if g := Summarize(&v, 43); len(g.PendingFenceAcks)+len(g.PendingUnregistered) != 0 {
		t.Errorf("lease mode: pending fence acks %v, not registered %v; want none", g.PendingFenceAcks, g.PendingUnregistered)
	}
}

// TestFenceOfRemoved: a resource neither registered nor expected is
// summarized from its acknowledgements, holding nothing back.
func TestFenceOfRemoved(t *testing.T) {
	v := fenceView()
	g := SummarizeFences(&v, 42)
	r := resourceFence(&v, &g, "gone")
	if want := (ResourceFence{Name: "gone", Acked: 7, AckEpochs: []uint64{7}, Fence: FenceAcked}); !reflect.DeepEqual(r, want) {
		t.Errorf("removed resource: %+v, want %+v", r, want)
	}
	v.FenceAcks[7] = map[string]bool{}
	v.FenceAcks[6]["gone"] = true
	if r := resourceFence(&v, &g, "gone"); r.Fence != FencePending || r.HoldsBack {
		t.Errorf("removed resource with a pending fence: %+v, want pending, holding nothing back", r)
	}
}
