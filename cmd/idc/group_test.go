package main

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// testStore is a real embedded etcd with no coordinator: tests write the
// records a coordinator and resources would write.
type testStore struct {
	t        *testing.T
	endpoint string
	cli      *clientv3.Client
	keys     proto.Keys
}

func newTestStore(t *testing.T) *testStore {
	e := testenv.Etcd(t)
	return &testStore{t: t, endpoint: e.Endpoints[0], cli: testenv.Client(t, e.Endpoints)}
}

// put writes key and returns the store revision of the write.
func (s *testStore) put(key, val string) int64 {
	s.t.Helper()
	resp, err := s.cli.Put(context.Background(), key, val)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.Header.Revision
}

// putJSON writes v as JSON at key and returns the store revision.
func (s *testStore) putJSON(key string, v any) int64 {
	s.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		s.t.Fatal(err)
	}
	return s.put(key, string(b))
}

// get returns key's value and mod revision (0 when absent).
func (s *testStore) get(key string) (string, int64) {
	s.t.Helper()
	resp, err := s.cli.Get(context.Background(), key)
	if err != nil {
		s.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision
}

// config returns group g's configuration record, decoded, and whether it
// is present.
func (s *testStore) config(g string) (proto.GroupConfig, bool) {
	s.t.Helper()
	val, rev := s.get(s.keys.Config(g))
	var c proto.GroupConfig
	if rev == 0 {
		return c, false
	}
	if err := json.Unmarshal([]byte(val), &c); err != nil {
		s.t.Fatalf("config of %s: %v: %q", g, err, val)
	}
	return c, true
}

// idc runs the idc command against the store with stdin as its input.
func (s *testStore) idc(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out syncBuffer
	root := newRoot()
	root.SetArgs(append(args, "--etcd-endpoints", s.endpoint))
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(ctx)
	s.t.Logf("idc %s:\n%s", strings.Join(args, " "), out.String())
	return out.String(), err
}

// mustIdc runs the idc command and fails the test if it fails.
func (s *testStore) mustIdc(args ...string) string {
	s.t.Helper()
	out, err := s.idc("", args...)
	if err != nil {
		s.t.Fatalf("idc %v: %v", args, err)
	}
	return out
}

// hasLine reports whether text has a line whose fields are want's.
func hasLine(text string, want ...string) bool {
	for _, line := range strings.Split(text, "\n") {
		if strings.Join(strings.Fields(line), " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}

// TestGroupSetShow: idc group set writes the configuration and changes
// only the fields whose flags are given; idc group show shows it with
// "(coordinator default)" for fields unset, the resources registered and
// those expected but not registered; --clear deletes it.
func TestGroupSetShow(t *testing.T) {
	s := newTestStore(t)
	out := s.mustIdc("group", "set", "g", "--mode", "fence", "--resources", "disk1,disk2")
	for _, want := range [][]string{{"mode", "fence"}, {"quiesce", "timeout", "(coordinator", "default)"}, {"expected", "resources", "disk1,", "disk2"}} {
		if !hasLine(out, want...) {
			t.Errorf("group set output lacks the line %q", want)
		}
	}
	if c, _ := s.config("g"); !reflect.DeepEqual(c, proto.GroupConfig{Mode: proto.ModeFence, Resources: []string{"disk1", "disk2"}}) {
		t.Fatalf("stored configuration %+v", c)
	}

	// Only the flag given changes.
	s.mustIdc("group", "set", "g", "--quiesce-timeout", "1500ms")
	want := proto.GroupConfig{Mode: proto.ModeFence, QuiesceTimeoutMillis: 1500, Resources: []string{"disk1", "disk2"}}
	if c, _ := s.config("g"); !reflect.DeepEqual(c, want) {
		t.Fatalf("after --quiesce-timeout: stored configuration %+v, want %+v", c, want)
	}

	// disk1 and disk3 register, as their fence drivers would.
	s.putJSON(s.keys.Resource("g", "disk1"), proto.Resource{Name: "disk1"})
	s.putJSON(s.keys.Resource("g", "disk3"), proto.Resource{Name: "disk3"})
	out = s.mustIdc("group", "show", "g")
	for _, want := range [][]string{
		{"mode", "fence"}, {"quiesce", "timeout", "1.5s"}, {"expected", "resources", "disk1,", "disk2"},
		{"registered", "resources", "disk1,", "disk3"}, {"expected,", "not", "registered", "disk2"},
	} {
		if !hasLine(out, want...) {
			t.Errorf("group show lacks the line %q", want)
		}
	}
	out = s.mustIdc("group", "show", "--json")
	var views []groupConfigView
	if err := json.Unmarshal([]byte(out), &views); err != nil {
		t.Fatalf("group show --json: %v", err)
	}
	wantView := groupConfigView{Group: "g", Configured: true, Config: want, Registered: []string{"disk1", "disk3"}, Unregistered: []string{"disk2"}}
	if len(views) != 1 || views[0].Revision == 0 {
		t.Fatalf("group show --json = %+v", views)
	}
	views[0].Revision = 0
	if !reflect.DeepEqual(views[0], wantView) {
		t.Errorf("group show --json = %+v, want %+v", views[0], wantView)
	}

	// "default" unsets a field; --resources "" empties the list.
	s.mustIdc("group", "set", "g", "--mode", "default", "--resources", "")
	if c, _ := s.config("g"); !reflect.DeepEqual(c, proto.GroupConfig{QuiesceTimeoutMillis: 1500}) {
		t.Errorf("after --mode default --resources \"\": stored configuration %+v", c)
	}
	out = s.mustIdc("group", "show", "g")
	if !hasLine(out, "mode", "(coordinator", "default)") || !hasLine(out, "expected", "resources", "(none)") {
		t.Errorf("group show after unsetting: want mode (coordinator default) and expected resources (none)")
	}

	out = s.mustIdc("group", "set", "g", "--clear")
	if _, ok := s.config("g"); ok || !strings.Contains(out, "configuration deleted") {
		t.Errorf("--clear left the configuration (or did not say it deleted it)")
	}
	out = s.mustIdc("group", "show", "g")
	if !strings.Contains(out, "group g: no configuration, the coordinator's defaults apply") {
		t.Errorf("group show after --clear does not say there is no configuration")
	}
	if out = s.mustIdc("group", "set", "g", "--clear"); !strings.Contains(out, "nothing deleted") {
		t.Errorf("--clear without a configuration does not say nothing was deleted")
	}
	if _, err := s.idc("", "group", "show", "nosuch"); !errors.Is(err, inspect.ErrNoGroup) {
		t.Errorf("group show of a group without records: err = %v, want ErrNoGroup", err)
	}
}

// TestGroupSetRefusesBadInput: bad names, modes and timeouts, no flag at
// all, and --clear with another flag are refused with a configuration
// error saying what is wrong, and nothing is written.
func TestGroupSetRefusesBadInput(t *testing.T) {
	s := newTestStore(t)
	s.mustIdc("group", "set", "g", "--mode", "both", "--resources", "disk1")
	val, rev := s.get(s.keys.Config("g"))
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"g", "--mode", "fencing"}, `--mode "fencing": want lease, fence, both or default`},
		{[]string{"g", "--mode", ""}, `--mode "": want lease, fence, both or default`},
		{[]string{"g", "--quiesce-timeout", "0"}, "--quiesce-timeout 0s must be positive"},
		{[]string{"g", "--quiesce-timeout", "-1s"}, "--quiesce-timeout -1s must be positive"},
		{[]string{"g", "--quiesce-timeout", "1500us"}, "not a whole number of milliseconds"},
		{[]string{"g", "--quiesce-timeout", "soon"}, `--quiesce-timeout "soon": want a duration`},
		{[]string{"g", "--resources", "disk1,bad/name"}, `resource "bad/name" has '/'`},
		{[]string{"g", "--resources", "disk1,.hidden"}, "starts with a dot"},
		{[]string{"g", "--resources", "disk1,disk1"}, "names disk1 twice"},
		{[]string{"g"}, "nothing to set"},
		{[]string{"g", "--clear", "--mode", "lease"}, "give it alone"},
		{[]string{"bad/group", "--mode", "lease"}, `group "bad/group" has '/'`},
		{[]string{".g", "--clear"}, "starts with a dot"},
	} {
		_, err := s.idc("", append([]string{"group", "set"}, tt.args...)...)
		if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("idc group set %q: err = %v, want ErrConfig saying %q", tt.args, err, tt.want)
		}
		if v, r := s.get(s.keys.Config("g")); v != val || r != rev {
			t.Fatalf("idc group set %q wrote the configuration: %q at revision %d, was %q at %d", tt.args, v, r, val, rev)
		}
	}
	resp, err := s.cli.Get(context.Background(), s.keys.Groups(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 1 {
		t.Errorf("the store holds %d keys under groups (err %v), want 1: only g's configuration", resp.Count, err)
	}

	// A stored configuration the coordinator ignores is not patched: the
	// command says so and points to --clear, which then works.
	s.put(s.keys.Config("h"), `{"mode":"fencing"}`)
	_, err = s.idc("", "group", "set", "h", "--quiesce-timeout", "2s")
	if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), "the coordinator ignores it; --clear deletes it") {
		t.Errorf("set over an invalid configuration: err = %v, want ErrConfig pointing to --clear", err)
	}
	if v, _ := s.get(s.keys.Config("h")); v != `{"mode":"fencing"}` {
		t.Errorf("set over an invalid configuration wrote %q", v)
	}
	if out := s.mustIdc("group", "show", "h"); !strings.Contains(out, `configuration ignored by the coordinator, which applies its defaults: mode "fencing" (want lease, fence or both)`) {
		t.Errorf("group show of an invalid configuration does not say it is ignored")
	}
	s.mustIdc("group", "set", "h", "--clear")
	if _, ok := s.config("h"); ok {
		t.Errorf("--clear left an invalid configuration")
	}
}

