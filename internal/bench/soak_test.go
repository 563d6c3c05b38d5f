package bench

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/store"
)

// syncBuffer is a bytes.Buffer safe for the soak's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestSoakRuns runs a short soak with fast compaction and a policy that
// defragments at every check: the group churns, the lines come, the store
// compacts and is defragmented while the members work on, and the run
// stops at its duration.
func TestSoakRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mc := store.DefaultMaintainConfig()
	mc.Interval, mc.MinSize, mc.InUseBelow = time.Second, 0, 1
	var out syncBuffer
	start := time.Now()
	res, err := Soak(ctx, SoakOptions{
		Duration: 5 * time.Second, Members: 4, Every: time.Second, Churn: 200 * time.Millisecond,
		CompactionRetention: store.MinCompactionRetention, Maintain: &mc, Seed: 1,
		DataDir: t.TempDir(), Out: &out,
	})
	t.Logf("took %v:\n%s", time.Since(start).Round(time.Millisecond), out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Samples) < 4 {
		t.Fatalf("%d samples in 5 s at one a second", len(res.Samples))
	}
	first, last := res.Samples[0], res.Samples[len(res.Samples)-1]
	if last.Elapsed < 5*time.Second || last.Elapsed > 7*time.Second {
		t.Errorf("last sample at %v, want the end of a 5 s run", last.Elapsed)
	}
	if last.Epoch <= first.Epoch {
		t.Errorf("epoch %d at the start, %d at the end: no churn", first.Epoch, last.Epoch)
	}
	c := res.Counts
	if c.Leaves+c.Crashes+c.Faults == 0 || c.Joins <= 4 {
		t.Errorf("no churn: %+v", c)
	}
	if last.Compacted == 0 || last.Compacted > last.Revision {
		t.Errorf("compacted revision %d at revision %d after 5 s of 1 s retention", last.Compacted, last.Revision)
	}
	if len(res.Defrags) == 0 {
		t.Errorf("no defragmentation with a policy that defragments at every check")
	}
	for _, x := range res.Samples {
		if x.Size <= 0 || x.InUse <= 0 || x.InUse > x.Size || x.Keys <= 0 || x.Revision <= 0 || x.Goroutines <= 0 {
			t.Fatalf("implausible sample %+v", x)
		}
		if runtime.GOOS == "linux" && x.RSS <= 0 {
			t.Fatalf("no RSS on linux: %+v", x)
		}
	}
	for _, want := range []string{"elapsed", "db KiB", "compacted", "goroutines", "rss MiB", "summary:", "after the first compaction of the run's history", "defragmented the store"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestSoakStopsWithContext: ending the context (Ctrl-C) stops the soak
// promptly, with its summary, and Soak says why.
func TestSoakStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	var res SoakResult
	go func() {
		var err error
		res, err = Soak(ctx, SoakOptions{Duration: time.Hour, Members: 3, Every: 500 * time.Millisecond, Churn: 200 * time.Millisecond, DataDir: t.TempDir(), Out: &out})
		done <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "elapsed") {
		if time.Now().After(deadline) {
			t.Fatalf("no header within 30 s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Soak returned %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Soak did not stop within 20 s of its context ending")
	}
	if len(res.Samples) < 2 || !strings.Contains(out.String(), "summary (stopped early") {
		t.Fatalf("%d samples; output:\n%s", len(res.Samples), out.String())
	}
}

func TestSoakRefusesBadOptions(t *testing.T) {
	for _, o := range []SoakOptions{
		{},
		{Duration: time.Second, Members: 1},
		{Duration: time.Second, Every: -time.Second},
		{Duration: time.Second, Churn: -time.Second},
	} {
		if _, err := Soak(context.Background(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}
