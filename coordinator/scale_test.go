package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdGroups is a real embedded etcd with a coordinator and groups written
// straight into it, the members played by the benchmark itself: what is
// measured is the coordinator and the store, not member drivers.
type etcdGroups struct {
	b    *testing.B
	cli  *clientv3.Client
	keys proto.Keys
}

func jsonOf(b *testing.B, v any) string {
	buf, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	return string(buf)
}

func benchMember(id string) proto.Member {
	return proto.Member{ID: id, Incarnation: 1, Lease: 7, TTL: 5 * time.Second}
}

// put writes ops in transactions of at most 128 operations (etcd's
// default --max-txn-ops).
func (e *etcdGroups) put(ops []clientv3.Op) {
	if err := e.tryPut(ops); err != nil {
		e.b.Fatal(err)
	}
}

func (e *etcdGroups) tryPut(ops []clientv3.Op) error {
	for i := 0; i < len(ops); i += 128 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := e.cli.Txn(ctx).Then(ops[i:min(i+128, len(ops))]...).Commit()
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// idle returns the operations that make group g connected in epoch 1 with
// members a, b and c.
func (e *etcdGroups) idle(g string) []clientv3.Op {
	var ms []proto.Member
	var ops []clientv3.Op
	for _, id := range []string{"a", "b", "c"} {
		m := benchMember(id)
		ms = append(ms, m)
		ops = append(ops, clientv3.OpPut(e.keys.Member(g, id), jsonOf(e.b, m)))
	}
	rec := proto.EpochRecord{Group: g, Number: 1, State: proto.Connected, Mode: proto.ModeLease, Members: ms}
	return append(ops, clientv3.OpPut(e.keys.Epoch(g), string(proto.EncodeEpoch(rec))))
}

// acks returns the operations that acknowledge quiescing epoch rec for
// every survivor.
func (e *etcdGroups) acks(rec proto.EpochRecord) []clientv3.Op {
	var ops []clientv3.Op
	for _, s := range rec.Survivors() {
		ops = append(ops, clientv3.OpPut(e.keys.Ack(rec.Group, rec.Number, s.ID), jsonOf(e.b, proto.Ack{Epoch: rec.Number, ID: s.ID, Incarnation: s.Incarnation})))
	}
	return ops
}

func startEtcdGroups(b *testing.B, idle int) *etcdGroups {
	b.Helper()
	etcd := testenv.Etcd(b)
	e := &etcdGroups{b: b, cli: testenv.Client(b, etcd.Endpoints), keys: proto.Keys{Prefix: proto.DefaultPrefix}}
	var ops []clientv3.Op
	for i := range idle {
		ops = append(ops, e.idle(fmt.Sprintf("idle%05d", i))...)
	}
	e.put(ops)
	return e
}

// BenchmarkEpochChangeEtcd is one group's epoch change (a member joins or
// leaves gracefully; the survivors acknowledge at once) beside idle
// groups of 3 members each, on a real embedded etcd with a coordinator
// (coordinator.Run at its defaults). Compare idle=0 with idle=1000 and
// idle=10000: the ratio is what idle groups cost each change.
func BenchmarkEpochChangeEtcd(b *testing.B) {
	for _, idle := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("idle=%d", idle), func(b *testing.B) {
			e := startEtcdGroups(b, idle)
			const g = "active"
			e.put(e.idle(g))
			testenv.Coordinator(b, coordinator.Config{Client: e.cli, LeaseMargin: 100 * time.Millisecond})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			wch := e.cli.Watch(ctx, e.keys.Epoch(g), clientv3.WithRev(1))
			members := []string{"a", "b", "c"}
			// wait for the next record of g in state with exactly ids.
			wait := func(state proto.State, ids []string) proto.EpochRecord {
				timeout := time.After(time.Minute)
				for {
					select {
					case wr := <-wch:
						for _, ev := range wr.Events {
							rec, err := proto.DecodeEpoch(ev.Kv.Value)
							if err == nil && rec.State == state && slices.Equal(proto.IDs(rec.Members), ids) {
								return rec
							}
						}
					case <-timeout:
						b.Fatalf("no %s epoch with %v within a minute", state, ids)
					}
				}
			}
			x := benchMember("x")
			change := func() {
				want := slices.Sorted(slices.Values(append(slices.Clone(members), "x")))
				if slices.Contains(members, "x") {
					e.put([]clientv3.Op{
						clientv3.OpPut(e.keys.Left(g, "x"), jsonOf(b, proto.Left{ID: "x", Incarnation: 1})),
						clientv3.OpDelete(e.keys.Member(g, "x")),
					})
					want = slices.DeleteFunc(slices.Clone(members), func(id string) bool { return id == "x" })
				} else {
					e.put([]clientv3.Op{clientv3.OpPut(e.keys.Member(g, "x"), jsonOf(b, x))})
				}
				e.put(e.acks(wait(proto.Quiescing, want)))
				wait(proto.Connected, want)
				members = want
			}
			change() // the coordinator is elected and has listed every group
			change()
			for b.Loop() {
				change()
			}
		})
	}
}

