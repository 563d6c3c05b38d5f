package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/network"
)

// TestDriverBadInput: flags that cannot work are refused with a
// configuration error before anything is joined (or dialed).
func TestDriverBadInput(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.addr")
	if err := os.WriteFile(garbage, []byte("storage.example:9000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	storage := []string{"--storage", "unix:///tmp/storage.sock"}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no group", append([]string{"--id", "driver-a"}, storage...), "--group is required"},
		{"no id", append([]string{"--group", "g"}, storage...), "--id is required"},
		{"bad id", append([]string{"--group", "g", "--id", "driver a"}, storage...), "--id"},
		{"no storage", []string{"--group", "g", "--id", "driver-a"}, "--storage or --storage-file is required"},
		{"both", append([]string{"--group", "g", "--id", "driver-a", "--storage-file", garbage}, storage...), "not both"},
		{"bad storage", []string{"--group", "g", "--id", "driver-a", "--storage", "storage:9000"}, `storage address "storage:9000"`},
		{"bad listen", append([]string{"--group", "g", "--id", "driver-a", "--listen", "udp://127.0.0.1:0"}, storage...), "--listen"},
		{"listen not host:port", append([]string{"--group", "g", "--id", "driver-a", "--listen", "tcp://127.0.0.1"}, storage...), "--listen"},
		{"no listen", append([]string{"--group", "g", "--id", "driver-a", "--listen", ""}, storage...), "--listen is empty"},
		{"lease", append([]string{"--group", "g", "--id", "driver-a", "--lease-ttl", "1500ms"}, storage...), "lease TTL"},
		{"procs", append([]string{"--group", "g", "--id", "driver-a", "--procs", "-1"}, storage...), "--procs -1"},
		{"storage file a directory", []string{"--group", "g", "--id", "driver-a", "--storage-file", dir}, "--storage-file"},
		{"storage file garbage", []string{"--group", "g", "--id", "driver-a", "--storage-file", garbage}, `storage address "storage.example:9000"`},
		{"storage file absent", []string{"--group", "g", "--id", "driver-a", "--storage-file", filepath.Join(dir, "none"), "--dial-timeout", "200ms"}, "did not appear within --dial-timeout 200ms"},
	} {
		var out syncBuffer
		// No store listens at the endpoint: a command that got as far as
		// dialing it would fail otherwise (and slowly).
		err := run(context.Background(), &out, append([]string{"driver", "--etcd-endpoints", "http://127.0.0.1:1"}, tt.args...)...)
		if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want ErrConfig saying %q", tt.name, err, tt.want)
		}
		if out.String() != "" {
			t.Errorf("%s: printed %q before refusing", tt.name, out.String())
		}
	}
}

// driverStorage is a storage server for the driver's tests: it records the
// frames it receives and answers each at once, StatusOK with "stored ID",
// except those whose ID is in hold, which it never answers.
type driverStorage struct {
	addr string
	hold map[uint64]bool

	mu     sync.Mutex
	frames [][]byte
	conns  []network.Conn
	ended  []bool
}

func newDriverStorage(t *testing.T, hold ...uint64) *driverStorage {
	s := &driverStorage{hold: map[uint64]bool{}}
	for _, id := range hold {
		s.hold[id] = true
	}
	ln, err := network.OS{}.Listen("unix://"+filepath.Join(t.TempDir(), "storage.sock"), s.accept)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			c.Close()
		}
	})
	return s
}

func (s *driverStorage) accept(c network.Conn) {
	s.mu.Lock()
	i := len(s.conns)
	s.conns = append(s.conns, c)
	s.ended = append(s.ended, false)
	s.mu.Unlock()
	c.Receive(func(b []byte, err error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.ended[i] = true
			return
		}
		s.frames = append(s.frames, bytes.Clone(b))
		r, err := block.Parse(b)
		if err != nil || s.hold[r.ID] {
			return
		}
		c.Send(driverAnswer(r.ID), nil)
	})
}

// driverAnswer is the storage's answer to request id.
func driverAnswer(id uint64) []byte {
	return block.AppendAnswer(nil, block.Answer{Status: block.StatusOK, ID: id, Data: fmt.Appendf(nil, "stored %d", id)})
}

// state returns the frames received, how many connections were accepted
// and whether each has ended.
func (s *driverStorage) state() (frames [][]byte, ended []bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.frames...), append([]bool(nil), s.ended...)
}

// until polls cond every 10 ms until it holds or 20 s have passed.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// epochOf waits for the next epoch of m whose members are exactly ids.
func epochOf(t *testing.T, ctx context.Context, m *idc.Membership, ids string) *idc.Epoch {
	t.Helper()
	for {
		ep, err := m.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for an epoch of %s: %v", ids, err)
		}
		if memberList(ep) == ids {
			return ep
		}
	}
}

// incarnationOf returns the incarnation of member id in ep.
func incarnationOf(ep *idc.Epoch, id string) uint64 {
	for _, m := range ep.Members() {
		if m.ID == id {
			return m.Incarnation
		}
	}
	return 0
}

// blockWrite is a write request of the disk in ep.
func blockWrite(ep *idc.Epoch, id uint64) []byte {
	return block.AppendRequest(nil, block.Request{Op: block.OpWrite, Length: 5, Offset: 512 * id, ID: id, Token: ep.Token().Append(nil), Data: []byte("hello")})
}

