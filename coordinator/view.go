package coordinator

import (
	"encoding/json"
	"sort"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// groupView keeps one group's View current from store events.
type groupView struct {
	view   core.View
	faults map[string]proto.FaultReport // by key
	res    map[string]bool
}

func newGroupView(g string) *groupView {
	return &groupView{view: core.NewView(g), faults: map[string]proto.FaultReport{}, res: map[string]bool{}}
}

// apply folds one key change into the view. del is true for deletions; kv
// carries the key (and, for puts, the value and revision). Malformed
// values are ignored: they cannot have been written by idc.
func (g *groupView) apply(p proto.Parsed, kv *mvccpb.KeyValue, del bool) {
	v := &g.view
	switch p.Kind {
	case proto.KindEpoch:
		var rec proto.EpochRecord
		if del || json.Unmarshal(kv.Value, &rec) != nil {
			v.Epoch, v.EpochRevision = nil, 0
			return
		}
		v.Epoch, v.EpochRevision = &rec, kv.ModRevision
	case proto.KindMembers:
		var m proto.Member
		if del || json.Unmarshal(kv.Value, &m) != nil || m.ID != p.Name {
			delete(v.Live, p.Name)
			return
		}
		v.Live[p.Name] = m
	case proto.KindAcks:
		var a proto.Ack
		if del || json.Unmarshal(kv.Value, &a) != nil {
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
		var f proto.FaultReport
		if del || json.Unmarshal(kv.Value, &f) != nil {
			delete(g.faults, string(kv.Key))
		} else {
			g.faults[string(kv.Key)] = f
		}
		v.Faults = v.Faults[:0]
		keys := make([]string, 0, len(g.faults))
		for k := range g.faults {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v.Faults = append(v.Faults, g.faults[k])
		}
	case proto.KindLeft:
		var l proto.Left
		if del || json.Unmarshal(kv.Value, &l) != nil {
			delete(v.Left, p.Name)
			return
		}
		v.Left[p.Name] = l.Incarnation
	case proto.KindResources:
		if del {
			delete(g.res, p.Name)
		} else {
			g.res[p.Name] = true
		}
		v.Resources = v.Resources[:0]
		for r := range g.res {
			v.Resources = append(v.Resources, r)
		}
		sort.Strings(v.Resources)
	case proto.KindFenceAcks:
		if del {
			delete(v.FenceAcks[p.Epoch], p.Name)
			return
		}
		if v.FenceAcks[p.Epoch] == nil {
			v.FenceAcks[p.Epoch] = map[string]bool{}
		}
		v.FenceAcks[p.Epoch][p.Name] = true
	}
}
