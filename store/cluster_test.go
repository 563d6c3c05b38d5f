package store_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

func TestParseCluster(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []store.Peer
		err  string
	}{
		{in: "a=http://10.0.0.1:2380", want: []store.Peer{{"a", "http://10.0.0.1:2380"}}},
		{in: "a=http://10.0.0.1:2380, b=http://10.0.0.2:2380", want: []store.Peer{{"a", "http://10.0.0.1:2380"}, {"b", "http://10.0.0.2:2380"}}},
		{in: "", err: "is empty"},
		{in: "a", err: `"a" is not name=peerURL`},
		{in: "a=http://x:1,,b=http://y:1", err: `"" is not name=peerURL`},
		{in: "=http://x:1", err: "is not name=peerURL"},
		{in: "a=", err: "is not name=peerURL"},
	} {
		got, err := store.ParseCluster(tc.in)
		if tc.err != "" {
			if !errors.Is(err, proto.ErrConfig) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseCluster(%q) = %v, want an ErrConfig saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParseCluster(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if s := store.FormatCluster(got); strings.ReplaceAll(tc.in, " ", "") != s {
			t.Errorf("FormatCluster(%v) = %q", got, s)
		}
	}
}

func TestEmbedConfigValidate(t *testing.T) {
	three := []store.Peer{{"s1", "http://10.0.0.1:2380"}, {"s2", "http://10.0.0.2:2380"}, {"s3", "http://10.0.0.3:2380"}}
	member := func(f func(*store.EmbedConfig)) store.EmbedConfig {
		c := store.EmbedConfig{DataDir: "/d", Name: "s1", Cluster: slices.Clone(three), ClientURL: "http://10.0.0.1:2379"}
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name   string
		c      store.EmbedConfig
		err    string
		config bool // wraps proto.ErrConfig
	}{
		{name: "single node defaults", c: store.EmbedConfig{DataDir: "/d"}},
		{name: "cluster member", c: member(func(*store.EmbedConfig) {})},
		{name: "cluster member listening everywhere", c: member(func(c *store.EmbedConfig) {
			c.PeerURL, c.ClientURL, c.AdvertiseClientURL = "http://0.0.0.0:2380", "http://0.0.0.0:2379", "http://10.0.0.1:2379"
		})},
		{name: "joins existing", c: member(func(c *store.EmbedConfig) { c.ClusterState = store.ClusterExisting; c.ClusterToken = "t" })},
		{name: "no data dir", c: store.EmbedConfig{}, err: "data dir is required"},
		{name: "short retention", c: store.EmbedConfig{DataDir: "/d", CompactionRetention: time.Millisecond}, err: "compaction retention", config: true},
		{name: "election below 5 ticks", c: store.EmbedConfig{DataDir: "/d", TickMs: 100, ElectionMs: 400}, err: "at least 5 heartbeat", config: true},
		{name: "election below 5 default ticks", c: store.EmbedConfig{DataDir: "/d", ElectionMs: 300}, err: "at least 5 heartbeat", config: true},
		{name: "own name missing", c: member(func(c *store.EmbedConfig) { c.Name = "s4" }), err: `name "s4" is not in the cluster`, config: true},
		{name: "default name missing", c: member(func(c *store.EmbedConfig) { c.Name = "" }), err: `name "idc" is not in the cluster`, config: true},
		{name: "name twice", c: member(func(c *store.EmbedConfig) {
			c.Cluster = append(c.Cluster, store.Peer{Name: "s2", URL: "http://10.0.0.4:2380"})
		}), err: `"s2" is given twice`, config: true},
		{name: "address twice", c: member(func(c *store.EmbedConfig) { c.Cluster[1].URL = "http://10.0.0.1:2380" }), err: "share the peer address", config: true},
		{name: "peer port 0", c: member(func(c *store.EmbedConfig) { c.Cluster[2].URL = "http://10.0.0.3:0" }), err: "fixed port", config: true},
		{name: "peer no port", c: member(func(c *store.EmbedConfig) { c.Cluster[2].URL = "http://10.0.0.3" }), err: "fixed port", config: true},
		{name: "peer unspecified", c: member(func(c *store.EmbedConfig) { c.Cluster[2].URL = "http://0.0.0.0:2380" }), err: "no address anyone can dial", config: true},
		{name: "peer scheme", c: member(func(c *store.EmbedConfig) { c.Cluster[2].URL = "unix:///x" }), err: `scheme "unix"`, config: true},
		{name: "peer path", c: member(func(c *store.EmbedConfig) { c.Cluster[2].URL = "http://10.0.0.3:2380/x" }), err: "nothing more", config: true},
		{name: "bad name", c: member(func(c *store.EmbedConfig) { c.Cluster[2].Name = "" }), err: "want a non-empty name", config: true},
		{name: "advertised peer elsewhere", c: member(func(c *store.EmbedConfig) { c.AdvertisePeerURL = "http://10.0.0.9:2380" }), err: "is not s1's URL in the cluster", config: true},
		{name: "bad state", c: member(func(c *store.EmbedConfig) { c.ClusterState = "old" }), err: `cluster state "old"`, config: true},
		{name: "existing without cluster", c: store.EmbedConfig{DataDir: "/d", ClusterState: store.ClusterExisting}, err: "needs the cluster's members", config: true},
		{name: "token without cluster", c: store.EmbedConfig{DataDir: "/d", ClusterToken: "t"}, err: "needs the cluster's members", config: true},
		{name: "client everywhere unadvertised", c: member(func(c *store.EmbedConfig) { c.ClientURL = "http://0.0.0.0:2379" }), err: "listens everywhere", config: true},
		{name: "client port 0", c: member(func(c *store.EmbedConfig) { c.ClientURL = "http://10.0.0.1:0" }), err: "fixed port", config: true},
		{name: "peer listen port 0", c: member(func(c *store.EmbedConfig) { c.PeerURL = "http://10.0.0.1:0" }), err: "fixed port", config: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Validate = %v, want an error saying %q", err, tc.err)
			}
			if !errors.Is(err, store.ErrEmbed) {
				t.Errorf("%v does not wrap store.ErrEmbed", err)
			}
			if errors.Is(err, proto.ErrConfig) != tc.config {
				t.Errorf("errors.Is(%v, proto.ErrConfig) = %v, want %v", err, !tc.config, tc.config)
			}
		})
	}
}

