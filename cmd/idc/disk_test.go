package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idc-dev/idc"
)

// TestDiskBadInput: idc disk refuses bad flags with an error wrapping
// ErrConfig that names the flag, before it listens, dials or prints
// anything. (internal/scenario runs the disk for real.)
func TestDiskBadInput(t *testing.T) {
	dir := t.TempDir()
	notSocket := filepath.Join(dir, "file")
	if err := os.WriteFile(notSocket, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--group", "g", "--size", "64M"}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no group", []string{"--size", "64M"}, "--group is required"},
		{"bad id", append([]string{"--id", "the disk"}, base...), "--id"},
		{"no size", []string{"--group", "g"}, "--size is required"},
		{"bad size", []string{"--group", "g", "--size", "64Q"}, "--size"},
		{"zero size", []string{"--group", "g", "--size", "0"}, "positive multiple of 512"},
		{"unaligned size", []string{"--group", "g", "--size", "1000"}, "positive multiple of 512"},
		{"bad nbd listen", append([]string{"--nbd-listen", "udp://127.0.0.1:1"}, base...), "--nbd-listen"},
		{"relative unix path", append([]string{"--nbd-listen", "unix://disk.sock"}, base...), "--nbd-listen"},
		{"nbd listen not a socket", append([]string{"--nbd-listen", "unix://" + notSocket}, base...), "is not a socket"},
		{"max request", append([]string{"--max-request", "3000"}, base...), "--max-request"},
		{"max request too large", append([]string{"--max-request", "8388608"}, base...), "--max-request"},
		{"timeout", append([]string{"--timeout", "0s"}, base...), "--timeout"},
		{"procs", append([]string{"--procs", "-1"}, base...), "--procs -1"},
		{"paths twice", append([]string{"--paths", "a,a"}, base...), "listed twice"},
		{"paths itself", append([]string{"--paths", "disk"}, base...), "the disk itself"},
		{"lease", append([]string{"--lease-ttl", "1s"}, base...), "lease TTL"},
		{"clock rate", append([]string{"--clock-rate", "0"}, base...), "--clock-rate 0"},
		{"channel listen", append([]string{"--listen", "tcp://nowhere"}, base...), "listen"},
	} {
		var out syncBuffer
		err := run(context.Background(), &out, append([]string{"disk", "--etcd-endpoints", "http://127.0.0.1:1"}, tt.args...)...)
		if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want ErrConfig saying %q", tt.name, err, tt.want)
		}
		if out.String() != "" {
			t.Errorf("%s: printed %q before refusing", tt.name, out.String())
		}
	}
	if b, err := os.ReadFile(notSocket); err != nil || string(b) != "keep me" {
		t.Errorf("the file at --nbd-listen was touched: %q, %v", b, err)
	}
}
