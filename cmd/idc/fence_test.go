package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/proto"
)

// quiescing writes group g's epoch record: epoch n quiescing after n-1,
// written by a coordinator in mode (its default); it returns the store
// revision of the write.
func (s *testStore) quiescing(g string, n uint64, mode proto.Mode) int64 {
	s.t.Helper()
	a := proto.Member{ID: "a", Incarnation: 1}
	b := proto.Member{ID: "b", Incarnation: 2}
	return s.put(s.keys.Epoch(g), string(proto.EncodeEpoch(proto.EpochRecord{
		Group: g, Number: n, State: proto.Quiescing, Mode: mode,
		Members: []proto.Member{a}, PrevNumber: n - 1, Prev: []proto.Member{a, b},
	})))
}

// register writes resource r's registration in g, as its fence driver
// would; fenceAck writes its acknowledgement of epoch e's fence.
func (s *testStore) register(g, r string) int64 {
	return s.putJSON(s.keys.Resource(g, r), proto.Resource{Name: r})
}

func (s *testStore) fenceAck(g, r string, e uint64) {
	s.putJSON(s.keys.FenceAck(g, e, r), proto.FenceAck{Epoch: e, Resource: r})
}

// TestFenceListPendingThenAcked: idc fence list shows, per resource
// registered or expected, the highest epoch acknowledged and whether the
// current fence is acknowledged or pending (holding a quiescing epoch back
// in fence mode); idc status names the pending ones; once they
// acknowledge, both show them acknowledged. idc fence show adds the
// acknowledgements present.
func TestFenceListPendingThenAcked(t *testing.T) {
	s := newTestStore(t)
	// disk1 and disk2 are expected; disk1 and disk3 registered. The
	// coordinator's default is lease mode; the group's configuration says
	// fence.
	s.putJSON(s.keys.Config("g"), proto.GroupConfig{Mode: proto.ModeFence, Resources: []string{"disk1", "disk2"}})
	s.register("g", "disk1")
	reg3 := s.register("g", "disk3")
	s.fenceAck("g", "disk1", 1)
	s.fenceAck("g", "disk3", 1)
	rev := s.quiescing("g", 2, proto.ModeLease)
	s.fenceAck("g", "disk1", 2)

	out := s.mustIdc("fence", "list")
	if want := fmt.Sprintf("group g: epoch 2 quiescing, fence mode (group configuration); epoch record written at store revision %d", rev); !strings.Contains(out, want) {
		t.Errorf("fence list lacks %q", want)
	}
	for _, want := range [][]string{
		{"RESOURCE", "REGISTERED", "EXPECTED", "ACKED", "FENCE"},
		{"disk1", "yes", "yes", "2", "acked"},
		{"disk2", "no", "yes", "-", "pending:", "epoch", "2", "waits", "for", "it"},
		{"disk3", "yes", "no", "1", "pending:", "epoch", "2", "waits", "for", "it"},
	} {
		if !hasLine(out, want...) {
			t.Errorf("fence list lacks the line %q", want)
		}
	}
	out = s.mustIdc("fence", "list", "g", "--json")
	var groups []inspect.GroupFences
	if err := json.Unmarshal([]byte(out), &groups); err != nil {
		t.Fatalf("fence list --json: %v", err)
	}
	type row struct {
		name           string
		reg, exp       bool
		acked          uint64
		fence          string
		holds          bool
		registeredAtOK bool
	}
	var got []row
	for _, r := range groups[0].Resources {
		got = append(got, row{r.Name, r.Registered, r.Expected, r.Acked, r.Fence, r.HoldsBack, (r.RegisteredRevision > 0) == r.Registered})
	}
	want := []row{
		{"disk1", true, true, 2, inspect.FenceAcked, false, true},
		{"disk2", false, true, 0, inspect.FencePending, true, true},
		{"disk3", true, false, 1, inspect.FencePending, true, true},
	}
	if g := groups[0]; len(groups) != 1 || g.Epoch != 2 || g.State != proto.Quiescing || g.EpochRevision != rev || g.Mode != proto.ModeFence || !g.ModeConfigured || !reflect.DeepEqual(got, want) {
		t.Errorf("fence list --json = %+v\nresources %v\nwant %v", groups, got, want)
	}

	// idc status names the pending ones, and which are not registered.
	out = s.mustIdc("status", "g")
	if !strings.Contains(out, "  pending fence acks: disk2, disk3 (expected, not registered: disk2)\n") {
		t.Errorf("status does not name the pending fence acknowledgements")
	}
	out = s.mustIdc("status", "g", "--json")
	var st []inspect.Group
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st[0].PendingFenceAcks, []string{"disk2", "disk3"}) || !reflect.DeepEqual(st[0].PendingUnregistered, []string{"disk2"}) {
		t.Errorf("status --json: pending fence acks %v, not registered %v; want [disk2 disk3], [disk2]", st[0].PendingFenceAcks, st[0].PendingUnregistered)
	}

	// In lease mode nothing waits for them.
	s.putJSON(s.keys.Config("g"), proto.GroupConfig{Mode: proto.ModeLease, Resources: []string{"disk1", "disk2"}})
	if out := s.mustIdc("fence", "list", "g"); !hasLine(out, "disk2", "no", "yes", "-", "pending", "(not", "waited", "for", "in", "this", "mode)") {
		t.Errorf("fence list in lease mode: disk2 not shown pending and not waited for")
	}
	if out := s.mustIdc("status", "g"); strings.Contains(out, "pending fence acks") {
		t.Errorf("status in lease mode shows pending fence acknowledgements")
	}
	s.putJSON(s.keys.Config("g"), proto.GroupConfig{Mode: proto.ModeFence, Resources: []string{"disk1", "disk2"}})

	// disk2 starts, registers and acknowledges; so does disk3.
	s.register("g", "disk2")
	s.fenceAck("g", "disk2", 2)
	s.fenceAck("g", "disk3", 2)
	out = s.mustIdc("fence", "list", "g")
	for _, want := range [][]string{
		{"disk1", "yes", "yes", "2", "acked"},
		{"disk2", "yes", "yes", "2", "acked"},
		{"disk3", "yes", "no", "2", "acked"},
	} {
		if !hasLine(out, want...) {
			t.Errorf("fence list after the acknowledgements lacks the line %q", want)
		}
	}
	if out := s.mustIdc("status", "g"); strings.Contains(out, "pending fence acks") {
		t.Errorf("status still shows pending fence acknowledgements")
	}

	out = s.mustIdc("fence", "show", "g", "disk3")
	if !strings.HasPrefix(out, "resource disk3 of group g (store revision ") {
		t.Errorf("fence show does not start by naming the resource and group")
	}
	for _, want := range [][]string{
		{"registered", "yes", "(record", "written", "at", "store", "revision", fmt.Sprint(reg3) + ")"},
		{"expected", "no"},
		{"epoch", "2", "quiescing,", "fence", "mode", "(group", "configuration);", "epoch", "record", "written", "at", "store", "revision", fmt.Sprint(rev)},
		{"fence", "acked"},
		{"highest", "acked", "2"},
		{"fence", "acks", "present", "1,", "2"},
	} {
		if !hasLine(out, want...) {
			t.Errorf("fence show lacks the line %q", want)
		}
	}
	out = s.mustIdc("fence", "show", "g", "disk2", "--json")
	var one inspect.GroupFences
	if err := json.Unmarshal([]byte(out), &one); err != nil {
		t.Fatal(err)
	}
	if len(one.Resources) != 1 || one.Resources[0].Name != "disk2" || !reflect.DeepEqual(one.Resources[0].AckEpochs, []uint64{2}) {
		t.Errorf("fence show --json = %+v", one)
	}
	if _, err := s.idc("", "fence", "show", "g", "nosuch"); !errors.Is(err, inspect.ErrNoResource) {
		t.Errorf("fence show of an unknown resource: err = %v, want ErrNoResource", err)
	}
}

