package coordinator

import (
	"fmt"
	"testing"
	"time"

	"github.com/idc-dev/idc/proto"
)

// BenchmarkUpdateOneAck is the coordinator's work per quiesce
// acknowledgement while 100 survivors acknowledge an epoch one by one (one
// watch event each): the driver hands in the view and the machine decides
// there is nothing to do yet.
func BenchmarkUpdateOneAck(b *testing.B) {
	for _, n := range []int{3, 100} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			m := New(Config{Group: "g", QuiesceTimeout: time.Hour})
			v := NewView("g")
			var ms []proto.Member
			for i := range n {
				mem := proto.Member{ID: fmt.Sprintf("m%03d", i), Incarnation: uint64(i + 1), TTL: 5 * time.Second}
				ms = append(ms, mem)
				v.Live[mem.ID] = mem
			}
			x := proto.Member{ID: "x", Incarnation: 999, TTL: 5 * time.Second}
			v.Live["x"] = x
			all := proto.SortMembers(append(append([]proto.Member{}, ms...), x))
			v.Epoch = &proto.EpochRecord{Group: "g", Number: 5, State: proto.Quiescing, Members: all, Prev: ms, PrevNumber: 4}
			v.EpochRevision = 10
			v.Acks[5] = map[string]uint64{}
			m.Update(v, 0)
			m.Ready()
			i := 0
			for b.Loop() {
				mem := ms[i%(n-1)] // never the last survivor: no connect
				v.Acks[5][mem.ID] = mem.Incarnation
				i++
				m.Update(v, time.Duration(i))
				if len(m.Ready()) != 0 {
					b.Fatal("unexpected action")
				}
				m.NextDeadline()
			}
		})
	}
}
