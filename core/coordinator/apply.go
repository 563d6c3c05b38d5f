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
// The etcd coordinator and idc status build their views with it; the
// simulator, whose store holds records rather than bytes, calls Fold.
func (v *View) Apply(p proto.Parsed, value []byte, modRev int64, del bool) {
	var rec any
	if !del {
		rec = Decode(p.Kind, value)
	}
	v.Fold(p, rec, modRev)
}

// Decode decodes the value of a key of the given kind (proto.KindEpoch…)
// into the record type Fold takes, or returns nil if it does not decode.
func Decode(kind string, value []byte) any {
	into := func(r any) any {
		if json.Unmarshal(value, r) != nil {
			return nil
		}
		return r
	}
	switch kind {
	case proto.KindEpoch:
		rec, err := proto.DecodeEpoch(value)
		if err != nil {
			return nil
		}
		return &rec
	case proto.KindMembers:
		return deref[proto.Member](into(&proto.Member{}))
	case proto.KindAcks:
		return deref[proto.Ack](into(&proto.Ack{}))
	case proto.KindFaults:
		return deref[proto.FaultReport](into(&proto.FaultReport{}))
	case proto.KindLeft:
		return deref[proto.Left](into(&proto.Left{}))
	case proto.KindResources:
		return proto.Resource{} // presence is what counts
	case proto.KindConfig:
		var c proto.GroupConfig
		if json.Unmarshal(value, &c) != nil || c.Validate() != nil {
			return nil // an invalid configuration counts as none
		}
		return c
	case proto.KindFenceAcks:
		return proto.FenceAck{}
	}
	return nil
}

func deref[T any](r any) any {
	if p, ok := r.(*T); ok {
		return *p
	}
	return nil
}

// Fold folds one decoded record into the view: rec is what Decode returns
// for the key's kind (*proto.EpochRecord, proto.Member, proto.Ack,
// proto.FaultReport, proto.Left, proto.Resource, proto.FenceAck), or nil
// when the key was deleted or its value is not such a record.
func (v *View) Fold(p proto.Parsed, rec any, modRev int64) {
	switch p.Kind {
	case proto.KindEpoch:
		r, ok := rec.(*proto.EpochRecord)
		if !ok {
			v.Epoch, v.EpochRevision = nil, 0
			return
		}
		v.Epoch, v.EpochRevision = r, modRev
	case proto.KindMembers:
		m, ok := rec.(proto.Member)
		if !ok || m.ID != p.Name {
			delete(v.Live, p.Name)
			return
		}
		v.Live[p.Name] = m
	case proto.KindAcks:
		a, ok := rec.(proto.Ack)
		if !ok {
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
		if f, ok := rec.(proto.FaultReport); ok && f.Epoch == p.Epoch && f.Reporter == p.Name && f.Suspect == p.Suspect {
			v.Faults = append(v.Faults, f)
			slices.SortFunc(v.Faults, func(a, b proto.FaultReport) int {
				return cmp.Or(cmp.Compare(a.Epoch, b.Epoch), strings.Compare(a.Reporter, b.Reporter), strings.Compare(a.Suspect, b.Suspect))
			})
		}
	case proto.KindLeft:
		l, ok := rec.(proto.Left)
		if !ok {
			delete(v.Left, p.Name)
			delete(v.LeftRev, p.Name)
			return
		}
		v.Left[p.Name] = l.Incarnation
		v.LeftRev[p.Name] = modRev
	case proto.KindResources:
		i, found := slices.BinarySearch(v.Resources, p.Name)
		switch {
		case rec == nil && found:
			v.Resources = slices.Delete(v.Resources, i, i+1)
		case rec != nil && !found:
			v.Resources = slices.Insert(v.Resources, i, p.Name)
		}
		v.expect()
	case proto.KindConfig:
		c, _ := rec.(proto.GroupConfig)
		v.Config = c
		v.expect()
	case proto.KindFenceAcks:
		if rec == nil {
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
