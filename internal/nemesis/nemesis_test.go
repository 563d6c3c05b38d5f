package nemesis

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/checker"
	"github.com/idc-dev/idc/internal/scenario"
	"github.com/idc-dev/idc/nbd"
)

// idcBinary is the idc binary the tests run, built once by TestMain.
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

// outcome is what a run under the nemesis left.
type outcome struct {
	events  []Event
	log     scenario.ApplyLog
	runErr  error // the workload's
	verify  error // every block's last acknowledged write, through the disk
	written int
	verdict checker.Verdict
}

// run starts the scenario with every driver proxied, writes through its
// disk while the nemesis runs sched, then reads every block back through
// the disk and reads the apply log.
func run(t *testing.T, cfg scenario.Config, sched Schedule) outcome {
	t.Helper()
	cfg.Binary, cfg.Dir, cfg.Output = idcBinary, t.TempDir(), scenario.LogWriter(t)
	cfg.Proxied = []string{"driver-a", "driver-b"}
	cfg.Coordinators = 2
	ctx := t.Context()
	s, err := scenario.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c, err := nbd.DialURI(ctx, s.NBD, nbd.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := &scenario.Workload{Client: c, Blocks: 64, Reads: 20}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	var out outcome
	out.events, err = Run(ctx, Config{Scenario: s, Workload: w, Log: func(e Event) { t.Logf("nemesis: %v", e) }}, sched)
	stop()
	out.runErr = <-done
	if err != nil {
		t.Fatal(err)
	}
	out.written = w.Count()
	out.verify = w.Verify(ctx, func(ctx context.Context, p []byte, off uint64) error { return c.ReadAt(ctx, p, off) })
	final, err := w.Final(ctx, func(ctx context.Context, p []byte, off uint64) error { return c.ReadAt(ctx, p, off) })
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // the apply log flushed
	if out.log, err = scenario.ReadApplyLog(s.ApplyLog); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(s.ApplyLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	applied, err := checker.ReadApplyLog(f)
	if err != nil {
		t.Fatal(err)
	}
	out.verdict = checker.Check(checker.History{Ops: w.History(), Applied: applied, Connected: checker.FirstApplies(applied), Final: final}, time.Minute)
	t.Logf("checker: %d writes (%d acknowledged), %d reads: ok %v %s", out.verdict.Writes, out.verdict.Acknowledged, out.verdict.Reads, out.verdict.OK, out.verdict.Reason)
	return out
}

// TestFaults: each fault in fence mode, against the driver the disk uses:
// the group recovers (every driver back in the disk's epoch), the client
// saw no error, every block holds its last acknowledged write, and the
// apply log shows no stale write (none after a later fence, none after a
// later epoch's write); held writes were refused by the guard.
func TestFaults(t *testing.T) {
	for _, k := range Kinds() {
		t.Run(string(k), func(t *testing.T) {
			o := run(t, scenario.Config{}, Schedule{{Kind: k, Target: Active}})
			if len(o.events) != 3 || o.events[2].Phase != Recovered {
				t.Fatalf("events %v, want injected, healed, recovered", o.events)
			}
			if o.runErr != nil {
				t.Errorf("the client saw: %v", o.runErr)
			}
			if o.verify != nil {
				t.Errorf("blocks: %v", o.verify)
			}
			if !o.verdict.OK {
				t.Errorf("the checker: %s", o.verdict.Reason)
			}
			if len(o.log.Stale) > 0 || len(o.log.Overtaken) > 0 {
				t.Errorf("stale writes applied: %d after a fence, %d after a later epoch's write", len(o.log.Stale), len(o.log.Overtaken))
			}
			refused := 0
			for _, r := range o.log.Refused {
				if r.Request == "write" && r.Reason == "stale" {
					refused++
				}
			}
			if k == HoldWrites && refused == 0 {
				t.Errorf("no held write refused by the guard: %+v", o.log.Refused)
			}
			t.Logf("%d writes acknowledged, %d applied, %d stale writes refused", o.written, o.log.Writes, refused)
		})
	}
}

// TestLeaseLesson: with an unguarded storage (lease mode alone, as for a
// resource that cannot check tokens), the writes held during the failover
// land after the next epoch's: stale writes, which the check finds. This
// is the check shown to fail, and why fencing exists.
func TestLeaseLesson(t *testing.T) {
	o := run(t, scenario.Config{Mode: "lease", Unguarded: true}, Schedule{{Kind: HoldWrites, Target: Active}})
	if len(o.log.Overtaken) == 0 {
		t.Fatalf("no stale write landed (%d writes applied, %d refused)", o.log.Writes, len(o.log.Refused))
	}
	if o.verdict.OK || len(o.verdict.Stale) == 0 {
		t.Fatalf("the checker found no stale write: %+v", o.verdict)
	}
	t.Logf("%d stale writes landed, first %+v", len(o.log.Overtaken), o.log.Overtaken[0])
}