// TestFenceRemove: idc fence remove prints what it will do and removes
// nothing unless confirmed (no input, or "n"); with --yes, or "y" on its
// input, it deletes the registration and the expectation together; the
// group then no longer waits for the resource. A change between its read
// and its write removes nothing.
func TestFenceRemove(t *testing.T) {
	s := newTestStore(t)
	s.putJSON(s.keys.Config("g"), proto.GroupConfig{Mode: proto.ModeFence, QuiesceTimeoutMillis: 3000, Resources: []string{"disk1", "disk2"}})
	s.register("g", "disk1")
	s.register("g", "disk2")
	s.quiescing("g", 2, proto.ModeFence)
	s.fenceAck("g", "disk1", 2)
	regKey, cfgKey := s.keys.Resource("g", "disk2"), s.keys.Config("g")
	reg0, regRev0 := s.get(regKey)
	cfg0, cfgRev0 := s.get(cfgKey)
	unchanged := func(what string) {
		t.Helper()
		reg, regRev := s.get(regKey)
		cfg, cfgRev := s.get(cfgKey)
		if reg != reg0 || regRev != regRev0 || cfg != cfg0 || cfgRev != cfgRev0 {
			t.Fatalf("%s changed the records: registration %q@%d, configuration %q@%d", what, reg, regRev, cfg, cfgRev)
		}
	}

	for _, stdin := range []string{"", "n\n", "yes please\n"} {
		out, err := s.idc(stdin, "fence", "remove", "g", "disk2")
		if !errors.Is(err, errNotConfirmed) {
			t.Errorf("remove answered %q: err = %v, want errNotConfirmed", stdin, err)
		}
		for _, want := range []string{
			"its fence is pending: epoch 2 waits for it",
			"- delete its registration (/idc/groups/g/resources/disk2)",
			"- remove it from the group's expected resources: disk1, disk2 -> disk1",
			"If disk2 still runs, it is no longer fenced",
			"Remove disk2 from group g? [y/N]",
			"nothing removed",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("remove answered %q: output lacks %q", stdin, want)
			}
		}
		unchanged(fmt.Sprintf("remove answered %q", stdin))
	}

	// A change between the read and the write removes nothing.
	testHookBeforeWrite = func() { s.register("g", "disk2") } // disk2's driver starts again
	_, err := s.idc("", "fence", "remove", "g", "disk2", "--yes")
	testHookBeforeWrite = nil
	if !errors.Is(err, errConflict) {
		t.Errorf("remove across a change: err = %v, want errConflict", err)
	}
	if _, rev := s.get(regKey); rev == 0 {
		t.Errorf("remove across a change deleted the registration")
	}
	if c, _ := s.config("g"); len(c.Resources) != 2 {
		t.Errorf("remove across a change wrote the configuration: %+v", c)
	}

	out, err := s.idc("", "fence", "remove", "g", "disk2", "--yes")
	if err != nil {
		t.Fatalf("remove --yes: %v", err)
	}
	if strings.Contains(out, "[y/N]") || !strings.Contains(out, "removed disk2 from group g") {
		t.Errorf("remove --yes asked, or did not say it removed disk2")
	}
	if _, rev := s.get(regKey); rev != 0 {
		t.Errorf("remove --yes left disk2's registration")
	}
	if c, _ := s.config("g"); !reflect.DeepEqual(c, proto.GroupConfig{Mode: proto.ModeFence, QuiesceTimeoutMillis: 3000, Resources: []string{"disk1"}}) {
		t.Errorf("configuration after remove --yes: %+v, want disk2 alone gone", c)
	}
	out = s.mustIdc("fence", "list", "g")
	if strings.Contains(out, "disk2") {
		t.Errorf("fence list still shows disk2")
	}
	if out := s.mustIdc("status", "g"); strings.Contains(out, "pending fence acks") {
		t.Errorf("status still shows a pending fence acknowledgement")
	}
	if _, err := s.idc("", "fence", "remove", "g", "disk2", "--yes"); !errors.Is(err, inspect.ErrNoResource) {
		t.Errorf("removing disk2 again: err = %v, want ErrNoResource", err)
	}

	// Confirmed on the input: disk1 goes too. It acknowledged the current
	// epoch, and the command says so.
	out, err = s.idc("y\n", "fence", "remove", "g", "disk1")
	if err != nil {
		t.Fatalf("remove confirmed: %v", err)
	}
	if !strings.Contains(out, "it acknowledged the fence of the current epoch 2") {
		t.Errorf("remove of a resource that acknowledged the current epoch does not warn")
	}
	if _, rev := s.get(s.keys.Resource("g", "disk1")); rev != 0 {
		t.Errorf("confirmed remove left disk1's registration")
	}
	if c, _ := s.config("g"); len(c.Resources) != 0 || c.Mode != proto.ModeFence {
		t.Errorf("configuration after removing both: %+v", c)
	}
}
