package idc_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
)

// children are the roles the test binary plays in a child process, by the
// environment variable that asks for each (its value is the store's
// endpoint); other test files add theirs in an init function.
var children = map[string]func(endpoint string) int{
	"IDC_PAUSE_CHILD": pauseChild, // TestG6_PausedProcessStopsOnResume
}

// TestMain lets the test binary play a domain in a child process.
func TestMain(m *testing.M) {
	for env, child := range children {
		if ep := os.Getenv(env); ep != "" {
			os.Exit(child(ep))
		}
	}
	os.Exit(m.Run())
}

// pauseChild joins the test group as "p" and does an I/O every millisecond
// while its epoch allows it, the way a careful application does (Epoch.Err
// right before each I/O), printing "io <unix ns>" for each; when it stops
// it prints "stopped <error>".
func pauseChild(endpoint string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := testConfig("p", nil)
	cfg.Endpoints = []string{endpoint}
	d, err := idc.Join(ctx, cfg)
	if err != nil {
		fmt.Println("stopped", err)
		return 1
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for {
		ep, err := d.Next(ctx)
		if err != nil {
			fmt.Fprintln(w, "stopped", err)
			return 0
		}
		fmt.Fprintln(w, "connected", ep.Number())
		w.Flush()
		for ep.Err() == nil {
			fmt.Fprintln(w, "io", time.Now().UnixNano())
			w.Flush()
			time.Sleep(time.Millisecond)
		}
	}
}

// TestG6_PausedProcessStopsOnResume stops a member's process with SIGSTOP
// for longer than its lease, lets the group move on without it, then
// resumes it: the member must not do a single I/O after the pause (its
// lease may have lapsed by its own clock) and must stop with ErrFenced.
func TestG6_PausedProcessStopsOnResume(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{})
	e.join("a")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "IDC_PAUSE_CHILD="+e.etcd.Endpoints[0])
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1<<16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	old := e.connected(testenv.Mark{}, 20*time.Second, "a", "p")
	// Let it do I/O in the epoch, then pause it past its lease.
	var last time.Time
	ioAt := func(l string) time.Time {
		ns, _ := strconv.ParseInt(strings.TrimPrefix(l, "io "), 10, 64)
		return time.Unix(0, ns)
	}
	ios := 0
	for ios < 50 {
		select {
		case l := <-lines:
			if strings.HasPrefix(l, "io ") {
				ios, last = ios+1, ioAt(l)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the child did no I/O")
		}
	}
	mark := e.mark()
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// The signal takes effect asynchronously: the child may run on for a
	// moment after kill returns. The pause begins once the kernel shows
	// the process stopped.
	waitStopped(t, cmd.Process.Pid)
	stopped := time.Now()
	next := e.h.WaitFor(t, group, mark, 20*time.Second, "connected without p", func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && r.Number > old.Number && !proto.Contains(r.Members, proto.Ref{ID: "p", Incarnation: findInc(old.EpochRecord, "p")})
	})
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	var end string
	for l := range lines {
		switch {
		case strings.HasPrefix(l, "io "):
			last = ioAt(l)
			if last.After(stopped) {
				t.Errorf("G6 violated: the child did I/O at %v, %v after it was resumed from a pause past its lease (epoch %d had connected without it)",
					last.Format("15:04:05.000000"), last.Sub(resumed), next.Number)
			}
		case strings.HasPrefix(l, "stopped "):
			end = l
		}
	}
	// Fenced either way: by its own clock (the lease may have lapsed) or by
	// the record that dropped it, whichever it saw first on resuming.
	if !strings.Contains(end, idc.ErrFenced.Error()) {
		t.Errorf("child ended with %q, want it fenced", end)
	}
	t.Logf("paused %v; last I/O %v before the pause; epoch %d connected without it; child: %s",
		resumed.Sub(stopped).Round(time.Millisecond), stopped.Sub(last).Round(time.Microsecond), next.Number, end)
}

// waitStopped waits until process pid is in the stopped state ('T' in
// /proc/<pid>/stat).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// pid (comm) state ...: the state follows the last ')'.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'T' {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
	t.Fatalf("process %d did not stop", pid)
}

func findInc(r proto.EpochRecord, id string) uint64 {
	m, _ := proto.Find(r.Members, id)
	return m.Incarnation
}
