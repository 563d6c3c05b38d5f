package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/storage"
	"github.com/idc-dev/idc/token"
)

// TestStorageRefusesBadInput: idc storage refuses missing and bad flags,
// and a file too small for --size, with a configuration error that names
// the problem, before it dials the store or touches a file.
func TestStorageRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small.img")
	if err := os.WriteFile(small, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(dir, "odd.img")
	if err := os.WriteFile(odd, make([]byte, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "new.img")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no file", []string{"--size", "1M", "--group", "g"}, "--file is required"},
		{"no group", []string{"--file", fresh, "--size", "1M"}, "--group is required"},
		{"bad group", []string{"--file", fresh, "--size", "1M", "--group", "g,a/b"}, "--group"},
		{"bad resource", []string{"--file", fresh, "--size", "1M", "--group", "g", "--resource", ".x"}, "--resource"},
		{"bad writer", []string{"--file", fresh, "--size", "1M", "--group", "g", "--writer", "a b"}, "--writer"},
		{"unguarded with a writer", []string{"--file", fresh, "--size", "1M", "--group", "g", "--writer", "disk", "--unguarded"}, "--unguarded with --writer"},
		{"bad size", []string{"--file", fresh, "--size", "12X", "--group", "g"}, `--size: "12X" is not a size`},
		{"zero size", []string{"--file", fresh, "--size", "0", "--group", "g"}, "--size 0: want a positive multiple of the block size 4096"},
		{"size not whole blocks", []string{"--file", fresh, "--size", "1000", "--group", "g"}, "--size 1000: want a positive multiple"},
		{"bad block size", []string{"--file", fresh, "--size", "1M", "--group", "g", "--block-size", "1000"}, "--block-size 1000"},
		{"bad listen", []string{"--file", fresh, "--size", "1M", "--group", "g", "--listen", "http://127.0.0.1:1"}, "--listen"},
		{"relative unix listen", []string{"--file", fresh, "--size", "1M", "--group", "g", "--listen", "unix://s.sock"}, "--listen"},
		{"bad max in flight", []string{"--file", fresh, "--size", "1M", "--group", "g", "--max-in-flight", "0"}, "--max-in-flight 0"},
		{"bad procs", []string{"--file", fresh, "--size", "1M", "--group", "g", "--procs", "-1"}, "--procs -1"},
		{"no size for a new file", []string{"--file", fresh, "--group", "g"}, "does not exist: give --size"},
		{"file too small", []string{"--file", small, "--size", "64K", "--group", "g"}, "holds 4096 bytes (4 KiB), fewer than --size 64K (65536 bytes)"},
		{"file not whole blocks", []string{"--file", odd, "--group", "g"}, "holds 5000 bytes, not a whole number of blocks of 4096"},
		{"file a directory", []string{"--file", dir, "--size", "1M", "--group", "g"}, "is not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuffer
			start := time.Now()
			// The store's endpoint answers nothing: a command that dialed
			// would wait for --dial-timeout.
			err := run(context.Background(), &out, append([]string{"storage", "--etcd-endpoints", "http://127.0.0.1:1", "--dial-timeout", "5s"}, tc.args...)...)
			if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrConfig saying %q", err, tc.want)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("refused after %v: it dialed first", el)
			}
		})
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused command created %s", fresh)
	}
	if b, _ := os.ReadFile(small); len(b) != 4096 {
		t.Errorf("a refused command changed %s: %d bytes", small, len(b))
	}
}

// storageClient is a driver's end of a resource connection.
type storageClient struct {
	t       *testing.T
	c       network.Conn
	answers chan block.Answer
}

func dialStorage(t *testing.T, addr string) *storageClient {
	t.Helper()
	type result struct {
		c   network.Conn
		err error
	}
	done := make(chan result, 1)
	network.OS{}.Dial(addr, 5*time.Second, func(c network.Conn, err error) { done <- result{c, err} })
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	cl := &storageClient{t: t, c: res.c, answers: make(chan block.Answer, 16)}
	cl.c.Receive(func(f []byte, err error) {
		if err != nil {
			close(cl.answers)
			return
		}
		a, err := block.ParseAnswer(f)
		if err != nil {
			t.Errorf("an answer that does not parse: %v", err)
			return
		}
		a.Data = slices.Clone(a.Data)
		cl.answers <- a
	})
	t.Cleanup(func() { cl.c.Close() })
	return cl
}

func (cl *storageClient) call(r block.Request) block.Answer {
	cl.t.Helper()
	cl.c.Send(block.AppendRequest(nil, r), nil)
	select {
	case a, ok := <-cl.answers:
		if !ok {
			cl.t.Fatal("the connection ended")
		}
		if a.ID != r.ID {
			cl.t.Fatalf("answer to %d for request %d", a.ID, r.ID)
		}
		return a
	case <-time.After(10 * time.Second):
		cl.t.Fatal("no answer within 10 s")
	}
	return block.Answer{}
}

