package nbd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stockTools maps each client and server the stock-client test runs to
// the Debian package that provides it.
var stockTools = []struct{ cmd, pkg string }{
	{"qemu-io", "qemu-utils"},
	{"qemu-img", "qemu-utils"},
	{"qemu-nbd", "qemu-utils"},
	{"nbdinfo", "libnbd-bin"},
	{"nbdcopy", "libnbd-bin"},
	{"nbdsh", "python3-libnbd"},
	{"fio", "fio"},
}

// requireTools fails the test (it does not skip) when a tool is missing.
func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range stockTools {
		if _, err := exec.LookPath(tool.cmd); err != nil {
			t.Fatalf("%s is not installed: install the Debian package %s (apt-get install %s)", tool.cmd, tool.pkg, tool.pkg)
		}
	}
	// nbdsh runs "python3 -m nbd"; the module comes with the system Python.
	out, err := toolCmd("nbdsh", "-c", "print(h.get_version())").CombinedOutput()
	if err != nil {
		t.Fatalf("nbdsh cannot run (%v: %s): install the Debian package python3-libnbd", err, out)
	}
}

// toolCmd runs a stock tool with the system's Python first in PATH, for
// nbdsh.
func toolCmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	return cmd
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := toolCmd(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

const stockSize = 8 << 20

// nbdshScript pipelines 32 writes and 32 reads, then flushes, trims,
// zeroes and writes with FUA, checking the data as it goes.
const nbdshScript = `
import nbd
assert h.get_size() == 8 << 20
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
base = 4 << 20
cookies = []
for i in range(32):
    buf = nbd.Buffer.from_bytearray(bytearray([i + 1]) * 4096)
    cookies.append(h.aio_pwrite(buf, base + i * 4096))
assert h.aio_in_flight() > 1, h.aio_in_flight()
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
reads = []
for i in reversed(range(32)):
    buf = nbd.Buffer(4096)
    reads.append((i, buf, h.aio_pread(buf, base + i * 4096)))
while h.aio_in_flight() > 0:
    h.poll(-1)
for i, buf, c in reads:
    assert h.aio_command_completed(c)
    assert buf.to_bytearray() == bytearray([i + 1]) * 4096, i
h.flush()
h.trim(65536, 5 << 20)
h.zero(65536, 6 << 20)
h.zero(4096, base, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(65536, 6 << 20) == bytearray(65536)
assert h.pread(4096, base) == bytearray(4096)
h.pwrite(b"\x5a" * 4096, 7 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 7 << 20) == b"\x5a" * 4096
try:
    h.pread(4096, (8 << 20) - 2048)
    raise Exception("read beyond the end succeeded")
except nbd.Error as e:
    pass
print("nbdsh ok")
`

// TestStockClients runs the stock clients against this server and, the
// same way, against qemu-nbd serving a file of the same size; both must
// give the same answers and end with the same contents.
func TestStockClients(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()

	// This server, over a MemBackend.
	mem := NewMemBackend(stockSize)
	_, ours := startServer(t, Config{Exports: []Export{{Name: "disk", Description: "test disk", Backend: mem}}})

	// qemu-nbd over a file.
	img := filepath.Join(dir, "qemu.img")
	if err := os.WriteFile(img, make([]byte, stockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	qsockDir, err := os.MkdirTemp("", "qnbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(qsockDir) })
	qsock := filepath.Join(qsockDir, "s")
	qemu := exec.Command("qemu-nbd", "-f", "raw", "-k", qsock, "-x", "disk", "--persistent", "--shared=8", "--discard=unmap", img)
	qemu.Stderr = os.Stderr
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemu.Process.Kill(); qemu.Wait() })
	waitSocket(t, qsock)

	servers := []struct {
		name     string
		sock     string
		contents func() []byte
	}{
		{"ours", ours, mem.Bytes},
		{"qemu-nbd", qsock, func() []byte {
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
	}
	infos := map[string]map[string]any{}
	images := map[string][]byte{}
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			uri := "nbd+unix:///disk?socket=" + srv.sock

			var info struct {
				Exports []map[string]any `json:"exports"`
			}
			if err := json.Unmarshal([]byte(run(t, "nbdinfo", "--json", uri)), &info); err != nil || len(info.Exports) != 1 {
				t.Fatalf("nbdinfo --json: %v %v", err, info)
			}
			infos[srv.name] = info.Exports[0]

			out := run(t, "qemu-io", "-f", "raw",
				"-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k",
				"-c", "write -P 0xcd 1M 4k", "-c", "read -P 0xcd 1M 4k",
				"-c", "read -P 0 2M 64k", "-c", "flush", uri)
			if strings.Contains(out, "verification failed") || strings.Contains(out, "error") {
				t.Fatalf("qemu-io:\n%s", out)
			}

			if out := run(t, "nbdsh", "-u", uri, "-c", nbdshScript); !strings.Contains(out, "nbdsh ok") {
				t.Fatalf("nbdsh:\n%s", out)
			}

			converted := filepath.Join(dir, srv.name+"-convert.img")
			run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, converted)
			copied := filepath.Join(dir, srv.name+"-nbdcopy.img")
			run(t, "nbdcopy", uri, copied)
			want := srv.contents()
			for _, f := range []string{converted, copied} {
				got, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s differs from the served disk", filepath.Base(f))
				}
			}
			images[srv.name] = want

			fio := toolCmd("fio", "--name=verify", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite",
				"--bs=4k", "--offset=2M", "--size=1M", "--iodepth=16", "--verify=crc32c",
				"--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
			fio.Dir = dir
			out2, err := fio.CombinedOutput()
			fioOut := string(out2)
			if err != nil {
				t.Fatalf("fio: %v\n%s", err, fioOut)
			}
			if !strings.Contains(fioOut, "verify: (groupid=0") {
				t.Fatalf("fio:\n%s", fioOut)
			}
			if _, w, ok := strings.Cut(fioOut, "write: "); ok {
				line, _, _ := strings.Cut(w, "\n")
				t.Logf("fio: %s", line)
			}
		})
	}
	if t.Failed() {
		return
	}

	// Both servers agree.
	o, q := infos["ours"], infos["qemu-nbd"]
	for _, k := range []string{"export-size", "is_read_only", "can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "block_size_preferred"} {
		if fmt.Sprint(o[k]) != fmt.Sprint(q[k]) {
			t.Errorf("nbdinfo %s: ours %v, qemu-nbd %v", k, o[k], q[k])
		}
	}
	wantOurs := map[string]any{"export-size": float64(stockSize), "is_read_only": false, "can_flush": true, "can_fua": true,
		"can_trim": true, "can_zero": true, "can_multi_conn": true, "can_cache": false, "structured": nil,
		"block_size_minimum": float64(1), "block_size_maximum": float64(32 << 20), "export-name": "disk", "description": "test disk"}
	for k, v := range wantOurs {
		if k == "structured" {
			continue
		}
		if fmt.Sprint(o[k]) != fmt.Sprint(v) {
			t.Errorf("nbdinfo %s of ours: %v, want %v", k, o[k], v)
		}
	}
	if !bytes.Equal(images["ours"], images["qemu-nbd"]) {
		t.Error("the two servers' disks differ after the same commands")
	}
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("no server on %s", path)
}