// BenchmarkBurstEtcd is a join in each of n groups at once (in
// transactions of 128 operations), every change acknowledged as soon as
// its quiescing record is seen, until every group is connected with the
// joiner; it reports how often the coordinator lost its election
// (idc_coordinator_step_downs_total).
func BenchmarkBurstEtcd(b *testing.B) {
	for _, n := range []int{1000, 4000} {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			var downs float64
			for range b.N {
				b.StopTimer()
				e := startEtcdGroups(b, n)
				e.put(e.idle("warm"))
				reg := prometheus.NewRegistry()
				stop := testenv.Coordinator(b, coordinator.Config{Client: e.cli, LeaseMargin: 100 * time.Millisecond, Metrics: reg})
				ctx, cancel := context.WithCancel(context.Background())
				// Warm up: the coordinator is elected and has listed
				// every group once a change of group warm connected.
				resp, err := e.cli.Put(ctx, e.keys.Member("warm", "x"), jsonOf(b, benchMember("x")))
				if err != nil {
					b.Fatal(err)
				}
				rev := e.waitConnected(ctx, "warm", 1, 4, resp.Header.Revision)
				var wg sync.WaitGroup
				done := make(chan struct{})
				wg.Go(func() {
					e.waitConnected(ctx, "idle", n, 4, rev+1)
					close(done)
				})
				b.StartTimer()
				var ops []clientv3.Op
				for i := range n {
					ops = append(ops, clientv3.OpPut(e.keys.Member(fmt.Sprintf("idle%05d", i), "x"), jsonOf(b, benchMember("x"))))
				}
				e.put(ops)
				select {
				case <-done:
				case <-time.After(5 * time.Minute):
					b.Fatal("burst not connected within 5 minutes")
				}
				b.StopTimer()
				downs += counter(b, reg, "idc_coordinator_step_downs_total")
				cancel()
				wg.Wait()
				stop()
			}
			b.ReportMetric(downs/float64(b.N), "stepdowns/op")
		})
	}
}

// counter returns the value of a counter in reg, -1 if it has none.
func counter(b *testing.B, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return -1
}

// waitConnected watches every epoch record from revision rev,
// acknowledges each quiescing one for its survivors, and returns the
// revision at which n groups named with prefix are connected with size
// members.
func (e *etcdGroups) waitConnected(ctx context.Context, prefix string, n, size int, rev int64) int64 {
	connected := map[string]bool{}
	see := func(value []byte) {
		rec, err := proto.DecodeEpoch(value)
		if err != nil {
			return
		}
		switch {
		case rec.State == proto.Quiescing:
			go func() {
				if err := e.tryPut(e.acks(rec)); err != nil {
					e.b.Error(err)
				}
			}()
		case !strings.HasPrefix(rec.Group, prefix):
		case len(rec.Members) == size:
			connected[rec.Group] = true
		default:
			delete(connected, rec.Group)
		}
	}
	for wr := range e.cli.Watch(ctx, e.keys.Groups(), clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		for _, ev := range wr.Events {
			if p, ok := e.keys.Parse(string(ev.Kv.Key)); ok && p.Kind == proto.KindEpoch && ev.Type == clientv3.EventTypePut {
				see(ev.Kv.Value)
			}
		}
		if len(connected) >= n {
			return wr.Header.Revision
		}
	}
	return 0
}