// loopbackPorts returns n ports free on loopback a moment ago.
func loopbackPorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out
}

// TestEmbeddedCluster starts three members in this process, writes
// through all three, stops one, writes on, and restarts it on its data
// dir: it rejoins and catches up.
func TestEmbeddedCluster(t *testing.T) {
	ports := loopbackPorts(t, 6)
	var peers []store.Peer
	cfgs := make([]store.EmbedConfig, 3)
	for i := range 3 {
		peers = append(peers, store.Peer{Name: fmt.Sprintf("s%d", i+1), URL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])})
	}
	for i := range cfgs {
		cfgs[i] = store.EmbedConfig{
			DataDir: t.TempDir(), Name: peers[i].Name, Cluster: peers, ClusterToken: "test",
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			TickMs:    10, ElectionMs: 100, Logger: testenv.Logger(t),
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	members := make([]*store.Embedded, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range cfgs {
		wg.Go(func() { members[i], errs[i] = store.StartEmbedded(ctx, cfgs[i]) })
	}
	wg.Wait()
	var eps []string
	for i, m := range members {
		if errs[i] != nil {
			t.Fatalf("member %d: %v", i, errs[i])
		}
		t.Cleanup(m.Close)
		eps = append(eps, m.Endpoints...)
	}
	cli := testenv.Client(t, eps)
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ml.Members) != 3 {
		t.Fatalf("%d members, want 3: %v", len(ml.Members), ml.Members)
	}
	if _, err := cli.Put(ctx, "/k", "1"); err != nil {
		t.Fatal(err)
	}
	members[2].Close()
	if _, err := cli.Put(ctx, "/k", "2"); err != nil {
		t.Fatalf("put with a member down: %v", err)
	}
	m, err := store.StartEmbedded(ctx, cfgs[2])
	if err != nil {
		t.Fatalf("restart on its data dir: %v", err)
	}
	t.Cleanup(m.Close)
	one := testenv.Client(t, m.Endpoints)
	resp, err := one.Get(ctx, "/k") // linearizable: through the cluster's leader
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("restarted member reads %v, %v; want 2", resp, err)
	}
	ml2, err := one.MemberList(ctx)
	if err != nil || len(ml2.Members) != 3 {
		t.Fatalf("after the restart: %v, %v; want the same 3 members", ml2, err)
	}
}
