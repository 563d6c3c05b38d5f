// Package inspect reads idc's records from the store for people and tools:
// a snapshot of groups (Status, behind `idc status`) and a stream of what
// changes in them (Watch, behind `idc watch`). It never writes to the store.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Roles of a domain in a group's status.
const (
	// RoleMember: a member of the connected epoch.
	RoleMember = "member"
	// RoleSurvivor: a member of the quiescing epoch that was in the last
	// connected one; it must acknowledge quiesce.
	RoleSurvivor = "survivor"
	// RoleJoiner: a member of the quiescing epoch that was not in the last
	// connected one.
	RoleJoiner = "joiner"
	// RoleDeparted: in the last connected epoch, not in the quiescing one;
	// it must be proven stopped or fenced.
	RoleDeparted = "departed"
	// RoleExcluded: dropped by topology determination while its membership
	// may still be live; never admitted again.
	RoleExcluded = "excluded"
	// RoleRegistered: registered in the group but not (yet) in its epoch.
	RoleRegistered = "registered"
)

// Member is one domain's place in a group.
type Member struct {
	ID          string `json:"id"`
	Incarnation string `json:"incarnation"`
	Role        string `json:"role"`
	// Live reports whether its membership record (and so its lease) is
	// still in the store.
	Live bool `json:"live"`
	// LeaseLeftMs is the lease's remaining time as the store reports it
	// (whole seconds), or -1 when the lease is gone.
	LeaseLeftMs int64 `json:"lease_left_ms"`
	// TTLMs is the lease's time to live.
	TTLMs int64 `json:"ttl_ms,omitempty"`
	// Acked is set for survivors that acknowledged quiesce.
	Acked bool `json:"acked,omitempty"`
	// Left is set for domains that left gracefully.
	Left bool `json:"left,omitempty"`
	// Addr is where the domain accepts channels ("tcp://host:port",
	// "unix:///path"), empty if it accepts none. It comes from the domain's
	// member record, the live registration, when that record is of this
	// incarnation; otherwise (the record is gone or another incarnation's)
	// from the epoch record. The two agree in practice: the member record is
	// created once per incarnation and the coordinator copies it into the
	// epoch record. Should they differ (say, an epoch record written by a
	// coordinator that did not carry addresses), the member record wins.
	Addr string `json:"addr,omitempty"`
}

// Group is the status of one group at one store revision.
type Group struct {
	Name     string `json:"group"`
	Revision int64  `json:"revision"`
	// Epoch is 0 when the group has no epoch yet.
	Epoch  uint64      `json:"epoch"`
	State  proto.State `json:"state,omitempty"`
	Mode   proto.Mode  `json:"mode,omitempty"`
	Reason string      `json:"reason,omitempty"`
	// PrevEpoch is the last connected epoch while Epoch is quiescing.
	PrevEpoch uint64 `json:"prev_epoch,omitempty"`
	// Domains lists every domain the group knows of, members first.
	Domains []Member `json:"domains"`
	// PendingAcks names the survivors whose quiesce acknowledgement the
	// coordinator still waits for; PendingFenceAcks the resources
	// (registered or expected by the group's configuration) whose fence
	// acknowledgement it waits for.
	PendingAcks      []string `json:"pending_acks,omitempty"`
	PendingFenceAcks []string `json:"pending_fence_acks,omitempty"`
	// PendingUnregistered names those of PendingFenceAcks that the
	// group's configuration expects but that are not registered: not
	// started yet, or whose registration was deleted while the
	// configuration still names them.
	PendingUnregistered []string `json:"pending_fence_unregistered,omitempty"`
	// WrittenMillis is when the coordinator wrote the epoch record, by its
	// host's wall clock (Unix milliseconds; 0 if the record does not say):
	// a quiescing epoch's acknowledgements have been pending since then.
	WrittenMillis int64               `json:"written_ms,omitempty"`
	Faults        []proto.FaultReport `json:"faults,omitempty"`
	Resources     []string            `json:"resources,omitempty"`
}

// ErrNoGroup is returned by Status for a group named explicitly that has no
// records in the store.
var ErrNoGroup = errors.New("idc: no such group")

