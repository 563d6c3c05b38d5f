// Package nemesis injects faults into the storage scenario's real
// processes (package scenario) on a schedule, generated from a seed or
// given, and logs each fault with its time: partitions of a driver domain
// from the disk, from the storage or from the store, a driver paused past
// its lease, a driver killed, a driver's lease clock skewed within ρ and
// beyond it, the storage restarted, the active coordinator crashed in the
// middle of an epoch change, and a driver's forwarded writes held in the
// network and released after the failover — the design's own example of
// why fencing exists.
package nemesis

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Kind is a kind of fault.
type Kind string

// The kinds of fault. Each targets a driver domain (Step.Target) and
// lasts Step.For before it heals.
const (
	// Kill kills the driver (SIGKILL) and starts it again after For.
	Kill Kind = "kill"
	// Pause stops the driver (SIGSTOP) for For, by default past its
	// lease, then resumes it (SIGCONT): it finds itself fenced out and
	// joins again as a new incarnation.
	Pause Kind = "pause"
	// PartitionDisk holds every byte between the disk and the driver (its
	// channel) for For, then releases them.
	PartitionDisk Kind = "partition-disk"
	// PartitionStorage holds every byte between the driver and the
	// storage for For, then releases them: requests it forwarded arrive
	// late.
	PartitionStorage Kind = "partition-storage"
	// PartitionStore holds every byte between the driver and the store
	// for For: its lease runs out and it fences itself.
	PartitionStore Kind = "partition-store"
	// HoldWrites holds the requests the driver forwards to the storage
	// (its answers still come back) until the disk, its requests
	// unanswered, has failed over to the other driver and every block
	// has a newer acknowledged write; then it releases them. A guarded
	// storage refuses them; an unguarded one applies them over newer
	// data: stale writes.
	HoldWrites Kind = "hold-writes"
	// RestartStorage kills the storage (SIGKILL) and starts it again
	// after For, on the same file and apply log; its target is always
	// the storage. Until it is back every path fails; it fences again
	// before it admits anything.
	RestartStorage Kind = "restart-storage"
	// CrashCoordinator crashes the active coordinator in the middle of an
	// epoch change: it holds the storage (SIGSTOP, so that a fence-mode
	// change cannot complete), kills the driver the disk uses, waits for
	// the next epoch's quiescing record, kills the active coordinator
	// (SIGKILL) and resumes the storage; after For it starts both again.
	// A standby coordinator, once the crashed one's election lease ran
	// out, completes the change. It needs the scenario's coordinators as
	// processes (scenario.Config.Coordinators, at least two).
	CrashCoordinator Kind = "crash-coordinator"
	// ClockSkew sets the driver's clock running at SkewWithin of real
	// time (within ρ; scenario.SetClockRate) and partitions it from the
	// store for For, past its lease; ClockSkewBeyond does the same at
	// SkewBeyond, a clock so slow that the driver believes its lease
	// valid long after the coordinator counts it gone — what fencing at
	// the storage covers. Healing releases it and sets its clock true.
	ClockSkew       Kind = "clock-skew"
	ClockSkewBeyond Kind = "clock-skew-beyond"
)

// The clock rates of ClockSkew and ClockSkewBeyond: half of the
// coordinator's default ρ (0.01) slow, and half speed.
const (
	SkewWithin = 0.995
	SkewBeyond = 0.5
)

// Storage is the target of RestartStorage.
const Storage = "storage"

// Kinds returns every kind of fault.
func Kinds() []Kind {
	return []Kind{Kill, Pause, PartitionDisk, PartitionStorage, PartitionStore, HoldWrites, RestartStorage, CrashCoordinator, ClockSkew, ClockSkewBeyond}
}

// ErrSchedule is wrapped by the errors of a schedule that does not parse.
var ErrSchedule = errors.New("nemesis: bad schedule")

// Targets of a step, besides a driver's name.
const (
	// Active is the driver the disk uses when the step begins.
	Active = "active"
	// Standby is the other driver.
	Standby = "standby"
)

// Step is one fault of a schedule.
type Step struct {
	Kind Kind
	// Target is Active, Standby or a driver's name.
	Target string
	// For is how long the fault lasts before it heals; zero: the kind's
	// default (Defaults).
	For time.Duration
}

