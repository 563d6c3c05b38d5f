package coordinator

import (
	"github.com/idc-dev/idc/proto"
	"slices"
)

// View is what the coordinator knows of one group's keys in the store at a
// revision. The driver keeps it current from a watch and hands it over
// whole: the machine is level-triggered, so a coordinator that takes over
// from a crashed one needs nothing but the view.
type View struct {
	Group string
	// Epoch is the group's epoch record, nil if none was ever written, and
	// EpochRevision the etcd mod revision of its key (0 if absent): the
	// compare-and-swap condition of the next write.
	Epoch         *proto.EpochRecord
	EpochRevision int64
	// Live holds the member records present, by domain ID.
	Live map[string]proto.Member
	// Acks holds quiesce acknowledgements: epoch → domain → incarnation.
	Acks map[uint64]map[string]uint64
	// Faults holds the fault reports present.
	Faults []proto.FaultReport
	// Left holds graceful-leave markers: domain → incarnation, and
	// LeftRev each marker's mod revision.
	Left    map[string]uint64
	LeftRev map[string]int64
	// Resources holds the guarded resources registered in the group.
	Resources []string
	// Config is the group's configuration (zero: none written).
	Config proto.GroupConfig
	// Expected is every resource whose fence acknowledgement a change
	// waits for in fence modes: those registered and those the
	// configuration expects, sorted.
	Expected []string
	// FenceAcks holds fence acknowledgements: epoch → resource names.
	FenceAcks map[uint64]map[string]bool
}

// NewView returns an empty view of group g.
func NewView(g string) View {
	return View{
		Group:     g,
		Live:      map[string]proto.Member{},
		Acks:      map[uint64]map[string]uint64{},
		Left:      map[string]uint64{},
		LeftRev:   map[string]int64{},
		FenceAcks: map[uint64]map[string]bool{},
	}
}

// live reports whether the member record of incarnation r is present.
func (v *View) live(r proto.Ref) bool {
	m, ok := v.Live[r.ID]
	return ok && m.Incarnation == r.Incarnation
}

// acked reports whether incarnation r acknowledged quiesce for epoch e.
func (v *View) acked(e uint64, r proto.Ref) bool {
	inc, ok := v.Acks[e][r.ID]
	return ok && inc == r.Incarnation
}

// left reports whether incarnation r left gracefully.
func (v *View) left(r proto.Ref) bool {
	inc, ok := v.Left[r.ID]
	return ok && inc == r.Incarnation
}

// expect recomputes Expected.
func (v *View) expect() {
	v.Expected = append(append(v.Expected[:0], v.Resources...), v.Config.Resources...)
	slices.Sort(v.Expected)
	v.Expected = slices.Compact(v.Expected)
}

// fenced reports whether every expected resource acknowledged the fence
// of epoch e.
func (v *View) fenced(e uint64) bool {
	for _, r := range v.Expected {
		if !v.FenceAcks[e][r] {
			return false
		}
	}
	return true
}