// TestStorageServes runs idc storage against a real store: it creates the
// file, registers the resource in the group (idc fence list shows it),
// fences at the group's epoch with the writer's reservation and
// acknowledges it, answers requests over a resource connection — the
// writer's write applied, another member's refused, its read admitted —
// writes the address file, and on cancel exits cleanly: the apply log
// flushed, the address file removed, the data in the file.
func TestStorageServes(t *testing.T) {
	for _, listen := range []string{"tcp", "unix"} {
		t.Run(listen, func(t *testing.T) {
			s := newTestStore(t)
			s.put(s.keys.Epoch("g"), string(proto.EncodeEpoch(proto.EpochRecord{
				Group: "g", Number: 1, State: proto.Connected,
				Members: []proto.Member{{ID: "disk", Incarnation: 7}, {ID: "drv-a", Incarnation: 1}},
			})))
			dir, err := os.MkdirTemp("", "idc-storage") // short: for the unix socket
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			file, applyLog, addrFile := filepath.Join(dir, "disk.img"), filepath.Join(dir, "apply.jsonl"), filepath.Join(dir, "addr")
			args := []string{"storage", "--etcd-endpoints", s.endpoint, "--file", file, "--size", "1M", "--group", "g",
				"--writer", "disk", "--apply-log", applyLog, "--address-file", addrFile, "--log-level", "debug"}
			if listen == "unix" {
				args = append(args, "--listen", "unix://"+filepath.Join(dir, "s.sock"))
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out syncBuffer
			done := make(chan error, 1)
			go func() { done <- run(ctx, &out, args...) }()

			var addr string
			deadline := time.Now().Add(20 * time.Second)
			for {
				if b, err := os.ReadFile(addrFile); err == nil {
					addr = strings.TrimSpace(string(b))
					break
				}
				select {
				case err := <-done:
					t.Fatalf("idc storage ended: %v\n%s", err, out.String())
				case <-time.After(10 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("no address file:\n%s", out.String())
				}
			}
			want := `storage: serving ` + file + ` (1 MiB, block 4096) at ` + addr + ` for group g as resource "storage", writes only from disk`
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out.String())
			}
			if !strings.HasPrefix(addr, listen+"://") {
				t.Errorf("address %q, want %s", addr, listen)
			}
			for {
				if val, _ := s.get(s.keys.FenceAck("g", 1, "storage")); val != "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the fence of epoch 1 was never acknowledged:\n%s", out.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if list := s.mustIdc("fence", "list", "g"); !hasLine(list, "storage", "yes", "no", "1", "acked") {
				t.Errorf("idc fence list does not show the resource registered and acked:\n%s", list)
			}

			tok := func(domain string, inc uint64) []byte {
				return token.Token{Group: "g", Epoch: 1, Domain: domain, Incarnation: inc}.Append(nil)
			}
			cl := dialStorage(t, addr)
			data := bytes.Repeat([]byte{0xab}, 4096)
			for _, tc := range []struct {
				name string
				req  block.Request
				want block.Status
			}{
				{"the writer's write", block.Request{Op: block.OpWrite, Flags: block.FlagFUA, Length: 4096, Offset: 8192, ID: 1, Token: tok("disk", 7), Data: data}, block.StatusOK},
				{"another member's write", block.Request{Op: block.OpWrite, Length: 4, Offset: 0, ID: 2, Token: tok("drv-a", 1), Data: []byte("nope")}, block.StatusFenced},
				{"another member's read", block.Request{Op: block.OpRead, Length: 4096, Offset: 8192, ID: 3, Token: tok("drv-a", 1)}, block.StatusOK},
			} {
				if a := cl.call(tc.req); a.Status != tc.want {
					t.Errorf("%s: %s (%s), want %s", tc.name, a.Status, a.Data, tc.want)
				} else if tc.req.Op == block.OpRead && !bytes.Equal(a.Data, data) {
					t.Errorf("%s: not what was written", tc.name)
				}
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("idc storage ended with %v, want nil on interrupt\n%s", err, out.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatal("idc storage did not exit after the interrupt")
			}
			if _, err := os.Stat(addrFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the address file is left: %v", err)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != 1<<20 || !bytes.Equal(b[8192:12288], data) || !bytes.Equal(b[:4], make([]byte, 4)) {
				t.Errorf("the file: %d bytes, the writer's write there: %v, the refused write absent: %v",
					len(b), bytes.Equal(b[8192:12288], data), bytes.Equal(b[:4], make([]byte, 4)))
			}
			lf, err := os.Open(applyLog)
			if err != nil {
				t.Fatal(err)
			}
			defer lf.Close()
			var lines []storage.Applied
			sc := bufio.NewScanner(lf)
			for sc.Scan() {
				var a storage.Applied
				if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
					t.Fatal(err)
				}
				lines = append(lines, a)
			}
			if len(lines) != 3 || lines[0] != (storage.Applied{Op: "fence", Group: "g", Epoch: 1, At: lines[0].At}) ||
				lines[1].Op != "write" || lines[1].ID != 1 || lines[1].Domain != "disk" || lines[1].Group != "g" ||
				lines[2].Op != "refused" || lines[2].Domain != "drv-a" || lines[2].Reason != "not-writer" {
				t.Errorf("apply log %+v, want the fence of 1, write 1, and drv-a's write refused", lines)
			}
		})
	}
}
