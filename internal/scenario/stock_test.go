package scenario

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idc-dev/idc/storage"
)

// The stock-client comparison: the same scripts of stock NBD clients run
// against the idc disk (through the whole scenario: disk, driver, storage)
// and against reference servers — qemu-nbd serving a raw file, and
// nbdkit's memory plugin when nbdkit is installed — and what the clients
// observe must agree.
//
// What legitimately differs, and is therefore not compared:
//
//   - export-name and description: qemu-nbd and the idc disk serve the
//     name asked for, nbdkit serves any name; only the idc disk has a
//     description.
//   - structured replies, and what needs them: the idc disk answers
//     NBD_OPT_STRUCTURED_REPLY with NBD_REP_ERR_UNSUP (simple replies
//     only), so it has no meta contexts (base:allocation), no can_df; it
//     offers no NBD_CMD_CACHE (can_cache) and no fast zero (can_fast_zero).
//     These are optional in the protocol; clients fall back.
//   - block_size_maximum: the idc disk advertises its --max-request
//     (1 MiB by default), qemu-nbd 32 MiB, nbdkit memory none. Clients
//     that honour it (qemu, nbdcopy) split longer requests; fio's nbd
//     engine does not split, so the fio script's blocks stay below 1 MiB.
//   - what a discarded range reads back as: a trim is a hint (the idc
//     storage writes zeroes; qemu-nbd and nbdkit may keep the data or drop
//     whole blocks of it), so the scripts never read a discarded range
//     before writing it again; they do check that the bytes around it are
//     untouched.
//   - the error of a write or write-zeroes beyond the end: qemu-nbd
//     answers NBD_EINVAL to every request beyond the end, where the
//     protocol asks for NBD_ENOSPC (as the idc disk and nbdkit answer);
//     that such requests fail is compared with every server.
//   - fio's data: its verify headers hold the time of each write, so the
//     fio script runs last and only its result (exit status, bytes
//     written and verified) is compared.
//
// Everything else is compared: the size and the transmission flags,
// block sizes where both report them, qemu-img's view, every line qemu-io
// prints (apart from timings), which requests beyond the end fail, and
// the whole disk's bytes after the scripts, byte for byte.

const (
	// stockSize is the disk's size in every server.
	stockSize = 64 << 20
	// stockMaxRequest is the idc disk's largest NBD request (idc disk's
	// default --max-request); some scripts cross it so that clients split.
	stockMaxRequest = 1 << 20
	// stockTimeout bounds one client command.
	stockTimeout = 30 * time.Second
	// stockFioOffset and stockFioSize are where fio writes.
	stockFioOffset, stockFioSize = 40 << 20, 4 << 20
)

// stockServer is an NBD server the scripts run against.
type stockServer struct {
	name string
	uri  string
	// idc is true for the idc disk.
	idc bool
	// backing is the file holding the export's bytes, "" if none.
	backing string
}

// stockResult is what a script observed of one server: vals must agree
// between servers where both report them, and files (paths, by what they
// hold) must be equal byte for byte.
type stockResult struct {
	vals  map[string]string
	files map[string]string
}

// stockEnv is what the scripts share.
type stockEnv struct {
	dir    string // temporary files
	source string // a pattern image, written into each export by qemu-img
	second string // another pattern image, written into each export by nbdcopy
}

// stockScript is a script of stock clients, run against each server in
// turn. optional lists the vals and files that a server may not report
// (compared only when both servers report them).
type stockScript struct {
	name     string
	optional []string
	run      func(t *testing.T, e *stockEnv, srv stockServer) stockResult
}