// TestDriver runs idc driver in a group with a disk (a member the test
// joins): the disk's calls reach the storage byte for byte and return its
// answer; a call the storage holds ends with its epoch and the group moves
// on without waiting for it; a driver the group drops joins again as a new
// incarnation and serves again; on interrupt it leaves gracefully.
func TestDriver(t *testing.T) {
	c := newCluster(t)
	const held = 666
	s := newDriverStorage(t, held)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The storage's address appears in the file only after the driver
	// started: it waits for it.
	addrFile := filepath.Join(t.TempDir(), "storage.addr")
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(dctx, &out, "driver", "--group", "g", "--id", "driver-a", "--storage-file", addrFile,
			"--lease-ttl", "2s", "--log-level", "warn", "--etcd-endpoints", c.endpoints)
	}()
	time.Sleep(100 * time.Millisecond)
	if err := writeFileAtomic(addrFile, s.addr+"\n"); err != nil {
		t.Fatal(err)
	}

	disk := c.join("disk", 2)
	ep := disk.Current()
	if ep == nil || memberList(ep) != "disk, driver-a" {
		ep = epochOf(t, ctx, disk, "disk, driver-a")
	}
	until(t, "the driver's epoch line", func() bool {
		return strings.Contains(out.String(), fmt.Sprintf("driver-a: epoch %d connected: disk, driver-a\n", ep.Number()))
	})

	// Byte for byte, both ways.
	req := blockWrite(ep, 1)
	resp, err := ep.Call(ctx, "driver-a", req)
	if err != nil {
		t.Fatalf("call through the driver: %v\n%s", err, out.String())
	}
	if !bytes.Equal(resp, driverAnswer(1)) {
		t.Errorf("the disk received %x, want the storage's answer %x", resp, driverAnswer(1))
	}
	frames, _ := s.state()
	if len(frames) != 1 || !bytes.Equal(frames[0], req) {
		t.Fatalf("the storage received %x, want exactly %x", frames, req)
	}
	// A malformed request is refused by the driver, not forwarded.
	if _, err := ep.Call(ctx, "driver-a", []byte("not a block request")); !errors.Is(err, idc.ErrRemote) || !strings.Contains(err.Error(), "invalid block request") {
		t.Errorf("a malformed request: err = %v, want the driver's refusal", err)
	}

	// A call the storage never answers ends with its epoch: the driver
	// fails it at once, so the next epoch (driver-b joins) connects with
	// driver-a still in it, and the epoch's storage connection closes.
	callErr := make(chan error, 1)
	go func() {
		_, err := ep.Call(ctx, "driver-a", blockWrite(ep, held))
		callErr <- err
	}()
	until(t, "the held request at the storage", func() bool { f, _ := s.state(); return len(f) == 2 })
	start := time.Now()
	c.join("driver-b", 3)
	ep = epochOf(t, ctx, disk, "disk, driver-a, driver-b")
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the epoch change took %v with a request held at the storage, want it not to wait for it", el)
	}
	select {
	case err := <-callErr:
		if !errors.Is(err, idc.ErrEpochEnded) {
			t.Errorf("the held call: err = %v, want ErrEpochEnded", err)
		}
	case <-ctx.Done():
		t.Fatal("the held call never returned")
	}
	until(t, "the first epoch's storage connection closed", func() bool { _, e := s.state(); return len(e) == 1 && e[0] })
	if resp, err := ep.Call(ctx, "driver-a", blockWrite(ep, 2)); err != nil || !bytes.Equal(resp, driverAnswer(2)) {
		t.Fatalf("call in the new epoch: %x, %v", resp, err)
	}
	if _, e := s.state(); len(e) != 2 {
		t.Errorf("%d storage connections, want 2 (one per epoch that forwarded)", len(e))
	}

	// The disk reports driver-a: the group drops it; it joins again as a
	// new incarnation and serves again.
	first := incarnationOf(ep, "driver-a")
	if err := disk.ReportFault(ctx, "driver-a"); err != nil {
		t.Fatal(err)
	}
	// (The epoch without it may never connect: the group may decide on
	// one with the new incarnation first.)
	for {
		ep = epochOf(t, ctx, disk, "disk, driver-a, driver-b")
		if inc := incarnationOf(ep, "driver-a"); inc != first {
			break
		}
	}
	if !strings.Contains(out.String(), "driver-a: membership ended (") || !strings.Contains(out.String(), "joining again as a new incarnation") {
		t.Errorf("the driver did not say it joined again:\n%s", out.String())
	}
	if resp, err := ep.Call(ctx, "driver-a", blockWrite(ep, 3)); err != nil || !bytes.Equal(resp, driverAnswer(3)) {
		t.Fatalf("call through the new incarnation: %x, %v", resp, err)
	}

	// Interrupted, it leaves gracefully: the group moves on without it
	// well before its lease could have run out, and it exits 0.
	stop()
	start = time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("idc driver ended with %v, want nil on interrupt\n%s", err, out.String())
		}
	case <-ctx.Done():
		t.Fatal("idc driver did not end on interrupt")
	}
	epochOf(t, ctx, disk, "disk, driver-b")
	text := out.String()
	t.Log("\n" + text)
	if !strings.Contains(text, "driver-a: left group g: 4 requests forwarded, 3 answered") {
		t.Errorf("no leave line with the counts in the output")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("leaving took %v: not graceful", el)
	}
}
