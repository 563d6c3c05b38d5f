package main

import (
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/inspect"
	"github.com/idc-dev/idc/proto"
)

// TestWriteStatusChannels: the table shows each domain's channel address
// in its own column, "-" for none, and quotes an address that would break
// the table.
func TestWriteStatusChannels(t *testing.T) {
	var b strings.Builder
	writeStatus(&b, inspect.Group{
		Name: "g", Revision: 9, Epoch: 4, State: proto.Quiescing, Mode: proto.ModeLease, PrevEpoch: 3,
		Domains: []inspect.Member{
			{ID: "a", Incarnation: "1", Role: inspect.RoleSurvivor, Live: true, LeaseLeftMs: 2000, Acked: true, Addr: "tcp://127.0.0.1:4001"},
			{ID: "b", Incarnation: "2", Role: inspect.RoleSurvivor, Live: true, LeaseLeftMs: 1000},
			{ID: "c", Incarnation: "3", Role: inspect.RoleDeparted, LeaseLeftMs: -1, Left: true, Addr: "unix:///run/idc/c.sock"},
			{ID: "d", Incarnation: "4", Role: inspect.RoleJoiner, Live: true, LeaseLeftMs: 2000, Addr: "unix:///tmp/a b\n"},
		},
	})
	t.Log("\n" + b.String())
	want := map[string][]string{
		"DOMAIN": {"DOMAIN", "INCARNATION", "ROLE", "LEASE", "LEFT", "CHANNEL", "NOTE"},
		"a":      {"a", "1", "survivor", "2s", "tcp://127.0.0.1:4001", "acked"},
		"b":      {"b", "2", "survivor", "1s", "-", "ack", "pending"},
		"c":      {"c", "3", "departed", "gone", "unix:///run/idc/c.sock", "left"},
		"d":      {"d", "4", "joiner", "2s", `"unix:///tmp/a`, `b\n"`},
	}
	seen := 0
	for _, line := range strings.Split(b.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || want[f[0]] == nil {
			continue
		}
		seen++
		if strings.Join(f, " ") != strings.Join(want[f[0]], " ") {
			t.Errorf("line %q: fields %q, want %q", line, f, want[f[0]])
		}
	}
	if seen != len(want) {
		t.Errorf("table has %d of the %d expected lines", seen, len(want))
	}
	// Every row's CHANNEL starts where its header does.
	lines := strings.Split(b.String(), "\n")
	col := -1
	for _, line := range lines {
		if i := strings.Index(line, "CHANNEL"); i >= 0 {
			col = i
		}
	}
	for _, line := range lines {
		if f := strings.Fields(line); len(f) > 0 && want[f[0]] != nil && f[0] != "DOMAIN" && (len(line) <= col || line[col-1] != ' ' || line[col] == ' ') {
			t.Errorf("line %q: channel not in the CHANNEL column (at %d)", line, col)
		}
	}
}

func TestPendingFor(t *testing.T) {
	now := time.UnixMilli(1_764_131_000_000)
	for _, tc := range []struct {
		written int64
		want    string
	}{
		{0, ""},
		{now.UnixMilli() - 3250, ", pending for 3.3s (since the record was written)"},
		{now.UnixMilli() + 5000, ", pending for 0s (since the record was written)"}, // a clock ahead
		{now.UnixMilli() - 2*3600*1000, ", pending for 2h0m0s (since the record was written)"},
	} {
		if got := pendingFor(tc.written, now); got != tc.want {
			t.Errorf("pendingFor(%d): %q, want %q", tc.written, got, tc.want)
		}
	}
}
