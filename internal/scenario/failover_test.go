package scenario

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/idc-dev/idc/nbd"
)

// failover runs a workload through the disk, injects a fault into the
// active driver (driver-a, the disk's first choice) after a while, lets
// the workload go on through driver-b, and then checks what the issue of
// a multipath disk is about: the client saw no error, every block holds
// its last acknowledged write (read through the disk and in the storage's
// file), and the storage's apply log shows no write of an ended epoch
// applied after the fence of the next (G5). It returns the scenario, the
// workload and the fault's time for further checks.
func failover(t *testing.T, cfg Config, fault func(s *Scenario)) (*Scenario, *Workload, time.Time) {
	t.Helper()
	s := start(t, cfg)
	c, err := nbd.DialURI(t.Context(), s.NBD, nbd.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := &Workload{Client: c}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	waitAcks(t, w, 200)
	at := time.Now()
	fault(s)
	if err := s.Proc("disk").WaitLine(t.Context(), "path driver-b"); err != nil {
		t.Fatal(err)
	}
	n := len(w.Acks())
	waitAcks(t, w, n+200)
	stop()
	if err := <-done; err != nil {
		t.Fatalf("the client saw errors: %v", err)
	}
	if err := w.Verify(t.Context(), c.ReadAt); err != nil {
		t.Fatalf("through the disk: %v", err)
	}
	gap, last, next := Gap(w.Acks(), at)
	if gap == 0 {
		t.Fatal("no acknowledgement after the fault")
	}
	t.Logf("service gap %v: from %v after the fault to %v after it", gap, last.Sub(at), next.Sub(at))
	return s, w, at
}

// checkStorage checks the storage's file and apply log once the scenario
// stopped.
func checkStorage(t *testing.T, s *Scenario, w *Workload, at time.Time) ApplyLog {
	t.Helper()
	s.Close()
	f, err := os.Open(s.File)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := w.Verify(t.Context(), func(_ context.Context, p []byte, off uint64) error {
		_, err := f.ReadAt(p, int64(off))
		return err
	}); err != nil {
		t.Fatalf("in the storage's file: %v", err)
	}
	log, err := ReadApplyLog(s.ApplyLog)
	if err != nil {
		t.Fatal(err)
	}
	if len(log.Stale) > 0 {
		t.Fatalf("G5: %d writes applied after the fence of a later epoch, first %+v", len(log.Stale), log.Stale[0])
	}
	var fenced time.Duration
	for _, ns := range log.Fenced {
		if d := time.Unix(0, ns).Sub(at); d > 0 && (fenced == 0 || d < fenced) {
			fenced = d
		}
	}
	t.Logf("apply log: %d writes in epochs %v, %d fences; time to fence %v", log.Writes, log.Epochs, log.Fences, fenced)
	return log
}

// waitAcks waits until the workload has n acknowledged writes.
func waitAcks(t *testing.T, w *Workload, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(w.Acks()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d writes acknowledged in 30s", len(w.Acks()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFailoverKilled: the active driver killed (SIGKILL) while the client
// writes: its channel closes, the disk fails over in the next epoch.
func TestFailoverKilled(t *testing.T) {
	s, w, at := failover(t, Config{}, func(s *Scenario) { s.Proc("driver-a").Kill() })
	checkStorage(t, s, w, at)
}

// TestFailoverStopped: the active driver stopped (SIGSTOP) past its
// lease while the client writes, with writes it forwarded still on their
// way to the storage (held by a proxy until it resumes); resumed after the
// failover, it finds its membership fenced, and the storage's guard
// refuses its held writes.
func TestFailoverStopped(t *testing.T) {
	cfg := Config{Proxied: []string{"driver-a"}}
	s, w, at := failover(t, cfg, func(s *Scenario) {
		holdForwarded(t, s)
		if err := s.Proc("driver-a").Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	})
	// Past its lease, then resume it and let its writes go.
	time.Sleep(2 * lease)
	a := s.Proc("driver-a")
	if err := a.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitLine(t.Context(), "membership ended"); err != nil {
		t.Fatal(err)
	}
	s.Proxies("driver-a").Release()
	checkRefused(t, checkStorage(t, s, w, at))
}

// TestFailoverCutOff: every connection of the active driver blackholed
// (held by proxies; the process runs on) while the client writes; once
// the disk failed over, the proxies release what they held — the
// driver's forwarded writes among it — and the storage's guard refuses
// them.
func TestFailoverCutOff(t *testing.T) {
	cfg := Config{Proxied: []string{"driver-a"}}
	s, w, at := failover(t, cfg, func(s *Scenario) {
		holdForwarded(t, s)
		s.Proxies("driver-a").Hold()
	})
	s.Proxies("driver-a").Release()
	if err := s.Proc("driver-a").WaitLine(t.Context(), "membership ended"); err != nil {
		t.Fatal(err)
	}
	checkRefused(t, checkStorage(t, s, w, at))
}

// lease is the scenario's default lease TTL.
const lease = 2 * time.Second

// holdForwarded holds driver-a's connections to the storage until writes
// it forwarded are held there.
func holdForwarded(t *testing.T, s *Scenario) {
	t.Helper()
	p := s.Proxies("driver-a").Storage
	p.Hold()
	deadline := time.Now().Add(10 * time.Second)
	for p.HeldBytes() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no write held on its way to the storage")
		}
		time.Sleep(time.Millisecond)
	}
}

// checkRefused checks that the storage's guard refused the held writes.
func checkRefused(t *testing.T, log ApplyLog) {
	t.Helper()
	n := 0
	for _, r := range log.Refused {
		if r.Request == "write" && r.Domain == "disk" && (r.Reason == "stale" || r.Reason == "aborted") {
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no held write refused by the guard: refusals %+v", log.Refused)
	}
	t.Logf("the guard refused %d held writes of ended epochs", n)
}
