package scenario

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/storage"
)

// TestReplayAfterReconnect runs qemu with reconnect-delay against the disk
// through a proxy, and cuts the NBD connection while a write is in flight
// in the disk's path (held on its way from the driver to the storage).
// qemu reconnects and sends the write again; the disk carries the
// abandoned copy to an outcome (its path times out, it fails over, the
// next epoch's fence settles the held copy) before the replay and what
// follows may go. Then a newer write to the same range, and the held
// copy released: it is refused, and the range reads back the newer write.
func TestReplayAfterReconnect(t *testing.T) {
	need(t, "qemu-io")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Proxied: []string{"driver-a", "driver-b"},
		Extra: map[string][]string{"disk": {"--nbd-listen", fmt.Sprintf("tcp://127.0.0.1:%d", ports[0])}}}
	s := start(t, cfg)
	px, err := NewProxy(fmt.Sprintf("127.0.0.1:%d", ports[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	active, err := s.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=%s,export=idc,reconnect-delay=30",
		strings.TrimPrefix(px.Addr()[strings.LastIndex(px.Addr(), ":"):], ":"))
	qemu := func(cmds ...string) (string, error) {
		args := []string{"--image-opts", opts}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput()
		return string(out), err
	}

	// The write reaches the active driver and is held on its way to the
	// storage.
	storage := s.Proxies(active).Storage
	storage.Hold()
	done := make(chan error, 1)
	var out string
	go func() {
		var err error
		out, err = qemu("write -P 0x22 0 64k")
		done <- err
	}()
	for storage.HeldBytes() < 64<<10 {
		select {
		case <-ctx.Done():
			t.Fatal("the write never reached the storage's proxy")
		case <-time.After(time.Millisecond):
		}
	}
	seen := s.Proc("disk").Count()
	px.Cut() // qemu loses its connection and reconnects
	if err := <-done; err != nil || !strings.Contains(out, "wrote 65536/65536") {
		t.Fatalf("qemu-io across the reconnect: %v\n%s", err, out)
	}
	// The write was acknowledged after the failover.
	if _, _, err := s.Proc("disk").WaitFor(ctx, seen, func(l string) bool { p, ok := PathOf(l); return ok && p != "" && p != active }); err != nil {
		t.Fatal(err)
	}
	if out, err := qemu("write -P 0x33 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The held copy of the first write is let go: refused.
	storage.Release()
	deadline := time.Now().Add(10 * time.Second)
	for refusedWrites(s.ApplyLog) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := refusedWrites(s.ApplyLog); n == 0 {
		t.Fatal("the held copy was not refused")
	}
	out, err = qemu("read -P 0x33 0 64k")
	if err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("the range does not hold the newer write: %v\n%s", err, out)
	}
	s.Close()
	log, err := ReadApplyLog(s.ApplyLog)
	if err != nil {
		t.Fatal(err)
	}
	if len(log.Stale) > 0 {
		t.Fatalf("G5: %+v", log.Stale[0])
	}
	// The abandoned write (re-sent through the other driver), qemu's
	// replay of it, and the newer write: three applies of the range.
	if n := writesAt(t, s.ApplyLog, 0, 64<<10); n < 3 {
		t.Fatalf("%d writes of the range applied: qemu did not send the write again after reconnecting", n)
	}
}

// writesAt counts the writes applied at off with length n.
func writesAt(t *testing.T, path string, off uint64, n uint32) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, l := range strings.Split(string(b), "\n") {
		var a storage.Applied
		if json.Unmarshal([]byte(l), &a) == nil && a.Op == "write" && a.Offset == off && a.Length == n {
			c++
		}
	}
	return c
}
