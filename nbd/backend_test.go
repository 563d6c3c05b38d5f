package nbd

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestFileBackend serves a file: writes (with and without FUA), zeroes and
// flushes reach the file, reads return it, and trim is not advertised.
func TestFileBackend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{1}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fb, err := NewFileBackend(f)
	if err != nil {
		t.Fatal(err)
	}
	_, rc := connected(t, Config{}, fb)
	steps := []struct {
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload []byte
		errno   uint32
	}{
		{typ: cmdWrite, off: 0, length: 4096, payload: bytes.Repeat([]byte{2}, 4096)},
		{typ: cmdWrite, flags: cmdFlagFUA, off: 4096, length: 4096, payload: bytes.Repeat([]byte{3}, 4096)},
		{typ: cmdWriteZeroes, off: 8192, length: 1 << 20, errno: errnoNoSpc},
		{typ: cmdWriteZeroes, off: 8192, length: 8192},
		{typ: cmdFlush},
		{typ: cmdTrim, off: 0, length: 4096, errno: errnoInval},
		{typ: cmdWrite, off: 1<<20 - 512, length: 1024, payload: make([]byte, 1024), errno: errnoNoSpc},
	}
	for i, st := range steps {
		rc.request(st.typ, st.flags, uint64(i), st.off, st.length, st.payload)
		if cookie, code, _ := rc.reply(nil); cookie != uint64(i) || code != st.errno {
			t.Fatalf("step %d (%s): cookie %d errno %d, want %d", i, commandName(st.typ), cookie, code, st.errno)
		}
	}
	want := bytes.Repeat([]byte{1}, 1<<20)
	copy(want, bytes.Repeat([]byte{2}, 4096))
	copy(want[4096:], bytes.Repeat([]byte{3}, 4096))
	clear(want[8192 : 8192+8192])
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("file contents differ")
	}
	rc.request(cmdRead, 0, 99, 0, 16384, nil)
	if _, code, data := rc.reply(map[uint64]int{99: 16384}); code != 0 || !bytes.Equal(data, want[:16384]) {
		t.Fatalf("read: errno %d", code)
	}
}