// Status reads the named groups (every group when none is named) in one
// consistent read and returns their status, sorted by name.
func Status(ctx context.Context, cli *clientv3.Client, keys proto.Keys, groups ...string) ([]Group, error) {
	for _, g := range groups {
		if err := proto.CheckName("group", g); err != nil {
			return nil, err
		}
	}
	views, rev, err := read(ctx, cli, keys)
	if err != nil {
		return nil, err
	}
	names := groups
	if len(names) == 0 {
		for g := range views {
			names = append(names, g)
		}
	}
	slices.Sort(names)
	out := make([]Group, 0, len(names))
	for _, name := range names {
		v, ok := views[name]
		if !ok {
			return nil, fmt.Errorf("%w: %q has no records under %s", ErrNoGroup, name, keys.Groups())
		}
		g := Summarize(v, rev)
		if err := leaseTimes(ctx, cli, v, &g); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// read lists every group's keys in one request and builds their views.
func read(ctx context.Context, cli *clientv3.Client, keys proto.Keys) (map[string]*core.View, int64, error) {
	resp, err := cli.Get(ctx, keys.Groups(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read groups: %w", store.ErrUnavailable, err)
	}
	views := map[string]*core.View{}
	for _, kv := range resp.Kvs {
		p, ok := keys.Parse(string(kv.Key))
		if !ok {
			continue
		}
		v := views[p.Group]
		if v == nil {
			nv := core.NewView(p.Group)
			v = &nv
			views[p.Group] = v
		}
		v.Apply(p, kv.Value, kv.ModRevision, false)
	}
	return views, resp.Header.Revision, nil
}

// Summarize derives a group's status from its view at store revision rev,
// without lease times (LeaseLeftMs is -1 for domains that are gone and 0
// for live ones).
func Summarize(v *core.View, rev int64) Group {
	g := Group{Name: v.Group, Revision: rev, Faults: v.Faults, Resources: v.Resources}
	seen := map[proto.Ref]bool{}
	add := func(m proto.Member, role string) {
		if seen[m.Ref()] {
			return
		}
		seen[m.Ref()] = true
		live, ok := v.Live[m.ID]
		isLive := ok && live.Incarnation == m.Incarnation
		left, addr := -1, m.Addr
		if isLive {
			left, addr = 0, live.Addr
		}
		inc, hasLeft := v.Left[m.ID]
		g.Domains = append(g.Domains, Member{
			ID: m.ID, Incarnation: fmt.Sprintf("%x", m.Incarnation), Role: role,
			Live: isLive, LeaseLeftMs: int64(left), TTLMs: m.TTL.Milliseconds(),
			Left: hasLeft && inc == m.Incarnation, Addr: addr,
		})
	}
	if rec := v.Epoch; rec != nil {
		g.Epoch, g.State, g.Mode, g.Reason, g.WrittenMillis = rec.Number, rec.State, rec.Mode, rec.Reason, rec.WrittenMillis
		if rec.State == proto.Quiescing {
			g.PrevEpoch = rec.PrevNumber
			prev := proto.Set(rec.Prev)
			for _, m := range rec.Members {
				if !prev.Has(m.Ref()) {
					add(m, RoleJoiner)
					continue
				}
				add(m, RoleSurvivor)
				d := &g.Domains[len(g.Domains)-1]
				if inc, ok := v.Acks[rec.Number][m.ID]; ok && inc == m.Incarnation {
					d.Acked = true
				} else {
					g.PendingAcks = append(g.PendingAcks, m.ID)
				}
			}
			for _, m := range rec.Departed() {
				add(m, RoleDeparted)
			}
			// Every change is fenced in fence modes, and waits for every
			// resource registered or expected.
			if mode, _ := GroupMode(v); mode.UsesFence() {
				for _, r := range fenceSet(v) {
					if !v.FenceAcks[rec.Number][r] {
						g.PendingFenceAcks = append(g.PendingFenceAcks, r)
						if !slices.Contains(v.Resources, r) {
							g.PendingUnregistered = append(g.PendingUnregistered, r)
						}
					}
				}
			}
		} else {
			for _, m := range rec.Members {
				add(m, RoleMember)
			}
		}
		for _, m := range rec.Excluded {
			add(m, RoleExcluded)
		}
	}
	var rest []proto.Member
	for _, m := range v.Live {
		rest = append(rest, m)
	}
	for _, m := range proto.SortMembers(rest) {
		add(m, RoleRegistered)
	}
	return g
}

// leaseTimes asks the store how long each live domain's lease has left.
func leaseTimes(ctx context.Context, cli *clientv3.Client, v *core.View, g *Group) error {
	for i := range g.Domains {
		d := &g.Domains[i]
		if !d.Live {
			continue
		}
		resp, err := cli.TimeToLive(ctx, clientv3.LeaseID(v.Live[d.ID].Lease))
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || err == nil && resp.TTL < 0:
			d.Live, d.LeaseLeftMs = false, -1
		case err != nil:
			return fmt.Errorf("%w: lease of %s: %w", store.ErrUnavailable, d.ID, err)
		default:
			d.LeaseLeftMs = (time.Duration(resp.TTL) * time.Second).Milliseconds()
		}
	}
	return nil
}