// Schedule is a sequence of faults, injected one after the other: each
// once the group has recovered from the one before (every driver back in
// the disk's epoch, writes acknowledged again).
type Schedule []Step

// Defaults returns the duration of a kind of fault when a step leaves it
// zero, for members of the given lease: a pause and a partition from the
// store outlast the lease; a partition from the storage lasts a lease,
// past the disk's request timeout (the scenario's is half a lease); one
// from the disk outlasts the channel's fault detection; a killed driver
// stays down briefly.
func Defaults(k Kind, lease time.Duration) time.Duration {
	switch k {
	case Pause, PartitionStore, ClockSkew, ClockSkewBeyond:
		return lease + lease/4
	case PartitionStorage:
		return lease
	case PartitionDisk:
		return 500 * time.Millisecond
	case Kill, RestartStorage, CrashCoordinator:
		return 300 * time.Millisecond
	}
	return 0 // HoldWrites: until the failover
}

// String formats s as Parse reads it.
func (s Schedule) String() string {
	parts := make([]string, len(s))
	for i, st := range s {
		parts[i] = string(st.Kind) + ":" + st.Target
		if st.For > 0 {
			parts[i] += ":" + st.For.String()
		}
	}
	return strings.Join(parts, ",")
}

// Parse reads a schedule: steps separated by commas, each
// KIND[:TARGET[:DURATION]] (target default Active — restart-storage's is
// always Storage — duration default the kind's), e.g.
// "kill,pause:standby:3s,hold-writes:driver-a,restart-storage".
func Parse(text string) (Schedule, error) {
	var s Schedule
	for i, part := range strings.Split(text, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("%w: step %d is empty", ErrSchedule, i+1)
		}
		f := strings.Split(part, ":")
		if len(f) > 3 {
			return nil, fmt.Errorf("%w: step %d %q: want KIND[:TARGET[:DURATION]]", ErrSchedule, i+1, part)
		}
		st := Step{Kind: Kind(f[0]), Target: Active}
		if !slices.Contains(Kinds(), st.Kind) {
			return nil, fmt.Errorf("%w: step %d: unknown fault %q (want one of %s)", ErrSchedule, i+1, f[0], kindList())
		}
		if len(f) > 1 && f[1] != "" {
			st.Target = f[1]
		}
		if st.Kind == RestartStorage {
			if len(f) > 1 && f[1] != "" && f[1] != Storage {
				return nil, fmt.Errorf("%w: step %d: restart-storage targets the storage, not %q", ErrSchedule, i+1, f[1])
			}
			st.Target = Storage
		}
		if len(f) > 2 {
			d, err := time.ParseDuration(f[2])
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%w: step %d: duration %q (want a positive duration such as 500ms)", ErrSchedule, i+1, f[2])
			}
			if st.Kind == HoldWrites {
				return nil, fmt.Errorf("%w: step %d: hold-writes lasts until the failover, it takes no duration", ErrSchedule, i+1)
			}
			st.For = d
		}
		s = append(s, st)
	}
	return s, nil
}

func kindList() string {
	var names []string
	for _, k := range Kinds() {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}

// Generate returns a schedule of n steps (at least one) drawn from seed:
// each a fault of a random kind against the active driver (now and then
// the standby), with its default duration stretched by up to half. One
// step, at a random place, is always HoldWrites against the active
// driver: every generated schedule shows what fencing is for.
func Generate(seed uint64, n int, lease time.Duration) Schedule {
	n = max(n, 1)
	r := rand.New(rand.NewPCG(seed, 0x1dc))
	s := make(Schedule, n)
	kinds := Kinds()
	for i := range s {
		k := kinds[r.IntN(len(kinds))]
		st := Step{Kind: k, Target: Active}
		switch {
		case k == RestartStorage:
			st.Target = Storage
		case k != HoldWrites && r.IntN(5) == 0:
			st.Target = Standby
		}
		if d := Defaults(k, lease); d > 0 {
			st.For = d + time.Duration(r.Int64N(int64(d/2)+1)).Round(time.Millisecond)
		}
		s[i] = st
	}
	if !slices.ContainsFunc(s, func(st Step) bool { return st.Kind == HoldWrites }) {
		s[r.IntN(n)] = Step{Kind: HoldWrites, Target: Active}
	}
	return s
}
