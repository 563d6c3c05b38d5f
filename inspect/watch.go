package inspect

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Kinds of Event.
const (
	// KindEpoch: the group's epoch record, as it is now (first event of
	// each group) or as the coordinator just wrote it.
	KindEpoch = "epoch"
	// KindJoined: a domain registered in the group.
	KindJoined = "joined"
	// KindGone: a domain's membership record vanished (its lease expired or
	// was revoked).
	KindGone = "gone"
	// KindAck: a survivor acknowledged quiesce.
	KindAck = "ack"
	// KindFault: a member reported losing a peer.
	KindFault = "fault"
	// KindLeft: a domain left gracefully.
	KindLeft = "left"
	// KindFenceAck: a resource acknowledged a fence.
	KindFenceAck = "fence-ack"
	// KindResync: the watch lost its place (compaction) and read the store
	// afresh; events in between were not seen.
	KindResync = "resync"
	// KindAbsent: a group named to the watch has no records (yet); the
	// watch goes on and shows it once it appears.
	KindAbsent = "absent"
)

// Event is one change in a group.
type Event struct {
	Time     time.Time `json:"time"`
	Revision int64     `json:"revision"`
	Group    string    `json:"group"`
	Kind     string    `json:"kind"`
	// Epoch is set for KindEpoch.
	Epoch *proto.EpochRecord `json:"epoch,omitempty"`
	// Member is set for KindJoined and KindGone.
	Member *proto.Member `json:"member,omitempty"`
	// Ack, Fault, Left and FenceAck are set for their kinds.
	Ack      *proto.Ack         `json:"ack,omitempty"`
	Fault    *proto.FaultReport `json:"fault,omitempty"`
	Left     *proto.Left        `json:"left,omitempty"`
	FenceAck *proto.FenceAck    `json:"fence_ack,omitempty"`
}

// String renders the event on one line, for people.
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-10s ", e.Time.Format("15:04:05.000"), e.Group)
	switch {
	case e.Epoch != nil:
		r := e.Epoch
		fmt.Fprintf(&b, "epoch %d %s  members [%s]", r.Number, r.State, strings.Join(proto.IDs(r.Members), " "))
		if r.State == proto.Quiescing {
			fmt.Fprintf(&b, "  survivors [%s]  departed [%s]", strings.Join(proto.IDs(r.Survivors()), " "), strings.Join(proto.IDs(r.Departed()), " "))
		}
		if r.Reason != "" {
			fmt.Fprintf(&b, "  (%s)", r.Reason)
		}
	case e.Kind == KindJoined:
		fmt.Fprintf(&b, "%s joined (incarnation %x, lease %v)", e.Member.ID, e.Member.Incarnation, e.Member.TTL)
	case e.Kind == KindGone:
		fmt.Fprintf(&b, "%s gone (incarnation %x: lease expired or revoked)", e.Member.ID, e.Member.Incarnation)
	case e.Ack != nil:
		fmt.Fprintf(&b, "%s quiesced: acknowledged epoch %d", e.Ack.ID, e.Ack.Epoch)
	case e.Fault != nil:
		fmt.Fprintf(&b, "%s reported losing %s in epoch %d", e.Fault.Reporter, e.Fault.Suspect, e.Fault.Epoch)
	case e.Left != nil:
		fmt.Fprintf(&b, "%s left (incarnation %x)", e.Left.ID, e.Left.Incarnation)
	case e.FenceAck != nil:
		fmt.Fprintf(&b, "resource %s applied the fence of epoch %d", e.FenceAck.Resource, e.FenceAck.Epoch)
	case e.Kind == KindResync:
		b.WriteString("watch lost its place; read the store afresh")
	case e.Kind == KindAbsent:
		b.WriteString("no such group (no records yet); waiting for it to appear")
	default:
		b.WriteString(e.Kind)
	}
	return b.String()
}

// Watch calls fn with every change in the named groups (every group when
// none is named) until ctx ends or fn returns an error, which Watch then
// returns. It starts with the current epoch record of each group, and a
// KindAbsent event for each group named that has no records yet. If the
// watch loses its place (the store compacted the revisions it needed) it
// reads the store afresh and goes on after a KindResync event.
func Watch(ctx context.Context, cli *clientv3.Client, keys proto.Keys, groups []string, fn func(Event) error) error {
	for _, g := range groups {
		if err := proto.CheckName("group", g); err != nil {
			return err
		}
	}
	want := func(g string) bool { return len(groups) == 0 || slices.Contains(groups, g) }
	first := true
	for {
		views, rev, err := read(ctx, cli, keys)
		if err != nil {
			return err
		}
		if !first {
			if err := fn(Event{Time: time.Now(), Revision: rev, Kind: KindResync}); err != nil {
				return err
			}
		}
		first = false
		names := make([]string, 0, len(views))
		for g := range views {
			names = append(names, g)
		}
		slices.Sort(names)
		for _, g := range names {
			if rec := views[g].Epoch; rec != nil && want(g) {
				if err := fn(Event{Time: time.Now(), Revision: rev, Group: g, Kind: KindEpoch, Epoch: rec}); err != nil {
					return err
				}
			}
		}
		for _, g := range groups {
			if _, ok := views[g]; !ok {
				if err := fn(Event{Time: time.Now(), Revision: rev, Group: g, Kind: KindAbsent}); err != nil {
					return err
				}
			}
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		err = follow(cli.Watch(wctx, keys.Groups(), clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(rev+1)), keys, want, fn)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		select { // the watch failed: read afresh after a breath
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// follow turns watch responses into events until the watch fails (nil) or
// fn returns an error.
func follow(wch clientv3.WatchChan, keys proto.Keys, want func(string) bool, fn func(Event) error) error {
	for wr := range wch {
		if wr.Err() != nil {
			return nil
		}
		for _, ev := range wr.Events {
			p, ok := keys.Parse(string(ev.Kv.Key))
			if !ok || !want(p.Group) {
				continue
			}
			e, ok := decode(p, ev)
			if !ok {
				continue
			}
			e.Time, e.Revision, e.Group = time.Now(), ev.Kv.ModRevision, p.Group
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("%w: watch closed", store.ErrUnavailable)
}

// decode makes an event of a key change; deletions other than a member's
// are housekeeping and yield none.
func decode(p proto.Parsed, ev *clientv3.Event) (Event, bool) {
	del := ev.Type == clientv3.EventTypeDelete
	val := ev.Kv.Value
	if del {
		if p.Kind != proto.KindMembers || ev.PrevKv == nil {
			return Event{}, false
		}
		val = ev.PrevKv.Value
	}
	e := Event{Kind: p.Kind}
	var into any
	switch p.Kind {
	case proto.KindEpoch:
		e.Kind, e.Epoch = KindEpoch, &proto.EpochRecord{}
		into = e.Epoch
	case proto.KindMembers:
		e.Kind, e.Member = KindJoined, &proto.Member{}
		if del {
			e.Kind = KindGone
		}
		into = e.Member
	case proto.KindAcks:
		e.Kind, e.Ack = KindAck, &proto.Ack{}
		into = e.Ack
	case proto.KindFaults:
		e.Kind, e.Fault = KindFault, &proto.FaultReport{}
		into = e.Fault
	case proto.KindLeft:
		e.Kind, e.Left = KindLeft, &proto.Left{}
		into = e.Left
	case proto.KindFenceAcks:
		e.Kind, e.FenceAck = KindFenceAck, &proto.FenceAck{}
		into = e.FenceAck
	default:
		return Event{}, false
	}
	return e, json.Unmarshal(val, into) == nil
}
