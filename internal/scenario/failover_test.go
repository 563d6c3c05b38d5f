package scenario

import (
	"context"
	"testing"
	"time"
)

// TestFailover injects each fault into the active driver while a client
// writes unique payloads through the disk (RunFailover): the killed
// driver (SIGKILL), the stopped one (SIGSTOP past its lease, with writes
// it forwarded held on their way until it resumes), the one cut off (every
// connection held by proxies while it runs on, then released). Each time
// the client sees no error, every block holds its last acknowledged
// write through the disk and in the storage's file, the apply log shows
// no write of an ended epoch applied after the fence of the next, and the
// held writes, released after the failover, are refused by the guard.
// The figures are logged; docs/BENCHMARKS.md has them from idc bench disk.
func TestFailover(t *testing.T) {
	for _, f := range Faults() {
		t.Run(string(f), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			// A heartbeat more tolerant than the benchmark's (10 ms × 5): the
			// test runs beside the others on two cores, and what it checks
			// does not depend on how fast the failover is.
			cfg := Config{Binary: idcBinary, Dir: t.TempDir(), Output: LogWriter(t), Heartbeat: 20 * time.Millisecond, HeartbeatMisses: 10}
			res, err := RunFailover(ctx, cfg, f, 200)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s %s: service gap %v, time to fence %v, %d writes acknowledged, %d applied, %d held writes refused",
				res.Driver, f, res.Gap, res.ToFence, res.Acks, res.Writes, res.Refused)
		})
	}
}
