package store_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// fragment writes about mb MiB of values under prefix, deletes them and
// compacts physically: the file keeps its size, its pages are free.
func fragment(t *testing.T, cli *clientv3.Client, prefix string, mb int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	val := strings.Repeat("x", 10<<10)
	const perTxn = 50 // 500 KB per request, below etcd's 1.5 MiB limit
	for i := 0; i < mb*1024/10; i += perTxn {
		ops := make([]clientv3.Op, 0, perTxn)
		for j := range perTxn {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%06d", prefix, i+j), val))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Delete(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
}

func TestMaintainDefragmentsFragmentedStore(t *testing.T) {
	e := testenv.Etcd(t)
	cli := testenv.Client(t, e.Endpoints)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cli.Put(ctx, "/keep", "kept"); err != nil {
		t.Fatal(err)
	}
	fragment(t, cli, "/garbage/", 20)

	c := store.DefaultMaintainConfig()
	c.Client, c.Endpoint, c.Logger = cli, e.Endpoints[0], testenv.Logger(t)
	c.MinSize = 8 << 20
	before, err := store.ReadDBStatus(ctx, cli, c.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fragmented: db size %d, in use %d, revision %d, quota %d", before.Size, before.InUse, before.Revision, before.Quota)
	if before.Size < 20<<20 || before.InUse*4 > before.Size || before.Revision == 0 || before.Quota == 0 {
		t.Fatalf("the setup did not fragment the file: %+v", before)
	}
	if !c.ShouldDefrag(before) {
		t.Fatalf("the policy would not defragment %+v", before)
	}

	// The policy's limits hold it back.
	for name, change := range map[string]func(*store.MaintainConfig){
		"file below the floor":    func(c *store.MaintainConfig) { c.MinSize = before.Size + 1 },
		"enough of the file used": func(c *store.MaintainConfig) { c.InUseBelow = float64(before.InUse) / float64(before.Size) },
		"too much in use":         func(c *store.MaintainConfig) { c.MaxInUse = before.InUse - 1 },
	} {
		c := c
		change(&c)
		m, err := store.MaintainOnce(ctx, c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m.Defragmented || m.Before.Size < before.Size {
			t.Fatalf("%s: defragmented: %+v", name, m)
		}
		if m.TooBig != (name == "too much in use") {
			t.Fatalf("%s: TooBig %v", name, m.TooBig)
		}
	}

	// The loop defragments it at its first check, and the file shrinks.
	c.Interval = 50 * time.Millisecond
	reports := make(chan store.Maintenance, 100)
	c.Report = func(m store.Maintenance, err error) {
		if err != nil {
			t.Errorf("check: %v", err)
		}
		reports <- m
	}
	lctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- store.Maintain(lctx, c) }()
	var m store.Maintenance
	select {
	case m = <-reports:
	case <-time.After(30 * time.Second):
		t.Fatal("no check within 30 s")
	}
	if !m.Defragmented || m.Took <= 0 {
		t.Fatalf("first check did not defragment: %+v", m)
	}
	t.Logf("defragmented %d → %d bytes (%d in use) in %v", m.Before.Size, m.After.Size, m.After.InUse, m.Took)
	if m.After.Size*2 > m.Before.Size {
		t.Fatalf("the file did not shrink by half: %d → %d", m.Before.Size, m.After.Size)
	}
	// The next checks find nothing to do.
	select {
	case m = <-reports:
	case <-time.After(30 * time.Second):
		t.Fatal("no second check within 30 s")
	}
	if m.Defragmented {
		t.Fatalf("defragmented again: %+v", m)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Maintain returned %v when its context ended", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Maintain did not return when its context ended")
	}
	// The data survived.
	resp, err := cli.Get(ctx, "/keep")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "kept" {
		t.Fatalf("after defragmentation: %v %v", resp, err)
	}
	after, err := store.ReadDBStatus(ctx, cli, c.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size*2 > before.Size {
		t.Fatalf("db size %d after, %d before", after.Size, before.Size)
	}
}

func TestMaintainConfigValidate(t *testing.T) {
	e := testenv.Etcd(t)
	cli := testenv.Client(t, e.Endpoints)
	ok := store.DefaultMaintainConfig()
	ok.Client, ok.Endpoint = cli, e.Endpoints[0]
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	zeroLimit := ok
	zeroLimit.MaxInUse, zeroLimit.MinSize, zeroLimit.InUseBelow = 0, 0, 1
	if err := zeroLimit.Validate(); err != nil {
		t.Fatalf("no limit, no floor, fraction 1: %v", err)
	}
	for name, change := range map[string]func(*store.MaintainConfig){
		"no client":         func(c *store.MaintainConfig) { c.Client = nil },
		"no endpoint":       func(c *store.MaintainConfig) { c.Endpoint = "" },
		"bad endpoint":      func(c *store.MaintainConfig) { c.Endpoint = "127.0.0.1" },
		"zero interval":     func(c *store.MaintainConfig) { c.Interval = 0 },
		"zero fraction":     func(c *store.MaintainConfig) { c.InUseBelow = 0 },
		"fraction above 1":  func(c *store.MaintainConfig) { c.InUseBelow = 1.5 },
		"NaN fraction":      func(c *store.MaintainConfig) { c.InUseBelow = math.NaN() },
		"negative floor":    func(c *store.MaintainConfig) { c.MinSize = -1 },
		"negative in use":   func(c *store.MaintainConfig) { c.MaxInUse = -1 },
		"zero timeout":      func(c *store.MaintainConfig) { c.Timeout = 0 },
		"negative interval": func(c *store.MaintainConfig) { c.Interval = -time.Second },
	} {
		c := ok
		change(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if name != "bad endpoint" && !errors.Is(err, proto.ErrConfig) {
			t.Errorf("%s: %v does not wrap ErrConfig", name, err)
		}
		if err := store.Maintain(context.Background(), c); err == nil {
			t.Errorf("%s: Maintain accepted it", name)
		}
		if _, err := store.MaintainOnce(context.Background(), c); err == nil {
			t.Errorf("%s: MaintainOnce accepted it", name)
		}
	}
}

// TestEmbeddedCompacts: the embedded server compacts its history by
// itself, every CompactionRetention, keeping the newest values.
func TestEmbeddedCompacts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		DataDir: t.TempDir(), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0",
		TickMs: 10, ElectionMs: 100, CompactionRetention: store.MinCompactionRetention, Logger: testenv.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli := testenv.Client(t, e.Endpoints)
	if got := e.CompactRevision(); got != 0 {
		t.Fatalf("compacted to %d before any compaction", got)
	}
	var first int64
	for i := 0; ; i++ {
		r, err := cli.Put(ctx, "/k", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.Header.Revision
		}
		// The first compaction (one retention after the start) reaches
		// back to the start; the next ones discard what was written since.
		if c := e.CompactRevision(); c > first {
			t.Logf("compacted to revision %d after %d writes", c, i+1)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("never compacted past revision %d (now at %d)", first, e.CompactRevision())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := cli.Get(ctx, "/k", clientv3.WithRev(first)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("read at compacted revision %d: %v", first, err)
	}
	resp, err := cli.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("newest value: %v %v", resp, err)
	}
}

func TestEmbeddedCompactionRetentionValidated(t *testing.T) {
	for _, r := range []time.Duration{-time.Minute, time.Millisecond, store.MinCompactionRetention - 1} {
		_, err := store.StartEmbedded(context.Background(), store.EmbedConfig{DataDir: t.TempDir(), CompactionRetention: r})
		if !errors.Is(err, proto.ErrConfig) || !errors.Is(err, store.ErrEmbed) {
			t.Errorf("retention %v: %v", r, err)
		}
	}
}