// TestGroupSetConflict: a configuration changed between set's read and
// its write is read again, not overwritten: both changes stay.
func TestGroupSetConflict(t *testing.T) {
	s := newTestStore(t)
	s.mustIdc("group", "set", "g", "--mode", "fence")
	writes := 0
	testHookBeforeWrite = func() {
		if writes++; writes == 1 { // another operator sets the timeout
			s.putJSON(s.keys.Config("g"), proto.GroupConfig{Mode: proto.ModeFence, QuiesceTimeoutMillis: 2000})
		}
	}
	defer func() { testHookBeforeWrite = nil }()
	s.mustIdc("group", "set", "g", "--resources", "disk1")
	want := proto.GroupConfig{Mode: proto.ModeFence, QuiesceTimeoutMillis: 2000, Resources: []string{"disk1"}}
	if c, _ := s.config("g"); !reflect.DeepEqual(c, want) || writes != 2 {
		t.Errorf("after a conflicting write: %+v after %d attempts, want %+v after 2", c, writes, want)
	}

	// One that keeps changing is given up on, with nothing of this
	// command's written.
	testHookBeforeWrite = func() {
		s.putJSON(s.keys.Config("g"), proto.GroupConfig{Mode: proto.ModeLease})
	}
	_, err := s.idc("", "group", "set", "g", "--mode", "both")
	if !errors.Is(err, errConflict) {
		t.Errorf("set against a configuration that keeps changing: err = %v, want errConflict", err)
	}
	if c, _ := s.config("g"); c.Mode != proto.ModeLease {
		t.Errorf("set against a configuration that keeps changing wrote %+v", c)
	}
}