// TestStock runs the stock clients' scripts against the idc disk and the
// reference servers, and compares what they observed.
func TestStock(t *testing.T) {
	need(t, "qemu-io", "qemu-img", "qemu-nbd", "nbdinfo", "nbdcopy", "nbdsh", "fio")
	nbdsh := exec.Command("nbdsh", "-c", "pass")
	nbdsh.Env = stockEnviron()
	if out, err := nbdsh.CombinedOutput(); err != nil {
		t.Skipf("nbdsh cannot run (Debian: python3-libnbd): %v: %s", err, out)
	}
	dir := t.TempDir()
	e := &stockEnv{dir: dir, source: filepath.Join(dir, "source.img"), second: filepath.Join(dir, "second.img")}
	for _, f := range []struct {
		path string
		seed uint64
	}{{e.source, 1}, {e.second, 2}} {
		if err := os.WriteFile(f.path, stockPattern(f.seed, stockSize), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Heartbeats and the disk's request timeout tolerate a loaded machine:
	// the scripts compare what clients see, not failover (a failover in the
	// middle is harmless, but flapping members are held back for seconds).
	s := start(t, Config{Size: "64M", Heartbeat: 50 * time.Millisecond, HeartbeatMisses: 20, Timeout: 5 * time.Second})
	servers := []stockServer{startQemuNBD(t, dir), {name: "idc disk", uri: s.NBD, idc: true, backing: s.File}}
	if _, err := exec.LookPath("nbdkit"); err == nil {
		servers = append(servers, startNbdkit(t, dir))
	} else {
		t.Log("nbdkit not installed (Debian: nbdkit): comparing with qemu-nbd only")
	}

	began := time.Now()
	disk := s.Proc("disk")
	for _, sc := range stockScripts {
		select {
		case <-disk.Exited():
			t.Fatalf("the idc disk exited (%v) before the script %s", disk.Err(), sc.name)
		default:
		}
		t.Run(sc.name, func(t *testing.T) {
			results := make([]stockResult, len(servers))
			for i, srv := range servers {
				results[i] = sc.run(t, e, srv)
			}
			for i := range servers {
				for j := i + 1; j < len(servers); j++ {
					compareStock(t, sc, servers[i].name, results[i], servers[j].name, results[j])
				}
			}
		})
	}
	t.Logf("scripts ran in %v", time.Since(began).Round(time.Millisecond))

	// The requests reached the storage as what they were: trims and
	// zeroes as such, writes split at the disk's largest request. (A
	// request may also have been refused, sent through a path that failed
	// before the next epoch's fence; the disk then sent it again.)
	s.Close()
	for _, l := range disk.Lines() {
		if strings.Contains(l, "disk: stopped") {
			t.Log(l)
		}
	}
	ops, err := stockApplied(s.ApplyLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the storage applied (count, longest): %v", ops)
	if ops["trim"][0] == 0 || ops["zero"][0] == 0 || ops["write"][0] == 0 || ops["write"][1] > stockMaxRequest {
		t.Errorf("the storage's apply log (count, longest): %v; want writes, trims and zeroes, no write over %d bytes", ops, stockMaxRequest)
	}
}

// stockScripts are the scripts, in the order they run; each leaves the
// disks in the same state on every server.
var stockScripts = []stockScript{
	{name: "nbdinfo", optional: []string{"block_size_minimum", "block_size_preferred"}, run: stockNbdinfo},
	{name: "qemu-img-info", run: stockQemuImgInfo},
	{name: "qemu-img-convert", run: stockQemuImgConvert},
	{name: "qemu-io", run: stockQemuIO},
	{name: "nbdsh", optional: []string{"nbdsh errors"}, run: stockNbdsh},
	{name: "nbdcopy-out", optional: []string{"backing file"}, run: stockNbdcopyOut},
	{name: "nbdcopy-in", run: stockNbdcopyIn},
	{name: "fio", run: stockFio},
}

// stockNbdinfo: the size, the transmission flags and the block sizes.
func stockNbdinfo(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	out := stockRun(t, e, srv, "nbdinfo", "--json", srv.uri)
	var info struct {
		Structured bool             `json:"structured"`
		Exports    []map[string]any `json:"exports"`
	}
	d := json.NewDecoder(strings.NewReader(out))
	d.UseNumber()
	if err := d.Decode(&info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("%s: nbdinfo --json: %v\n%s", srv.name, err, out)
	}
	x := info.Exports[0]
	vals := map[string]string{}
	for _, k := range []string{"export-size", "is_read_only", "is_rotational", "can_flush", "can_fua", "can_trim",
		"can_zero", "can_multi_conn", "content", "block_size_minimum", "block_size_preferred"} {
		if v, ok := x[k]; ok {
			vals[k] = fmt.Sprint(v)
		}
	}
	other := []string{fmt.Sprintf("structured=%v", info.Structured)}
	for _, k := range []string{"contexts", "can_cache", "can_df", "can_fast_zero", "block_size_maximum", "export-name", "description"} {
		if v, ok := x[k]; ok {
			other = append(other, fmt.Sprintf("%s=%v", k, v))
		}
	}
	t.Logf("%s: not compared: %s", srv.name, strings.Join(other, " "))
	if srv.idc && fmt.Sprint(x["block_size_maximum"]) != fmt.Sprint(stockMaxRequest) {
		// The scripts that cross the largest request rely on it.
		t.Errorf("%s: block_size_maximum %v, want %d", srv.name, x["block_size_maximum"], stockMaxRequest)
	}
	return stockResult{vals: vals}
}

// stockQemuImgInfo: qemu-img's view of the export.
func stockQemuImgInfo(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	out := stockRun(t, e, srv, "qemu-img", "info", "--output=json", "-f", "raw", srv.uri)
	var info map[string]any
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%s: qemu-img info: %v\n%s", srv.name, err, out)
	}
	return stockResult{vals: map[string]string{"virtual-size": fmt.Sprint(info["virtual-size"]), "format": fmt.Sprint(info["format"])}}
}

// stockQemuImgConvert writes the source image into the existing export
// (-n; -W lets qemu-img write out of order, several requests at once;
// the source's zero chunks become write-zeroes), then converts the export
// back out to a file, which must be the source.
func stockQemuImgConvert(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	stockRun(t, e, srv, "qemu-img", "convert", "-n", "-W", "-f", "raw", "-O", "raw", e.source, srv.uri)
	out := filepath.Join(e.dir, stockFileName(srv, "converted"))
	stockRun(t, e, srv, "qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri, out)
	compareStockFiles(t, "qemu-img convert of the source into and out of the export", "source", e.source, srv.name, out)
	return stockResult{files: map[string]string{"converted out": out}}
}

// stockQemuIOScript is qemu-io's script: writes and reads with patterns,
// aligned and not, some crossing the idc disk's largest request (so qemu
// splits them), with FUA, write-zeroes, discards, and pipelined writes,
// each checked with read -P and the bytes around it checked untouched.
func stockQemuIOScript() []string {
	const k, m = 1 << 10, 1 << 20
	var c []string
	add := func(format string, args ...any) { c = append(c, fmt.Sprintf(format, args...)) }
	// Aligned.
	add("write -P 0x11 0 %d", 64*k)
	add("read -P 0x11 0 %d", 64*k)
	// Unaligned, small, one crossing a 4 KiB boundary; qemu-io dumps the
	// bytes around them (the source's bytes between them must agree too).
	add("write -P 0x12 %d 1", m+1)
	add("write -P 0x13 %d 7", m+4093)
	add("write -P 0x14 %d 3333", m+5000)
	add("read -P 0x12 %d 1", m+1)
	add("read -P 0x13 %d 7", m+4093)
	add("read -P 0x14 %d 3333", m+5000)
	add("read -v %d 32", m)
	add("read -v %d 32", m+4080)
	add("read -v %d 32", m+8320)
	// Crossing the largest request: split by qemu into several requests.
	add("write -P 0x21 %d %d", 2*m+4095, 3*m+2)
	add("read -P 0x21 %d %d", 2*m+4095, 3*m+2)
	add("read -v %d 32", 2*m+4080)
	add("read -v %d 32", 5*m+4080)
	// Exactly the largest request, and one byte more.
	add("write -P 0x22 %d %d", 6*m, stockMaxRequest)
	add("write -P 0x23 %d %d", 7*m+512, stockMaxRequest+1)
	add("read -P 0x22 %d %d", 6*m, stockMaxRequest)
	add("read -P 0x23 %d %d", 7*m+512, stockMaxRequest+1)
	// FUA, small and crossing the largest request.
	add("write -f -P 0x31 %d %d", 9*m, 64*k)
	add("write -f -P 0x32 %d %d", 10*m+100, 2*m+300)
	add("read -P 0x31 %d %d", 9*m, 64*k)
	add("read -P 0x32 %d %d", 10*m+100, 2*m+300)
	add("flush")
	// Write-zeroes inside written data, unaligned; with -u the server may
	// unmap the range instead (no NO_HOLE flag).
	add("write -P 0x41 %d %d", 13*m, m)
	add("write -z %d 100000", 13*m+512)
	add("read -P 0x41 %d 512", 13*m)
	add("read -P 0 %d 100000", 13*m+512)
	add("read -P 0x41 %d %d", 13*m+100512, m-100512)
	add("write -P 0x42 %d %d", 15*m, 128*k)
	add("write -z -u %d %d", 15*m+1, 64*k-1)
	add("read -P 0x42 %d 1", 15*m)
	add("read -P 0 %d %d", 15*m+1, 64*k-1)
	add("read -P 0x42 %d %d", 15*m+64*k, 64*k)
	// A long write-zeroes (qemu splits it at the maximum block size too;
	// the nbdsh script sends one longer than 32 MiB whole).
	add("write -z %d %d", 16*m, 33*m)
	add("read -P 0 %d %d", 16*m, 33*m)
	// Discard inside written data, unaligned: the bytes around it stay;
	// the range itself is written again before anything reads it.
	add("write -P 0x51 %d %d", 50*m, m)
	add("discard %d 500000", 50*m+1000)
	add("read -P 0x51 %d 1000", 50*m)
	add("read -P 0x51 %d %d", 50*m+501000, m-501000)
	add("write -P 0x52 %d 500000", 50*m+1000)
	add("read -P 0x52 %d 500000", 50*m+1000)
	add("discard %d %d", 52*m, 4*m)
	add("write -P 0x53 %d %d", 52*m, 4*m)
	add("read -P 0x53 %d %d", 52*m, 4*m)
	// Pipelined writes, then reads, in flight at once (no output unless
	// they fail: their completion order may differ).
	for i := range 8 {
		add("aio_write -q -P 0x%x %d %d", 0x61+i, 57*m+i*300000, 300000)
	}
	add("aio_flush")
	for i := range 8 {
		add("aio_read -q -P 0x%x %d %d", 0x61+i, 57*m+i*300000, 300000)
	}
	add("aio_flush")
	// The end of the disk.
	add("write -P 0x71 %d 4096", stockSize-4096)
	add("write -P 0x72 %d 1", stockSize-1)
	add("read -P 0x71 %d 4095", stockSize-4096)
	add("read -P 0x72 %d 1", stockSize-1)
	add("flush")
	return c
}

// stockQemuIO runs qemu-io's script; its output, but for the timings,
// must agree, and no pattern may fail.
func stockQemuIO(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	args := []string{"-f", "raw", "-d", "unmap", srv.uri}
	for _, c := range stockQemuIOScript() {
		args = append(args, "-c", c)
	}
	out, err := stockCommand(t, e, "qemu-io", args...)
	var lines []string
	for l := range strings.Lines(out) {
		if !strings.Contains(l, " ops; ") { // the timing of each command
			lines = append(lines, l)
		}
	}
	got := strings.Join(lines, "")
	if err != nil || strings.Contains(got, "verification failed") || strings.Contains(got, "error") {
		t.Errorf("%s: qemu-io: %v\n%s", srv.name, err, got)
	}
	return stockResult{vals: map[string]string{"qemu-io output": got}}
}

// stockNbdshScript trims and zeroes 40 MiB at once, then sends requests
// beyond the end of the export, with libnbd's own checks off so that they
// reach the server, and prints whether each failed and with what error;
// the connection must stay usable and the last bytes untouched.
const stockNbdshScript = `
import errno, hashlib, nbd
size = h.get_size()
# A trim and a write-zeroes longer than the storage takes at once (32 MiB).
h.trim(40 << 20, 8 << 20)
h.zero(40 << 20, 8 << 20, nbd.CMD_FLAG_NO_HOLE)
zero = bytes(1 << 20)
print("40 MiB zeroed:", all(h.pread(1 << 20, off) == zero for off in range(8 << 20, 48 << 20, 1 << 20)))
h.set_strict_mode(0)
def attempt(what, f):
    try:
        f()
        print(what, "succeeded")
    except nbd.Error as e:
        print(what, "failed", errno.errorcode.get(e.errno, e.errno))
attempt("read beyond the end", lambda: h.pread(4096, size - 2048))
attempt("read after the end", lambda: h.pread(512, size))
attempt("write beyond the end", lambda: h.pwrite(b"\xee" * 4096, size - 2048))
attempt("write-zeroes beyond the end", lambda: h.zero(4096, size - 2048))
attempt("trim beyond the end", lambda: h.trim(4096, size - 2048))
attempt("flush", lambda: h.flush())
print("last 8 KiB", hashlib.sha256(h.pread(8192, size - 8192)).hexdigest())
`

// stockNbdsh runs stockNbdshScript. Whether each request fails must
// agree; the errors too, but for qemu-nbd's: it answers every request
// beyond the end NBD_EINVAL, where the protocol asks for NBD_ENOSPC for a
// write or write-zeroes (the idc disk and nbdkit answer so).
func stockNbdsh(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	out := stockRun(t, e, srv, "nbdsh", "-u", srv.uri, "-c", stockNbdshScript)
	var outcomes strings.Builder
	for l := range strings.Lines(out) {
		if before, _, ok := strings.Cut(l, " failed "); ok {
			l = before + " failed\n"
		}
		outcomes.WriteString(l)
	}
	vals := map[string]string{"nbdsh outcomes": outcomes.String()}
	if srv.name != "qemu-nbd" {
		vals["nbdsh errors"] = out
	}
	return stockResult{vals: vals}
}

// stockNbdcopyOut copies the whole export to a file with nbdcopy (several
// connections if the server offers multi-conn, many requests in flight);
// the copies, and the files behind the exports, must be equal.
func stockNbdcopyOut(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	out := filepath.Join(e.dir, stockFileName(srv, "copied"))
	stockRun(t, e, srv, "nbdcopy", srv.uri, out)
	files := map[string]string{"copied out": out}
	if srv.backing != "" {
		files["backing file"] = srv.backing
	}
	return stockResult{files: files}
}

// stockNbdcopyIn copies the second image into the export with nbdcopy and
// back out; what comes out must be the image.
func stockNbdcopyIn(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	stockRun(t, e, srv, "nbdcopy", e.second, srv.uri)
	out := filepath.Join(e.dir, stockFileName(srv, "copied-in"))
	stockRun(t, e, srv, "nbdcopy", srv.uri, out)
	compareStockFiles(t, "nbdcopy into the export and out", "second image", e.second, srv.name, out)
	return stockResult{files: map[string]string{"copied in and out": out}}
}

// stockFio runs fio's nbd engine: random writes of 4 KiB to 256 KiB (below
// the idc disk's largest request: the engine does not split), 8 in
// flight, each verified by its crc32c afterwards.
func stockFio(t *testing.T, e *stockEnv, srv stockServer) stockResult {
	ctx, cancel := context.WithTimeout(t.Context(), stockTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", "--name=stock", "--ioengine=nbd", "--uri="+srv.uri,
		"--rw=randwrite", "--bsrange=4k-256k", fmt.Sprintf("--offset=%d", stockFioOffset), fmt.Sprintf("--size=%d", stockFioSize),
		"--iodepth=8", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
		"--output-format=json")
	cmd.Dir, cmd.Env, cmd.WaitDelay = e.dir, stockEnviron(), time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: fio: %v\n%s\n%s", srv.name, err, stderr.Bytes(), out)
	}
	// The nbd engine prints a line before the JSON.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("%s: fio's output: %v\n%s\n%s", srv.name, err, stderr.Bytes(), out)
	}
	j := res.Jobs[0]
	if j.Error != 0 || j.Write.IOBytes != stockFioSize || j.Read.IOBytes != stockFioSize {
		t.Errorf("%s: fio: error %d, wrote %d bytes, verified %d, want %d\n%s", srv.name, j.Error, j.Write.IOBytes, j.Read.IOBytes, stockFioSize, stderr.Bytes())
	}
	return stockResult{vals: map[string]string{"fio error": fmt.Sprint(j.Error),
		"fio bytes written": fmt.Sprint(j.Write.IOBytes), "fio bytes verified": fmt.Sprint(j.Read.IOBytes)}}
}

// compareStock reports where two servers' results of a script disagree.
func compareStock(t *testing.T, sc stockScript, refName string, ref stockResult, name string, got stockResult) {
	t.Helper()
	for _, k := range stockKeys(ref.vals, got.vals) {
		rv, rok := ref.vals[k]
		gv, gok := got.vals[k]
		switch {
		case rok && gok && rv != gv:
			t.Errorf("%s and %s disagree on %s (%s)\n--- %s:\n%s\n--- %s:\n%s", name, refName, k, stockFirstDiff(gv, rv), name, gv, refName, rv)
		case rok != gok && !slices.Contains(sc.optional, k):
			t.Errorf("%s: only one of %s (%v) and %s (%v) reports it", k, name, gok, refName, rok)
		}
	}
	for _, k := range stockKeys(ref.files, got.files) {
		rf, rok := ref.files[k]
		gf, gok := got.files[k]
		switch {
		case rok && gok:
			compareStockFiles(t, k, refName, rf, name, gf)
		case !slices.Contains(sc.optional, k):
			t.Errorf("%s: only one of %s (%v) and %s (%v) has it", k, name, gok, refName, rok)
		}
	}
}

// stockFirstDiff describes the first line where a and b differ.
func stockFirstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(la), len(lb)) {
		if i >= len(la) || i >= len(lb) || la[i] != lb[i] {
			return fmt.Sprintf("first at line %d: %q against %q", i+1, stockLine(la, i), stockLine(lb, i))
		}
	}
	return "no line differs"
}

