// Package proto holds the records idc keeps in its store and the key layout
// under which it keeps them. It is pure data: no I/O, no clocks. The
// coordinator and member state machines (package core/...) read and produce
// these records; the drivers encode them into etcd.
package proto

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// State is the state of an epoch record.
type State string

const (
	// Quiescing means the epoch has been decided but its surviving members
	// may still be quiescing the epoch before it.
	Quiescing State = "quiescing"
	// Connected means every survivor has quiesced the previous epoch and
	// every departed member has been handled: the epoch is live.
	Connected State = "connected"
)

// Mode says how a group handles members that depart an epoch while they may
// still be running (DESIGN §4 step 3).
type Mode string

const (
	// ModeLease waits until the departed member's lease has certainly run out.
	ModeLease Mode = "lease"
	// ModeFence has every resource of the group apply the fence of the new
	// epoch and acknowledge it.
	ModeFence Mode = "fence"
	// ModeBoth does both.
	ModeBoth Mode = "both"
)

// Valid reports whether m is one of the known modes.
func (m Mode) Valid() bool { return m == ModeLease || m == ModeFence || m == ModeBoth }

// UsesLease reports whether departed members are waited out by lease.
func (m Mode) UsesLease() bool { return m == ModeLease || m == ModeBoth }

// UsesFence reports whether departed members are fenced at resources.
func (m Mode) UsesFence() bool { return m == ModeFence || m == ModeBoth }

// Ref names one incarnation of a domain.
type Ref struct {
	ID          string `json:"id"`
	Incarnation uint64 `json:"incarnation"`
}

func (r Ref) String() string { return fmt.Sprintf("%s/%x", r.ID, r.Incarnation) }

// Member is a domain's membership in a group, as it registers it in the
// store. The record lives under the member's lease for that group, so it
// vanishes when the lease expires or is revoked.
type Member struct {
	ID          string `json:"id"`
	Incarnation uint64 `json:"incarnation"`
	// Lease is the etcd lease ID of this membership.
	Lease int64 `json:"lease"`
	// TTL is the lease's time to live as granted by the store.
	TTL time.Duration `json:"ttl"`
	// Priority breaks ties in topology determination: when two members
	// report each other, the one of higher priority stays.
	Priority int `json:"priority,omitempty"`
	// Addr is where the member accepts channels ("tcp://host:port",
	// "unix:///path"); empty if it accepts none. Peers read it from the
	// epoch record and dial it.
	Addr string `json:"addr,omitempty"`
}

// Ref returns the member's incarnation reference.
func (m Member) Ref() Ref { return Ref{ID: m.ID, Incarnation: m.Incarnation} }

// EpochRecord is the single record per group that the coordinator
// compare-and-swaps to decide epochs.
type EpochRecord struct {
	Group  string `json:"group"`
	Number uint64 `json:"number"`
	State  State  `json:"state"`
	Mode   Mode   `json:"mode"`
	// Members of this epoch, sorted by ID.
	Members []Member `json:"members"`
	// PrevNumber and Prev name the last connected epoch and its members while
	// this epoch is quiescing; both are empty once it is connected.
	PrevNumber uint64   `json:"prev_number,omitempty"`
	Prev       []Member `json:"prev,omitempty"`
	// Excluded lists incarnations dropped by topology determination whose
	// membership may still be live; they are never admitted again.
	Excluded []Member `json:"excluded,omitempty"`
	// Reason says, for people, what triggered the epoch.
	Reason string `json:"reason,omitempty"`
	// WrittenMillis is when the coordinator wrote the record, by its
	// host's wall clock (Unix milliseconds), for people and tools: how
	// long a quiescing epoch has waited. The protocol never reads it
	// (hosts' wall clocks differ).
	WrittenMillis int64 `json:"written_ms,omitempty"`
}

