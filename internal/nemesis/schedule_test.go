package nemesis

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Schedule
	}{
		{"kill", Schedule{{Kind: Kill, Target: Active}}},
		{"pause:standby:3s", Schedule{{Kind: Pause, Target: Standby, For: 3 * time.Second}}},
		{"hold-writes:driver-a, partition-store", Schedule{{Kind: HoldWrites, Target: "driver-a"}, {Kind: PartitionStore, Target: Active}}},
		{"partition-disk::700ms", Schedule{{Kind: PartitionDisk, Target: Active, For: 700 * time.Millisecond}}},
		{"restart-storage,restart-storage:storage:1s", Schedule{{Kind: RestartStorage, Target: Storage}, {Kind: RestartStorage, Target: Storage, For: time.Second}}},
	} {
		got, err := Parse(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		// What String writes, Parse reads back.
		if again, err := Parse(got.String()); err != nil || !slices.Equal(again, got) {
			t.Errorf("Parse(%q) = %v, %v; want %v", got.String(), again, err, got)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, in := range []string{"", "kill,", "explode", "kill:active:soon", "kill:active:-1s", "pause:a:1s:2", "hold-writes:active:1s", "restart-storage:driver-a"} {
		if s, err := Parse(in); !errors.Is(err, ErrSchedule) {
			t.Errorf("Parse(%q) = %v, %v; want ErrSchedule", in, s, err)
		}
	}
}

// TestGenerate: a schedule is decided by its seed alone, has the length
// asked, always holds writes once at least (what fencing is for), and
// its durations are at least the kinds' defaults (a pause outlasts the
// lease).
func TestGenerate(t *testing.T) {
	const lease = 2 * time.Second
	seen := map[Kind]bool{}
	for seed := range uint64(200) {
		n := 1 + int(seed%6)
		s := Generate(seed, n, lease)
		if !slices.Equal(s, Generate(seed, n, lease)) {
			t.Fatalf("seed %d: two schedules", seed)
		}
		if len(s) != n {
			t.Fatalf("seed %d: %d steps, want %d", seed, len(s), n)
		}
		if !slices.ContainsFunc(s, func(st Step) bool { return st.Kind == HoldWrites && st.Target == Active }) {
			t.Fatalf("seed %d: %v holds no writes", seed, s)
		}
		for _, st := range s {
			seen[st.Kind] = true
			if d := Defaults(st.Kind, lease); st.For < d || st.For > d+d/2 {
				t.Fatalf("seed %d: %v lasts %v, want %v to %v", seed, st, st.For, d, d+d/2)
			}
		}
		if _, err := Parse(s.String()); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	for _, k := range Kinds() {
		if !seen[k] {
			t.Errorf("no schedule of 200 seeds has %s", k)
		}
	}
	if Defaults(Pause, lease) <= lease || Defaults(PartitionStore, lease) <= lease {
		t.Errorf("a pause or a partition from the store does not outlast the lease")
	}
}
