package scenario

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// idcBinary is the idc binary the tests run, built once by TestMain.
var idcBinary string

func TestMain(m *testing.M) {
	bin, cleanup, err := BuildTemp(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	idcBinary = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// start starts a scenario for the test and stops it at the end.
func start(t *testing.T, cfg Config) *Scenario {
	t.Helper()
	cfg.Binary, cfg.Dir = idcBinary, t.TempDir()
	if cfg.Output == nil {
		cfg.Output = LogWriter(t)
	}
	s, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// need skips the test if a stock tool is missing (.ci/run installs them).
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian: qemu-utils, libnbd-bin, nbdkit, fio)", tool)
		}
	}
}

// stock runs a stock client and returns its output.
func stock(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestServes: the disk serves a stock client through a driver; the
// storage applied the writes with the disk's token, and its apply log
// shows no stale write.
func TestServes(t *testing.T) {
	need(t, "qemu-io")
	s := start(t, Config{})
	stock(t, "qemu-io", "-f", "raw", s.NBD, "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 1M 64k", "-c", "flush")
	out := stock(t, "qemu-io", "-f", "raw", s.NBD, "-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 1M 64k", "-c", "read -P 0 2M 4k")
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read back:\n%s", out)
	}
	s.Close()
	log, err := ReadApplyLog(s.ApplyLog)
	if err != nil {
		t.Fatal(err)
	}
	if log.Writes == 0 || len(log.Stale) != 0 {
		t.Fatalf("apply log: %d writes, stale %+v", log.Writes, log.Stale)
	}
	b, err := os.ReadFile(s.File)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != 0xab || b[1<<20-1] != 0xab || b[1<<20] != 0xcd || b[2<<20] != 0 {
		t.Fatalf("the storage's file holds %x %x %x %x", b[0], b[1<<20-1], b[1<<20], b[2<<20])
	}
}
