package coordinator

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"

	"github.com/idc-dev/idc/proto"
)

// Apply folds one change of a key under the view's group into the view: p
// is the key taken apart by proto.Keys.Parse, value the record stored (for
// puts), modRev the key's mod revision and del whether the key was deleted.
// Values that do not decode are treated as absent: idc did not write them.
// Drivers (the etcd coordinator, the simulator, idc status) all build their
// views with it, so they agree on what the store holds.
func (v *View) Apply(p proto.Parsed, value []byte, modRev int64, del bool) {
	decode := func(into any) bool { return !del && json.Unmarshal(value, into) == nil }
	switch p.Kind {
	case proto.KindEpoch:
		var rec proto.EpochRecord
		if !decode(&rec) {
			v.Epoch, v.EpochRevision = nil, 0
			return
		}
		v.Epoch, v.EpochRevision = &rec, modRev
	case proto.KindMembers:
		var m proto.Member
		if !decode(&m) || m.ID != p.Name {
			delete(v.Live, p.Name)
			return
		}
		v.Live[p.Name] = m
	case proto.KindAcks:
		var a proto.Ack
		if !decode(&a) {
			delete(v.Acks[p.Epoch], p.Name)
			if len(v.Acks[p.Epoch]) == 0 {
				delete(v.Acks, p.Epoch)
			}
			return
		}
		if v.Acks[p.Epoch] == nil {
			v.Acks[p.Epoch] = map[string]uint64{}
		}
		v.Acks[p.Epoch][p.Name] = a.Incarnation
	case proto.KindFaults:
		v.Faults = slices.DeleteFunc(v.Faults, func(f proto.FaultReport) bool {
			return f.Epoch == p.Epoch && f.Reporter == p.Name && f.Suspect == p.Suspect
		})
		var f proto.FaultReport
		if decode(&f) && f.Epoch == p.Epoch && f.Reporter == p.Name && f.Suspect == p.Suspect {
			v.Faults = append(v.Faults, f)
			slices.SortFunc(v.Faults, func(a, b proto.FaultReport) int {
				return cmp.Or(cmp.Compare(a.Epoch, b.Epoch), strings.Compare(a.Reporter, b.Reporter), strings.Compare(a.Suspect, b.Suspect))
			})
		}
	case proto.KindLeft:
		var l proto.Left
		if !decode(&l) {
			delete(v.Left, p.Name)
			return
		}
		v.Left[p.Name] = l.Incarnation
	case proto.KindResources:
		i, found := slices.BinarySearch(v.Resources, p.Name)
		switch {
		case del && found:
			v.Resources = slices.Delete(v.Resources, i, i+1)
		case !del && !found:
			v.Resources = slices.Insert(v.Resources, i, p.Name)
		}
	case proto.KindFenceAcks:
		if del {
			delete(v.FenceAcks[p.Epoch], p.Name)
			if len(v.FenceAcks[p.Epoch]) == 0 {
				delete(v.FenceAcks, p.Epoch)
			}
			return
		}
		if v.FenceAcks[p.Epoch] == nil {
			v.FenceAcks[p.Epoch] = map[string]bool{}
		}
		v.FenceAcks[p.Epoch][p.Name] = true
	}
}
