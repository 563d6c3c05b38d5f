package hosts_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/hosts"
)

// newNet makes a Net of n hosts h1..hn, or skips the test where network
// namespaces cannot be made.
func newNet(t *testing.T, n int) (*hosts.Net, []*hosts.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := hosts.Check(ctx); err != nil {
		t.Skipf("end-to-end test across hosts needs root and ip netns: %v", err)
	}
	nw, err := hosts.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nw.Close(); err != nil {
			t.Error(err)
		}
	})
	var hs []*hosts.Host
	for i := range n {
		h, err := nw.AddHost(ctx, fmt.Sprintf("h%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return nw, hs
}

// serve serves on h at a free port of its address: each connection gets
// the host's name. It returns the address.
func serve(t *testing.T, h *hosts.Host) string {
	t.Helper()
	l, err := h.Listen("tcp", h.IP+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, h.Name)
			c.Close()
		}
	}()
	return l.Addr().String()
}

// reach says whether from reaches addr within d, and what it read.
func reach(from *hosts.Host, addr string, d time.Duration) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err.Error(), false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	return string(b), err == nil
}

func TestHostsPartitionBlockHeal(t *testing.T) {
	nw, hs := newNet(t, 3)
	h1, h2, h3 := hs[0], hs[1], hs[2]
	if h1.IP != "10.77.0.2" || h3.IP != "10.77.0.4" {
		t.Fatalf("addresses %s, %s", h1.IP, h3.IP)
	}
	a2 := serve(t, h2)
	// The test process itself is not on the subnet.
	if c, err := net.DialTimeout("tcp", a2, 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("the test's own namespace reaches %s", a2)
	}
	const d = 2 * time.Second
	if got, ok := reach(h1, a2, d); !ok || got != "h2" {
		t.Fatalf("h1 to h2: %q", got)
	}
	// A command inside a host sees only the host's interface.
	argv := h3.Command("ip", "-br", "addr", "show", "dev", "eth0")
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), h3.IP+"/24") {
		t.Fatalf("ip addr inside h3: %s %v", out, err)
	}

	ctx := context.Background()
	if err := h2.Partition(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := reach(h1, a2, 500*time.Millisecond); ok {
		t.Fatalf("h1 reached a partitioned h2: %q", got)
	}
	if err := h2.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := reach(h1, a2, d); !ok {
		t.Fatalf("h1 to a healed h2: %s", got)
	}

	if err := h2.Block(ctx, h1); err != nil {
		t.Fatal(err)
	}
	if got, ok := reach(h1, a2, 500*time.Millisecond); ok {
		t.Fatalf("h1 reached h2 blocked from it: %q", got)
	}
	if got, ok := reach(h3, a2, d); !ok {
		t.Fatalf("h3 to h2 blocked from h1 only: %s", got)
	}
	if err := h2.Unblock(ctx, h1); err != nil {
		t.Fatal(err)
	}
	if got, ok := reach(h1, a2, d); !ok {
		t.Fatalf("h1 to an unblocked h2: %s", got)
	}
	if len(nw.Hosts()) != 3 {
		t.Fatalf("%d hosts", len(nw.Hosts()))
	}
}

func TestHostsCloseRemovesEverything(t *testing.T) {
	ctx := context.Background()
	if err := hosts.Check(ctx); err != nil {
		t.Skipf("end-to-end test across hosts needs root and ip netns: %v", err)
	}
	nw, err := hosts.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := nw.AddHost(ctx, "x")
	if err != nil {
		nw.Close()
		t.Fatal(err)
	}
	if _, err := nw.AddHost(ctx, "x"); err == nil {
		t.Error("a second host x was added")
	}
	if _, err := nw.AddHost(ctx, "Bad_Name"); err == nil {
		t.Error("host name Bad_Name was taken")
	}
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), h.NS) || strings.Contains(string(out), strings.TrimSuffix(h.NS, "-x")+"-br") {
		t.Fatalf("namespaces left after Close:\n%s", out)
	}
}

// TestDialKeepsChildrenAlive: dialing inside a host must not end the
// thread it ran on, or a child process started from that thread with
// Pdeathsig (as internal/scenario starts every process) would be killed.
func TestDialKeepsChildrenAlive(t *testing.T) {
	_, hs := newNet(t, 2)
	addr := serve(t, hs[1])
	var children []*exec.Cmd
	for range 8 {
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		children = append(children, cmd)
		for range 8 {
			if got, ok := reach(hs[0], addr, 2*time.Second); !ok {
				t.Fatalf("h1 to h2: %s", got)
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	for _, c := range children {
		if err := c.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("child %d died while the test dialed inside a host: %v", c.Process.Pid, err)
		}
		var ws syscall.WaitStatus
		if pid, _ := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil); pid != 0 {
			t.Fatalf("child %d ended (%v) while the test dialed inside a host", pid, ws)
		}
	}
}