// stockLine returns lines[i], or "(end)" past the last line.
func stockLine(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return "(end)"
}

// stockKeys returns the keys of a and b, sorted.
func stockKeys(a, b map[string]string) []string {
	var keys []string
	for _, m := range []map[string]string{a, b} {
		for k := range m {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

// compareStockFiles reports whether two files differ, and where: how many
// bytes, the first and the last, and the bytes at the first difference.
func compareStockFiles(t *testing.T, what, nameA, pathA, nameB, pathB string) {
	t.Helper()
	a, err := os.ReadFile(pathA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pathB)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, b) {
		return
	}
	var msg strings.Builder
	fmt.Fprintf(&msg, "%s: %s (%d bytes) and %s (%d bytes) differ", what, nameA, len(a), nameB, len(b))
	first, last, n := -1, -1, 0
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			if first < 0 {
				first = i
			}
			last = i
			n++
		}
	}
	if first >= 0 {
		end := min(first+16, len(a), len(b))
		fmt.Fprintf(&msg, ": %d bytes from byte %d to byte %d; at %d %s has % x, %s has % x",
			n, first, last, first, nameA, a[first:end], nameB, b[first:end])
	}
	t.Error(msg.String())
}

// stockPattern returns size bytes: 64 KiB chunks of pseudo-random bytes
// from seed, every fifth chunk zero (qemu-img and nbdcopy send those as
// write-zeroes).
func stockPattern(seed uint64, size int) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 0x5bd1e995))
	for off := 0; off < size; off += 8 {
		v := r.Uint64()
		if (off>>16)%5 == 2 {
			continue
		}
		for i := range min(8, size-off) {
			b[off+i] = byte(v >> (8 * i))
		}
	}
	return b
}

