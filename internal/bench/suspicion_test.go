package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary play Suspicion's child processes.
func TestMain(m *testing.M) {
	if os.Getenv("IDC_BENCH_SUSPICION_CHILD") != "" {
		if err := SuspicionChild(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testChild runs the test binary as one of Suspicion's child processes.
func testChild(args []string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "IDC_BENCH_SUSPICION_CHILD=1")
	return cmd
}

// TestSuspicionRuns runs a short phase without load: the members, child
// processes, connect and call each other, the progress lines and the
// summary come, and the figures add up.
func TestSuspicionRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, stderr syncBuffer
	res, err := Suspicion(ctx, SuspicionOptions{
		Members: 3, Duration: 3 * time.Second, Every: time.Second,
		Child: testChild, DataDir: t.TempDir(), Out: &out, Stderr: &stderr,
	})
	t.Logf("output:\n%s\nchildren's stderr:\n%s", out.String(), stderr.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Phases) != 1 {
		t.Fatalf("%d phases, want the one without load", len(res.Phases))
	}
	p := res.Phases[0]
	if p.Load != 0 || p.Members != 3 || p.Elapsed < 3*time.Second {
		t.Errorf("phase: load %d, %d members, %v counted; want no load, 3 members, 3 s", p.Load, p.Members, p.Elapsed)
	}
	if p.Calls == 0 || p.Gaps.N == 0 || p.Late.N == 0 {
		t.Errorf("no calls (%d) or no gaps (%d) or timer samples (%d) counted", p.Calls, p.Gaps.N, p.Late.N)
	}
	if len(p.Samples) < 3 {
		t.Errorf("%d progress lines in 3 s at one a second", len(p.Samples))
	}
	// Without load a false suspicion is not expected, but may happen on a
	// loaded test machine: the test checks that the figures agree.
	if len(p.FaultReports) > 0 && p.EpochChanges == 0 {
		t.Errorf("%d fault reports and no epoch change", len(p.FaultReports))
	}
	for _, want := range []string{"phase 1/1, no load", "every channel answered a call", "false suspicions", "summary"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestSuspicionChildSpins: a spinner stops when its stdin ends.
func TestSuspicionChildSpins(t *testing.T) {
	cmd := testChild(ChildOptions{Role: "spin"}.Args())
	c, err := startChild(cmd, "spin", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	stopChildren([]*child{c})
	if took := time.Since(start); took >= 5*time.Second {
		t.Errorf("the spinner was killed after %v: it did not stop at the end of its stdin", took)
	}
	if !cmd.ProcessState.Success() {
		t.Errorf("the spinner ended with %v", cmd.ProcessState)
	}
}
