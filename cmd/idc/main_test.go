package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/store"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// run runs the idc command with args and returns its output.
func run(ctx context.Context, out *syncBuffer, args ...string) error {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(out)
	return root.ExecuteContext(ctx)
}

// cluster is a real embedded etcd with a coordinator and joined domains.
type cluster struct {
	t         *testing.T
	endpoints string
	cfg       func(id string) idc.Config
}

func newCluster(t *testing.T) *cluster {
	e := testenv.Etcd(t)
	cli := testenv.Client(t, e.Endpoints)
	testenv.Coordinator(t, coordinator.Config{Client: cli, LeaseMargin: 100 * time.Millisecond})
	return &cluster{t: t, endpoints: e.Endpoints[0], cfg: func(id string) idc.Config {
		cfg := idc.DefaultConfig()
		cfg.Group, cfg.ID, cfg.Client, cfg.Logger = "g", id, cli, testenv.Logger(t)
		cfg.LeaseTTL, cfg.RenewInterval = 2*time.Second, 400*time.Millisecond
		return cfg
	}}
}

// join joins id and waits until it is connected in an epoch of n members.
func (c *cluster) join(id string, n int) *idc.Membership {
	c.t.Helper()
	return c.joinWith(c.cfg(id), n)
}

// joinWith joins with cfg and waits until it is connected in an epoch of n
// members.
func (c *cluster) joinWith(cfg idc.Config, n int) *idc.Membership {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := idc.Join(ctx, cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { d.Close() })
	for {
		ep, err := d.Next(ctx)
		if err != nil {
			c.t.Fatalf("%s: %v", cfg.ID, err)
		}
		if len(ep.Members()) == n {
			return d
		}
	}
}

func TestStatus(t *testing.T) {
	c := newCluster(t)
	// a accepts channels (at the default address, so on some port of
	// 127.0.0.1); b accepts none.
	a := c.join("a", 1)
	if !strings.HasPrefix(a.Addr(), "tcp://127.0.0.1:") {
		t.Fatalf("a accepts channels at %q, want tcp://127.0.0.1:<port>", a.Addr())
	}
	cfgB := c.cfg("b")
	cfgB.Listen = ""
	c.joinWith(cfgB, 2)
	wantAddr := map[string]string{"a": a.Addr(), "b": ""}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var out syncBuffer
	if err := run(ctx, &out, "status", "--etcd-endpoints", c.endpoints); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Log("\n" + text)
	for _, want := range []string{"group g: epoch 2 connected, lease mode", "DOMAIN", "CHANNEL", "b joined"} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q", want)
		}
	}
	rows := 0
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "a" && f[0] != "b" {
			continue
		}
		rows++
		channel := map[string]string{"a": a.Addr(), "b": "-"}[f[0]]
		if len(f) < 5 || f[2] != "member" || !strings.HasSuffix(f[3], "s") || f[4] != channel {
			t.Errorf("domain line %q: want role member, a lease time left and channel %s", line, channel)
		}
	}
	if rows != 2 {
		t.Errorf("status shows %d domain lines, want 2 (a and b)", rows)
	}

	out = syncBuffer{}
	if err := run(ctx, &out, "status", "g", "--json", "--etcd-endpoints", c.endpoints); err != nil {
		t.Fatal(err)
	}
	var groups []inspect.Group
	if err := json.Unmarshal([]byte(out.String()), &groups); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out.String())
	}
	if len(groups) != 1 || groups[0].Epoch != 2 || groups[0].State != "connected" || len(groups[0].Domains) != 2 {
		t.Fatalf("status --json = %+v", groups)
	}
	for _, d := range groups[0].Domains {
		if !d.Live || d.LeaseLeftMs <= 0 || d.LeaseLeftMs > 2000 || d.Role != inspect.RoleMember {
			t.Errorf("domain %+v: want a live member with 0 < lease left ≤ 2 s", d)
		}
		if want, ok := wantAddr[d.ID]; !ok || d.Addr != want {
			t.Errorf("domain %s: addr %q, want %q", d.ID, d.Addr, want)
		}
	}
	// The field is "addr", as in the member and epoch records, and absent
	// for a domain that accepts no channels.
	if !strings.Contains(out.String(), `"addr": "`+a.Addr()+`"`) || strings.Count(out.String(), `"addr"`) != 1 {
		t.Errorf("status --json: want one \"addr\" field, a's %q:\n%s", a.Addr(), out.String())
	}

	out = syncBuffer{}
	err := run(ctx, &out, "status", "nosuch", "--etcd-endpoints", c.endpoints)
	if !errors.Is(err, inspect.ErrNoGroup) {
		t.Errorf("status of a missing group: err = %v, want ErrNoGroup", err)
	}
}