// stockFileName is the name of a server's copy of something.
func stockFileName(srv stockServer, what string) string {
	return strings.ReplaceAll(srv.name, " ", "-") + "-" + what + ".img"
}

// stockEnviron is the clients' environment: the system's directories first
// in PATH, so that nbdsh runs the system's Python (which has libnbd's
// module).
func stockEnviron() []string {
	return append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
}

// stockCommand runs a client, bounded by stockTimeout, and returns its
// output (stdout and stderr).
func stockCommand(t *testing.T, e *stockEnv, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), stockTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env, cmd.WaitDelay = e.dir, stockEnviron(), time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", err, ctx.Err())
	}
	return string(out), err
}

// stockRun runs a client against srv and fails the test if it fails.
func stockRun(t *testing.T, e *stockEnv, srv stockServer, name string, args ...string) string {
	t.Helper()
	out, err := stockCommand(t, e, name, args...)
	if err != nil {
		t.Fatalf("%s: %s %s: %v\n%s", srv.name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// startQemuNBD starts qemu-nbd serving a raw file of stockSize on a unix
// socket (persistent, up to 8 clients at once, discards punching holes),
// and kills it at the end of the test.
func startQemuNBD(t *testing.T, dir string) stockServer {
	t.Helper()
	img, sock := filepath.Join(dir, "qemu-nbd.img"), filepath.Join(dir, "qemu-nbd.sock")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, stockSize); err != nil {
		t.Fatal(err)
	}
	startStockServer(t, "qemu-nbd", sock, "-f", "raw", "-x", "idc", "--socket="+sock, "--persistent", "--shared=8", "--discard=unmap", img)
	return stockServer{name: "qemu-nbd", uri: "nbd+unix:///idc?socket=" + sock, backing: img}
}

// startNbdkit starts nbdkit's memory plugin of stockSize on a unix socket,
// and kills it at the end of the test.
func startNbdkit(t *testing.T, dir string) stockServer {
	t.Helper()
	sock := filepath.Join(dir, "nbdkit.sock")
	startStockServer(t, "nbdkit", sock, "--foreground", "--exit-with-parent", "--unix", sock, "memory", fmt.Sprint(stockSize))
	return stockServer{name: "nbdkit memory", uri: "nbd+unix:///idc?socket=" + sock}
}

// startStockServer starts a reference server, waits (a bounded poll) until
// its socket accepts connections, and kills it at the end of the test; its
// output goes to the test's log if the test fails.
func startStockServer(t *testing.T, name, sock string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &stockBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, out.String())
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s %s exited (%v) before serving:\n%s", name, strings.Join(args, " "), cmd.ProcessState, out.String())
		case <-ctx.Done():
			t.Fatalf("%s does not serve on %s: %v\n%s", name, sock, err, out.String())
		case <-tick.C:
		}
	}
}

// stockBuffer is a bytes.Buffer safe for a process's output.
type stockBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *stockBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *stockBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// stockApplied counts the storage's apply log by operation ("write",
// "trim", "zero", "refused", ...) and finds the longest of each.
func stockApplied(path string) (map[string][2]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ops := map[string][2]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var a storage.Applied
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return nil, errors.Join(fmt.Errorf("%s: %q", path, sc.Text()), err)
		}
		op := ops[a.Op]
		ops[a.Op] = [2]int{op[0] + 1, max(op[1], int(a.Length))}
	}
	return ops, sc.Err()
}