// Find returns the member with the given ID, if any.
func Find(ms []Member, id string) (Member, bool) {
	// Records keep their members sorted by ID: a binary search finds one
	// of a thousand in ten steps. An unsorted list is still searched whole.
	if i, ok := slices.BinarySearchFunc(ms, id, func(m Member, id string) int { return strings.Compare(m.ID, id) }); ok {
		return ms[i], true
	}
	for _, m := range ms {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// Contains reports whether ms holds exactly the incarnation r.
func Contains(ms []Member, r Ref) bool {
	m, ok := Find(ms, r.ID)
	return ok && m.Incarnation == r.Incarnation
}

// RefSet is a set of incarnations.
type RefSet map[Ref]struct{}

// Set returns the incarnations of ms as a set.
func Set(ms []Member) RefSet {
	s := make(RefSet, len(ms))
	for _, m := range ms {
		s[m.Ref()] = struct{}{}
	}
	return s
}

// Has reports whether r is in s.
func (s RefSet) Has(r Ref) bool { _, ok := s[r]; return ok }

// Survivors returns the members of the last connected epoch that are also
// members of this one: they must acknowledge quiesce before it connects.
func (r *EpochRecord) Survivors() []Member {
	if len(r.Prev) == 0 {
		return nil
	}
	return intersect(r.Members, r.Prev, true)
}

// Departed returns the members of the last connected epoch that are not
// members of this one: they must be proven stopped or fenced before it
// connects.
func (r *EpochRecord) Departed() []Member {
	if len(r.Prev) == 0 {
		return nil
	}
	return intersect(r.Prev, r.Members, false)
}

// intersect returns the members of a whose incarnation is (in true) or is
// not (in false) in b, in a's order. Records keep their lists sorted by ID,
// which makes this a merge without allocating a set; other lists take the
// general path.
func intersect(a, b []Member, in bool) []Member {
	var out []Member
	if !sortedByID(a) || !sortedByID(b) {
		bs := Set(b)
		for _, m := range a {
			if bs.Has(m.Ref()) == in {
				out = append(out, m)
			}
		}
		return out
	}
	j := 0
	for _, m := range a {
		for j < len(b) && b[j].ID < m.ID {
			j++
		}
		found := j < len(b) && b[j].ID == m.ID && b[j].Incarnation == m.Incarnation
		if found == in {
			out = append(out, m)
		}
	}
	return out
}

// sortedByID reports whether ms is sorted by ID, without repeated IDs.
func sortedByID(ms []Member) bool {
	for i := 1; i < len(ms); i++ {
		if ms[i-1].ID >= ms[i].ID {
			return false
		}
	}
	return true
}

// SameMembers reports whether a and b name the same incarnations.
func SameMembers(a, b []Member) bool {
	if len(a) != len(b) {
		return false
	}
	if sortedByID(a) && sortedByID(b) {
		for i := range a {
			if a[i].ID != b[i].ID || a[i].Incarnation != b[i].Incarnation {
				return false
			}
		}
		return true
	}
	bs := Set(b)
	for _, m := range a {
		if !bs.Has(m.Ref()) {
			return false
		}
	}
	return true
}

// SortMembers sorts ms by ID in place and returns it.
func SortMembers(ms []Member) []Member {
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return ms
}

// IDs returns the IDs of ms, in order.
func IDs(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// Ack is a survivor's acknowledgement that it has quiesced every operation
// of every epoch before Epoch.
type Ack struct {
	Epoch       uint64 `json:"epoch"`
	ID          string `json:"id"`
	Incarnation uint64 `json:"incarnation"`
}

// FaultReport says that Reporter lost its peer Suspect while connected in
// Epoch. It names the suspect's incarnation too: a report against one
// incarnation never drops the next one of the same domain.
type FaultReport struct {
	Epoch               uint64 `json:"epoch"`
	Reporter            string `json:"reporter"`
	ReporterIncarnation uint64 `json:"reporter_incarnation"`
	Suspect             string `json:"suspect"`
	SuspectIncarnation  uint64 `json:"suspect_incarnation"`
}

// Left is written by a member that left gracefully after quiescing: that
// incarnation will do nothing more in the group, so the coordinator need not
// wait its lease out.
type Left struct {
	ID          string `json:"id"`
	Incarnation uint64 `json:"incarnation"`
}

// FenceAck is a resource guard's acknowledgement that it applied the fence
// of Epoch: it refuses every request with an older token from then on.
type FenceAck struct {
	Epoch    uint64 `json:"epoch"`
	Resource string `json:"resource"`
}

// GroupConfig is a group's configuration, written by an operator (idc
// group set) and read by the coordinator; a field left zero takes the
// coordinator's default.
type GroupConfig struct {
	// Mode is how departed members are handled (ModeLease, ModeFence,
	// ModeBoth).
	Mode Mode `json:"mode,omitempty"`
	// QuiesceTimeoutMillis is how long survivors have to acknowledge
	// quiesce before they are dropped, in milliseconds.
	QuiesceTimeoutMillis int64 `json:"quiesce_timeout_ms,omitempty"`
	// Resources are the guarded resources expected in the group: in fence
	// modes every change waits for each one's fence acknowledgement, as
	// for every resource registered, even before it has registered.
	Resources []string `json:"resources,omitempty"`
}

// Validate checks the configuration.
func (c GroupConfig) Validate() error {
	if c.Mode != "" && !c.Mode.Valid() {
		return fmt.Errorf("%w: mode %q (want lease, fence or both)", ErrConfig, c.Mode)
	}
	if c.QuiesceTimeoutMillis < 0 {
		return fmt.Errorf("%w: quiesce timeout %d ms", ErrConfig, c.QuiesceTimeoutMillis)
	}
	for _, r := range c.Resources {
		if err := CheckName("resource", r); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	return nil
}

// Resource registers a guarded resource in a group.
type Resource struct {
	Name string `json:"name"`
}