func TestWatch(t *testing.T) {
	c := newCluster(t)
	c.join("a", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wctx, stop := context.WithCancel(ctx)
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(wctx, &out, "watch", "--json", "--etcd-endpoints", c.endpoints) }()

	waitFor := func(what string, ok func([]inspect.Event) bool) {
		t.Helper()
		for {
			var evs []inspect.Event
			dec := json.NewDecoder(strings.NewReader(out.String()))
			for {
				var e inspect.Event
				if dec.Decode(&e) != nil {
					break
				}
				evs = append(evs, e)
			}
			if ok(evs) {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("watch never showed %s:\n%s", what, out.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	hasEpoch := func(n uint64, state string) func([]inspect.Event) bool {
		return func(evs []inspect.Event) bool {
			for _, e := range evs {
				if e.Kind == inspect.KindEpoch && e.Epoch.Number == n && string(e.Epoch.State) == state {
					return true
				}
			}
			return false
		}
	}
	waitFor("the current epoch 1", hasEpoch(1, "connected"))
	b := c.join("b", 2)
	waitFor("b joining and epoch 2", func(evs []inspect.Event) bool {
		joined := false
		for _, e := range evs {
			joined = joined || e.Kind == inspect.KindJoined && e.Member.ID == "b"
		}
		return joined && hasEpoch(2, "quiescing")(evs) && hasEpoch(2, "connected")(evs)
	})
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("b leaving and going", func(evs []inspect.Event) bool {
		left, gone := false, false
		for _, e := range evs {
			left = left || e.Kind == inspect.KindLeft && e.Left.ID == "b"
			gone = gone || e.Kind == inspect.KindGone && e.Member.ID == "b"
		}
		return left && gone && hasEpoch(3, "connected")(evs)
	})
	stop()
	if err := <-done; err != nil {
		t.Errorf("watch ended with %v, want nil on interrupt", err)
	}
}

func TestUnreachableStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out syncBuffer
	start := time.Now()
	err := run(ctx, &out, "status", "--etcd-endpoints", "http://127.0.0.1:1", "--dial-timeout", "1s")
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("status against no store: err = %v, want store.ErrUnavailable", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("status gave up after %v, want about the 1 s dial timeout", el)
	}
}

// TestStoreServesMetrics runs `idc store` against an existing etcd with
// --metrics-listen and scrapes it until it reports being the coordinator.
func TestStoreServesMetrics(t *testing.T) {
	e := testenv.Etcd(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, &out, "store", "--etcd-endpoints", e.Endpoints[0], "--metrics-listen", addr, "--log-level", "error")
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		body := ""
		if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		if strings.Contains(body, "idc_coordinator_leader 1") && strings.Contains(body, "go_goroutines") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no coordinator metrics at %s:\n%s\noutput:\n%s", addr, body, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("idc store ended with %v, want nil on interrupt", err)
	}
}

// TestWatchAbsentGroup: watching a group that has no records says so at
// once (rather than waiting silently), then shows the group when it
// appears.
func TestWatchAbsentGroup(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(wctx, &out, "watch", "g", "--etcd-endpoints", c.endpoints) }()
	for !strings.Contains(out.String(), "no such group") {
		select {
		case <-ctx.Done():
			t.Fatalf("watch of a missing group said nothing:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	c.join("a", 1)
	for !strings.Contains(out.String(), "epoch 1 connected") {
		select {
		case <-ctx.Done():
			t.Fatalf("watch never showed the group once it appeared:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("watch ended with %v", err)
	}
}

// TestBadGlobalFlags: flag values that would quietly mean something else
// (a zero timeout, an unknown log level, a bad endpoint) are refused with
// a configuration error before anything is dialed.
func TestBadGlobalFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--dial-timeout", "0"}, "--dial-timeout 0s must be positive"},
		{[]string{"status", "--log-level", "loud"}, `--log-level "loud"`},
		{[]string{"watch", "--prefix", "idc"}, "must start with '/'"},
		{[]string{"status", "--etcd-endpoints", "127.0.0.1:2379"}, "bad store endpoint"},
	} {
		var out syncBuffer
		err := run(context.Background(), &out, tt.args...)
		if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("idc %v: err = %v, want ErrConfig saying %q", tt.args, err, tt.want)
		}
	}
}

// TestStoreFlagsTakenAsGiven: `idc store` takes its flags as given: a zero
// quiesce timeout is an error, not the default, and so is a drift bound
// out of range — before any store is started.
func TestStoreFlagsTakenAsGiven(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"store", "--quiesce-timeout", "0"}, "quiesce timeout 0s must be positive"},
		{[]string{"store", "--rho", "0.7"}, "drift bound"},
		{[]string{"store", "--mode", "fencing"}, `--mode "fencing"`},
		{[]string{"store", "--flap-hold", "0"}, "flap window 1m0s and hold 0s must be positive"},
	} {
		var out syncBuffer
		err := run(context.Background(), &out, append(tt.args, "--data-dir", t.TempDir())...)
		if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("idc %v: err = %v, want ErrConfig saying %q", tt.args, err, tt.want)
		}
		if strings.Contains(out.String(), "embedded etcd serving") {
			t.Errorf("idc %v started a store before refusing its flags", tt.args)
		}
	}
}
