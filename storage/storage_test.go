package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

func tokenOf(e uint64) []byte {
	return token.Token{Group: "disk1", Epoch: e, Domain: "ft", Incarnation: 3}.Append(nil)
}

func open(t *testing.T, size int64) (*Storage, *guard.Guard, *bytes.Buffer) {
	t.Helper()
	g := guard.New(guard.Config{Name: "storage"})
	if err := g.Fence(context.Background(), "disk1", guard.Fence{Epoch: 2, Members: []proto.Ref{{ID: "ft", Incarnation: 3}, {ID: "drv-a", Incarnation: 1}}}); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	s, err := Open(Config{Path: filepath.Join(t.TempDir(), "disk.img"), Size: size, Guard: g, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, g, &log
}

func serve(t *testing.T, s *Storage, r block.Request) block.Answer {
	t.Helper()
	a, err := block.ParseAnswer(s.Serve(context.Background(), block.AppendRequest(nil, r)))
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != r.ID {
		t.Fatalf("answer to %d for request %d", a.ID, r.ID)
	}
	return a
}

// TestServe: writes and reads of the epoch the guard is fenced at are
// applied; a token of an ended epoch is refused and nothing applied; out
// of bounds and malformed requests are refused as invalid; every write
// applied is in the apply log, with its epoch, domain and ID.
func TestServe(t *testing.T) {
	s, g, log := open(t, 1<<20)
	data := bytes.Repeat([]byte("w1"), 2048)
	for _, tc := range []struct {
		name string
		r    block.Request
		want block.Status
	}{
		{"write", block.Request{Op: block.OpWrite, Flags: block.FlagFUA, Length: 4096, Offset: 8192, ID: 1, Token: tokenOf(2), Data: data}, block.StatusOK},
		{"flush", block.Request{Op: block.OpFlush, ID: 2, Token: tokenOf(2)}, block.StatusOK},
		{"zero", block.Request{Op: block.OpZero, Length: 512, Offset: 8192, ID: 3, Token: tokenOf(2)}, block.StatusOK},
		{"stale write", block.Request{Op: block.OpWrite, Length: 4, Offset: 0, ID: 4, Token: tokenOf(1), Data: []byte("old!")}, block.StatusFenced},
		{"ahead", block.Request{Op: block.OpRead, Length: 4, ID: 5, Token: tokenOf(3)}, block.StatusFenced},
		{"past the end", block.Request{Op: block.OpWrite, Length: 4, Offset: 1<<20 - 2, ID: 6, Token: tokenOf(2), Data: []byte("abcd")}, block.StatusInvalid},
		{"offset past the end", block.Request{Op: block.OpRead, Length: 0, Offset: 1<<20 + 1, ID: 7, Token: tokenOf(2)}, block.StatusInvalid},
		{"bad token", block.Request{Op: block.OpRead, Length: 4, ID: 8, Token: []byte{1, 2, 3}}, block.StatusInvalid},
	} {
		if a := serve(t, s, tc.r); a.Status != tc.want {
			t.Errorf("%s: %s (%s), want %s", tc.name, a.Status, a.Data, tc.want)
		}
	}
	a := serve(t, s, block.Request{Op: block.OpRead, Length: 4096, Offset: 8192, ID: 9, Token: tokenOf(2)})
	if want := append(make([]byte, 512), data[512:]...); a.Status != block.StatusOK || !bytes.Equal(a.Data, want) {
		t.Fatalf("read back: %s, %d bytes, equal %v", a.Status, len(a.Data), bytes.Equal(a.Data, want))
	}
	a = serve(t, s, block.Request{Op: block.OpRead, Length: 4, Offset: 0, ID: 10, Token: tokenOf(2)})
	if !bytes.Equal(a.Data, make([]byte, 4)) {
		t.Fatalf("the stale write landed: %q", a.Data)
	}
	if a, err := block.ParseAnswer(s.Serve(context.Background(), []byte("garbage"))); err != nil || a.Status != block.StatusInvalid {
		t.Fatalf("garbage: %+v, %v", a, err)
	}
	// A fence of epoch 3: epoch 2's requests are now refused.
	if err := g.Fence(context.Background(), "disk1", guard.Fence{Epoch: 3, Members: []proto.Ref{{ID: "ft", Incarnation: 3}}}); err != nil {
		t.Fatal(err)
	}
	if a := serve(t, s, block.Request{Op: block.OpWrite, Length: 4, ID: 11, Token: tokenOf(2), Data: []byte("late")}); a.Status != block.StatusFenced || !errors.Is(a.Err(), block.ErrFenced) {
		t.Fatalf("a write of epoch 2 after the fence of 3: %s", a.Status)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var lines []Applied
	sc := bufio.NewScanner(log)
	for sc.Scan() {
		var l Applied
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Op != "refused" { // the refusals' lines: TestApplyLog
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 || lines[0].ID != 1 || lines[0].Op != "write" || lines[0].Epoch != 2 || lines[0].Domain != "ft" || lines[1].ID != 3 || lines[1].Op != "zero" {
		t.Fatalf("apply log %+v, want writes 1 and 3 of epoch 2 by ft", lines)
	}
}

// TestApplyLog: on file and memory backings alike, the apply log records
// every write applied, with its group, and every fence once it holds
// (wired through guard.Config.OnFence), at the times of Config.Now; a
// write refused by the fence never appears; a store reopened on the same
// backing finds what was written.
func TestApplyLog(t *testing.T) {
	for _, backing := range []string{"file", "memory"} {
		t.Run(backing, func(t *testing.T) {
			var (
				st  *Storage
				log bytes.Buffer
				now int64
			)
			g := guard.New(guard.Config{Name: "storage", OnFence: func(group string, f guard.Fence) { st.Fenced(group, f) }})
			cfg := Config{Size: 64 << 10, Guard: g, Log: &log, Now: func() int64 { now++; return now }}
			if backing == "file" {
				cfg.Path = filepath.Join(t.TempDir(), "disk.img")
			} else {
				cfg.Backing = NewMemory(cfg.Size)
			}
			st, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			members := []proto.Ref{{ID: "ft", Incarnation: 3}}
			ctx := context.Background()
			for _, step := range []func(){
				func() { g.Fence(ctx, "disk1", guard.Fence{Epoch: 2, Members: members}) },
				func() {
					serve(t, st, block.Request{Op: block.OpWrite, Length: 4, Offset: 0, ID: 1, Token: tokenOf(2), Data: []byte("new!")})
				},
				func() { g.Fence(ctx, "disk1", guard.Fence{Epoch: 3, Members: members}) },
				func() {
					serve(t, st, block.Request{Op: block.OpWrite, Length: 4, Offset: 0, ID: 2, Token: tokenOf(2), Data: []byte("old!")})
				},
				func() { serve(t, st, block.Request{Op: block.OpTrim, Length: 4, Offset: 8, ID: 3, Token: tokenOf(3)}) },
			} {
				step()
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st.Fenced("disk1", guard.Fence{Epoch: 9}) // after Close: not recorded
			want := `{"op":"fence","group":"disk1","epoch":2,"at":1}
{"op":"write","group":"disk1","epoch":2,"domain":"ft","incarnation":3,"id":1,"offset":0,"length":4,"at":2}
{"op":"fence","group":"disk1","epoch":3,"at":3}
{"op":"refused","group":"disk1","epoch":2,"domain":"ft","incarnation":3,"id":2,"offset":0,"length":4,"at":4,"request":"write","reason":"stale"}
{"op":"trim","group":"disk1","epoch":3,"domain":"ft","incarnation":3,"id":3,"offset":8,"length":4,"at":5}
`
			if log.String() != want {
				t.Fatalf("apply log:\n%s\nwant:\n%s", log.String(), want)
			}
			// Every line decodes as an Applied.
			sc := bufio.NewScanner(&log)
			for sc.Scan() {
				var a Applied
				if err := json.Unmarshal(sc.Bytes(), &a); err != nil || a.Group != "disk1" {
					t.Fatalf("line %s: %+v, %v", sc.Bytes(), a, err)
				}
			}
			// Reopened on the same backing (file or memory): the write of
			// epoch 2 is there, the stale one is not.
			cfg.Log = nil
			st, err = Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if a := serve(t, st, block.Request{Op: block.OpRead, Length: 4, ID: 4, Token: tokenOf(3)}); a.Status != block.StatusOK || string(a.Data) != "new!" {
				t.Fatalf("read after reopening: %s %q", a.Status, a.Data)
			}
		})
	}
}

// TestUnguarded: a store without a guard applies the writes of any epoch,
// an ended one's after a later one's (what fencing prevents), and logs
// each with its token; a malformed token is still invalid.
func TestUnguarded(t *testing.T) {
	var log bytes.Buffer
	now := int64(0)
	st, err := Open(Config{Backing: NewMemory(8192), Size: 8192, Unguarded: true, Log: &log, Now: func() int64 { now++; return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, r := range []block.Request{
		{Op: block.OpWrite, Length: 4, ID: 1, Token: tokenOf(3), Data: []byte("new!")},
		{Op: block.OpWrite, Length: 4, ID: 2, Token: tokenOf(2), Data: []byte("old!")},
	} {
		if a := serve(t, st, r); a.Status != block.StatusOK {
			t.Fatalf("write %d: %s", r.ID, a.Status)
		}
	}
	if a := serve(t, st, block.Request{Op: block.OpRead, Length: 4, ID: 3, Token: tokenOf(1)}); a.Status != block.StatusOK || string(a.Data) != "old!" {
		t.Fatalf("read: %s %q, want the write of the ended epoch, applied last", a.Status, a.Data)
	}
	if a := serve(t, st, block.Request{Op: block.OpWrite, Length: 4, ID: 4, Token: []byte{99, 1, 2}, Data: []byte("bad!")}); a.Status != block.StatusInvalid {
		t.Fatalf("a malformed token: %s, want invalid", a.Status)
	}
	if err := st.FlushLog(); err != nil {
		t.Fatal(err)
	}
	want := `{"op":"write","group":"disk1","epoch":3,"domain":"ft","incarnation":3,"id":1,"offset":0,"length":4,"at":1}
{"op":"write","group":"disk1","epoch":2,"domain":"ft","incarnation":3,"id":2,"offset":0,"length":4,"at":2}
`
	if log.String() != want {
		t.Fatalf("apply log:\n%s\nwant:\n%s", log.String(), want)
	}
}

// TestMemory: memory reads as a file of its size does and never grows.
func TestMemory(t *testing.T) {
	m := NewMemory(8)
	if n, err := m.WriteAt([]byte("abcd"), 6); err == nil || n != 0 {
		t.Fatalf("a write past the end: %d, %v", n, err)
	}
	if _, err := m.WriteAt([]byte("abcd"), 4); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if n, err := m.ReadAt(buf, 4); n != 4 || err != io.EOF || string(buf[:4]) != "abcd" {
		t.Fatalf("a read across the end: %d %q, %v", n, buf[:n], err)
	}
	if n, err := m.ReadAt(buf, 8); n != 0 || err != io.EOF {
		t.Fatalf("a read at the end: %d, %v", n, err)
	}
	if n, err := m.ReadAt(buf[:4], 0); n != 4 || err != nil {
		t.Fatalf("a read within: %d, %v", n, err)
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small.img")
	if err := os.WriteFile(small, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	g := guard.New(guard.Config{})
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no path", Config{Size: 4096, Guard: g}},
		{"memory too small", Config{Backing: NewMemory(4096), Size: 8192, Guard: g}},
		{"no guard", Config{Path: filepath.Join(dir, "a.img"), Size: 4096}},
		{"size not whole blocks", Config{Path: filepath.Join(dir, "b.img"), Size: 5000, Guard: g}},
		{"bad block size", Config{Path: filepath.Join(dir, "c.img"), Size: 4096, BlockSize: 1000, Guard: g}},
		{"file too small", Config{Path: small, Size: 8192, Guard: g}},
		{"a guard and unguarded", Config{Path: filepath.Join(dir, "d.img"), Size: 4096, Guard: g, Unguarded: true}},
	} {
		if _, err := Open(tc.cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", tc.name, err)
		}
	}
	if b, _ := os.ReadFile(small); len(b) != 4096 {
		t.Fatalf("the small file changed: %d bytes", len(b))
	}
}

// fenceLine is a fence's line of the apply log as encoding/json encodes
// it, which appendFence must write.
type fenceLine struct {
	Op    string `json:"op"`
	Group string `json:"group"`
	Epoch uint64 `json:"epoch"`
	At    int64  `json:"at"`
}

// TestApplyLogEncoding: the apply log's lines are written by hand, and
// must be exactly what encoding/json's Encoder writes, for names that
// need escaping too.
func TestApplyLogEncoding(t *testing.T) {
	encode := func(v any) string {
		var b bytes.Buffer
		if err := json.NewEncoder(&b).Encode(v); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	names := []string{"", "disk1", "ft", `a"b`, `back\slash`, "<html>&", "tab\there", "new\nline", "é", "\xff\xfe", "\u2028", "ctl\x01"}
	for i, name := range names {
		for _, a := range []Applied{
			{Op: "write", Group: name, Epoch: 7, Domain: "ft", Inc: 3, ID: 1<<64 - 1, Offset: 4096, Length: 1<<32 - 1, At: -5},
			{Op: "trim", Domain: name, At: 1},
			{Op: "refused", Group: "g", Epoch: 2, Domain: name, Inc: 1, ID: 9, At: 1 << 62, Request: "read", Reason: "stale"},
			{Op: name, Request: name, Reason: name},
		} {
			if got, want := string(appendApplied(nil, &a)), encode(a); got != want {
				t.Errorf("name %d: %+v:\n%s\nwant\n%s", i, a, got, want)
			}
		}
		if got, want := string(appendFence(nil, name, 12, 34)), encode(fenceLine{Op: "fence", Group: name, Epoch: 12, At: 34}); got != want {
			t.Errorf("fence of %q:\n%s\nwant\n%s", name, got, want)
		}
	}
}

// TestAnswerBuffers: answers built in reused buffers, a read's data read
// straight after the header, encode as block.AppendAnswer does.
func TestAnswerBuffers(t *testing.T) {
	var bufs answerBufs
	for _, n := range []int{0, 1, 47, 48, 4096, 65536, 1 << 20} {
		data := bytes.Repeat([]byte{byte(n)}, n)
		for range 2 {
			a := bufs.Get(answerHeader + n)
			putAnswerHeader(a, block.StatusOK, uint64(n), n)
			copy(a[answerHeader:], data)
			if want := block.AppendAnswer(nil, block.Answer{Status: block.StatusOK, ID: uint64(n), Data: data}); !bytes.Equal(a, want) {
				t.Fatalf("%d bytes: % x, want % x", n, a[:answerHeader], want[:answerHeader])
			}
			bufs.Put(a)
		}
		if got := answer(&bufs, block.StatusFenced, 5, "why"); !bytes.Equal(got, block.AppendAnswer(nil, block.Answer{Status: block.StatusFenced, ID: 5, Data: []byte("why")})) {
			t.Fatalf("answer: % x", got)
		}
	}
	// A read served twice through the same buffers sees its own data.
	s, _, _ := open(t, 1<<20)
	serve(t, s, block.Request{Op: block.OpWrite, Length: 4, Offset: 0, ID: 1, Token: tokenOf(2), Data: []byte("abcd")})
	serve(t, s, block.Request{Op: block.OpWrite, Length: 4, Offset: 4, ID: 2, Token: tokenOf(2), Data: []byte("efgh")})
	for i, want := range []string{"abcd", "efgh", "abcd"} {
		var tk guard.Ticket
		r := block.Request{Op: block.OpRead, Length: 4, Offset: uint64(4 * (i % 2)), ID: 3, Token: tokenOf(2)}
		b, st := s.serve(r, &tk, &bufs)
		a, err := block.ParseAnswer(b)
		if err != nil || st != block.StatusOK || string(a.Data) != want {
			t.Fatalf("read %d: %s %q %v, want %q", i, st, a.Data, err, want)
		}
		bufs.Put(b)
	}
}

// TestOpenApplyLog: a last line cut short (a store killed mid-write) is
// cut off, whole lines are kept, and appends follow them.
func TestOpenApplyLog(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 5000) // longer than one backward read
	for _, tc := range []struct {
		name, in, want string
		dropped        int64
	}{
		{"new", "", "", 0},
		{"whole lines", "a\nb\n", "a\nb\n", 0},
		{"cut short", "a\nb\n{\"op\":\"wr", "a\nb\n", 9},
		{"only a partial line", "{\"op", "", 4},
		{"a long last line", "a\n" + string(long), "a\n", 5000},
		{"a long whole line", string(long) + "\n", string(long) + "\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "apply.log")
			if tc.in != "" {
				if err := os.WriteFile(path, []byte(tc.in), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			f, dropped, err := OpenApplyLog(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("next\n"); err != nil {
				t.Fatal(err)
			}
			f.Close()
			got, _ := os.ReadFile(path)
			if string(got) != tc.want+"next\n" || dropped != tc.dropped {
				t.Fatalf("got %q, dropped %d; want %q, dropped %d", got, dropped, tc.want+"next\n", tc.dropped)
			}
		})
	}
}
