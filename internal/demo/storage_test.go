package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/nemesis"
	"github.com/idc-dev/idc/internal/scenario"
)

// idcBinary is the idc binary the storage demo's domains run as, built
// once by TestMain.
var idcBinary string

func TestMain(m *testing.M) {
	bin, cleanup, err := scenario.BuildTemp(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	idcBinary = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// runDemo runs the storage demo and returns its summary, error and output.
func runDemo(t *testing.T, cfg Config) (Summary, error, string) {
	t.Helper()
	var out bytes.Buffer
	cfg.Binary, cfg.Out, cfg.Dir = idcBinary, &out, t.TempDir()
	sum, err := Run(t.Context(), cfg)
	t.Log("\n" + out.String())
	return sum, err, out.String()
}

// TestStorageDemo: in fence mode the held writes are refused and the
// checker passes; the report and the timeline say so.
func TestStorageDemo(t *testing.T) {
	sum, err, out := runDemo(t, Config{Schedule: "kill,hold-writes"})
	if err != nil {
		t.Fatal(err)
	}
	r := sum.Results[0]
	if !r.Verdict.OK || r.Landed != 0 || r.Refused == 0 || len(r.Faults) != 2 {
		t.Fatalf("verdict %+v, %d landed, %d refused, faults %+v", r.Verdict, r.Landed, r.Refused, r.Faults)
	}
	for _, f := range r.Faults {
		if f.Gap <= 0 || f.ToFence <= 0 {
			t.Errorf("%s: gap %v, time to fence %v", f.Kind, f.Gap, f.ToFence)
		}
	}
	for _, want := range []string{"checker          PASS", "refused by the storage's guard", "Why: the writes", r.Timeline} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q", want)
		}
	}
	page, err := os.ReadFile(r.Timeline)
	if err != nil || !bytes.Contains(page, []byte("<svg")) || !bytes.Contains(page, []byte("hold-writes")) {
		t.Fatalf("timeline %s: %d bytes, %v", r.Timeline, len(page), err)
	}
}

// TestStorageDemoLeaseLesson: with leases alone (an unguarded storage)
// the held writes land, the checker rejects the run and Run says so: the
// demo's lesson, and the checker shown able to fail.
func TestStorageDemoLeaseLesson(t *testing.T) {
	sum, err, out := runDemo(t, Config{Mode: ModeLease, Schedule: "hold-writes"})
	if !errors.Is(err, ErrVerdict) {
		t.Fatalf("err %v, want ErrVerdict", err)
	}
	r := sum.Results[0]
	if r.Verdict.OK || r.Landed == 0 || len(r.Verdict.Stale) == 0 {
		t.Fatalf("verdict %+v, %d landed", r.Verdict, r.Landed)
	}
	words := strings.Join(strings.Fields(out), " ")
	if !strings.Contains(out, "checker          FAIL") || !strings.Contains(words, "a lease stops a domain, not the requests it already sent") {
		t.Errorf("the report does not tell the lesson")
	}
	if len(r.Verdict.NonLinearizable) > 0 {
		if page, err := os.ReadFile(r.Linearizability); err != nil || len(page) == 0 {
			t.Errorf("blocks %v are not linearizable, and porcupine's page %q: %v", r.Verdict.NonLinearizable, r.Linearizability, err)
		}
	}
}

// TestStorageDemoSchedules: seeded random schedules in fence mode (50,
// or IDC_DEMO_SCHEDULES), each a fault drawn from its seed and the held
// writes: every one passes the checker, with no stale write landed.
func TestStorageDemoSchedules(t *testing.T) {
	n := 50
	if v := os.Getenv("IDC_DEMO_SCHEDULES"); v != "" {
		fmt.Sscan(v, &n)
	}
	if testing.Short() {
		n = 5
	}
	sum, err, out := runDemo(t, Config{Seed: 1000, Schedules: n, Steps: 2, Brief: true})
	if err != nil {
		t.Fatal(err)
	}
	// Brief: a line for each schedule, and the totals.
	for i := range n {
		if !strings.Contains(out, fmt.Sprintf("seed %d fence PASS: ", 1000+i)) {
			t.Errorf("no line for seed %d", 1000+i)
		}
	}
	if strings.Contains(out, "-- report") || !strings.Contains(out, fmt.Sprintf("%d of %d schedules passed", n, n)) {
		t.Errorf("brief output has a report, or no totals")
	}
	kinds := map[nemesis.Kind]int{}
	for _, r := range sum.Results {
		if !r.Verdict.OK || r.Landed > 0 {
			t.Errorf("seed %d: %s", r.Seed, r.Verdict.Reason)
		}
		for _, f := range r.Faults {
			kinds[f.Kind]++
		}
	}
	if sum.Passed != n {
		t.Errorf("%d of %d schedules passed", sum.Passed, n)
	}
	t.Logf("%d schedules, faults by kind %v", n, kinds)
}

func TestConfigRefused(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Binary: "idc", Mode: "trust"},
		{Binary: "idc", Steps: -1},
		{Binary: "idc", Schedules: -2},
		{Binary: "idc", Schedule: "explode"},
		{Binary: "idc", Duration: -1},
	} {
		if _, err := Run(t.Context(), cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v, want ErrConfig", cfg, err)
		}
	}
}

func TestQuantile(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.99, 10}, {0, 1}, {1, 10}, {0.1, 1}, {0.11, 2}} {
		if got := quantile(d, tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

// TestPaths: the disk's epoch lines become the spans of the driver it
// used; an epoch with no path ends the span before it.
func TestPaths(t *testing.T) {
	t0 := time.Unix(100, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	lines := []scenario.Line{
		{At: at(0), Text: "disk: serving idc"},
		{At: at(10), Text: "disk: epoch 3 connected: disk, driver-a, driver-b; path driver-a"},
		{At: at(50), Text: "disk: epoch 4 connected: disk; path none"},
		{At: at(70), Text: "disk: epoch 5 connected: disk, driver-b; path driver-b"},
	}
	got := paths(lines, at(100))
	want := []struct {
		domain   string
		from, to time.Time
	}{{"driver-a", at(10), at(50)}, {"driver-b", at(70), at(100)}}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i, w := range want {
		if got[i].Domain != w.domain || !got[i].From.Equal(w.from) || !got[i].To.Equal(w.to) {
			t.Errorf("span %d: %+v, want %+v", i, got[i], w)
		}
	}
}
