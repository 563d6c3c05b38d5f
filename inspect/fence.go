package inspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// States of a resource's fence at its group's current epoch
// (ResourceFence.Fence).
const (
	// FenceAcked: the resource acknowledged the fence of the current
	// epoch.
	FenceAcked = "acked"
	// FencePending: it has not (yet).
	FencePending = "pending"
)

// ErrNoResource is returned by Fence for a resource that is neither
// registered in the group, nor expected by its configuration, nor has a
// fence acknowledgement in the store.
var ErrNoResource = errors.New("idc: no such resource")

// ResourceFence is where one resource of a group stands with fences.
type ResourceFence struct {
	Name string `json:"resource"`
	// Registered: its registration record is in the store (the fence
	// driver writes it once, without a lease: it stays while the resource
	// is down). RegisteredRevision is the record's mod revision.
	Registered         bool  `json:"registered"`
	RegisteredRevision int64 `json:"registered_revision,omitempty"`
	// Expected: the group's configuration names it.
	Expected bool `json:"expected"`
	// Acked is the highest epoch whose fence the resource acknowledged,
	// among the acknowledgements in the store (0: none). The coordinator
	// deletes those of epochs before the connected one, so this is the
	// latest acknowledgement, not a history; AckEpochs lists every epoch
	// acknowledged still in the store, ascending.
	Acked     uint64   `json:"acked"`
	AckEpochs []uint64 `json:"ack_epochs,omitempty"`
	// Fence is FenceAcked or FencePending for the group's current epoch,
	// empty when the group has no epoch yet.
	Fence string `json:"fence,omitempty"`
	// HoldsBack is set when the fence is pending, the epoch is quiescing
	// and the group's mode fences: the coordinator does not connect the
	// epoch before the resource acknowledges it or is removed.
	HoldsBack bool `json:"holds_back,omitempty"`
}

// GroupFences is where a group's resources stand with fences at one store
// revision.
type GroupFences struct {
	Name     string `json:"group"`
	Revision int64  `json:"revision"`
	// Epoch is the current epoch (0: none yet) and State its state.
	Epoch uint64      `json:"epoch"`
	State proto.State `json:"state,omitempty"`
	// EpochRevision is the store revision at which the epoch record was
	// last written, and WrittenMillis when, by the coordinator's wall
	// clock (Unix milliseconds; 0 if the record does not say): a fence has
	// been pending since then.
	EpochRevision int64 `json:"epoch_revision,omitempty"`
	WrittenMillis int64 `json:"written_ms,omitempty"`
	// Mode is the group's mode as far as the store tells (see GroupMode);
	// ModeConfigured says it is the configuration's.
	Mode           proto.Mode `json:"mode,omitempty"`
	ModeConfigured bool       `json:"mode_configured,omitempty"`
	// Configured: the group has a configuration record. ConfigError says
	// why the coordinator ignores it (as if there were none), if it does;
	// Config is the configuration it applies (zero: none). ConfigRevision
	// is the record's mod revision (0: absent).
	Configured     bool              `json:"configured"`
	ConfigError    string            `json:"config_error,omitempty"`
	Config         proto.GroupConfig `json:"config"`
	ConfigRevision int64             `json:"config_revision,omitempty"`
	// Resources lists every resource registered or expected, by name.
	Resources []ResourceFence `json:"resources"`
}

// Pending returns the names of the resources whose fence of the current
// epoch is pending.
func (g GroupFences) Pending() []string {
	var out []string
	for _, r := range g.Resources {
		if r.Fence == FencePending {
			out = append(out, r.Name)
		}
	}
	return out
}

// GroupMode returns the mode the coordinator applies to the group as far
// as its records tell: the configuration's if it sets one (configured is
// then true), else the mode of the current epoch record — the
// coordinator's default when it wrote that record. It is empty when
// neither says.
func GroupMode(v *core.View) (mode proto.Mode, configured bool) {
	if v.Config.Mode != "" {
		return v.Config.Mode, true
	}
	if v.Epoch != nil {
		return v.Epoch.Mode, false
	}
	return "", false
}

// fenceSet returns every resource whose fence acknowledgement a change
// waits for in fence modes: those registered and those the configuration
// expects, sorted. It is View.Expected, computed here so that views built
// by hand need not keep Expected.
func fenceSet(v *core.View) []string {
	out := append(slices.Clone(v.Resources), v.Config.Resources...)
	slices.Sort(out)
	return slices.Compact(out)
}

// SummarizeFences derives where a group's resources stand with fences
// from its view at store revision rev. What the view does not keep is
// taken as follows: Configured is set when the configuration is not zero,
// and ConfigError, ConfigRevision and RegisteredRevision are left zero.
func SummarizeFences(v *core.View, rev int64) GroupFences {
	g := GroupFences{Name: v.Group, Revision: rev, Config: v.Config}
	g.Configured = !isZero(v.Config)
	g.Mode, g.ModeConfigured = GroupMode(v)
	if v.Epoch != nil {
		g.Epoch, g.State, g.EpochRevision, g.WrittenMillis = v.Epoch.Number, v.Epoch.State, v.EpochRevision, v.Epoch.WrittenMillis
	}
	for _, name := range fenceSet(v) {
		g.Resources = append(g.Resources, resourceFence(v, &g, name))
	}
	return g
}

// resourceFence derives where resource name stands in g, summarized
// from v.
func resourceFence(v *core.View, g *GroupFences, name string) ResourceFence {
	r := ResourceFence{
		Name:       name,
		Registered: slices.Contains(v.Resources, name),
		Expected:   slices.Contains(v.Config.Resources, name),
	}
	for e, names := range v.FenceAcks {
		if names[name] {
			r.AckEpochs = append(r.AckEpochs, e)
		}
	}
	slices.Sort(r.AckEpochs)
	if n := len(r.AckEpochs); n > 0 {
		r.Acked = r.AckEpochs[n-1]
	}
	if g.Epoch == 0 {
		return r
	}
	if v.FenceAcks[g.Epoch][name] {
		r.Fence = FenceAcked
		return r
	}
	r.Fence = FencePending
	r.HoldsBack = (r.Registered || r.Expected) && g.State == proto.Quiescing && g.Mode.UsesFence()
	return r
}

func isZero(c proto.GroupConfig) bool {
	return c.Mode == "" && c.QuiesceTimeoutMillis == 0 && len(c.Resources) == 0
}

// fenceRead is one group as read for fences: its view and what the view
// does not keep.
type fenceRead struct {
	view        *core.View
	configured  bool
	configErr   string
	configRev   int64
	resourceRev map[string]int64
}

// readFences reads the named groups' keys (every group's when none is
// named) in one request.
func readFences(ctx context.Context, cli *clientv3.Client, keys proto.Keys, groups []string) (map[string]*fenceRead, int64, error) {
	prefix := keys.Groups()
	if len(groups) == 1 {
		prefix = keys.Group(groups[0])
	}
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read groups: %w", store.ErrUnavailable, err)
	}
	reads := map[string]*fenceRead{}
	for _, kv := range resp.Kvs {
		p, ok := keys.Parse(string(kv.Key))
		if !ok {
			continue
		}
		r := reads[p.Group]
		if r == nil {
			v := core.NewView(p.Group)
			r = &fenceRead{view: &v, resourceRev: map[string]int64{}}
			reads[p.Group] = r
		}
		r.view.Apply(p, kv.Value, kv.ModRevision, false)
		switch p.Kind {
		case proto.KindConfig:
			r.configured, r.configRev = true, kv.ModRevision
			var c proto.GroupConfig
			if err := json.Unmarshal(kv.Value, &c); err != nil {
				r.configErr = fmt.Sprintf("does not decode: %v", err)
			} else if err := c.Validate(); err != nil {
				r.configErr = strings.TrimPrefix(err.Error(), proto.ErrConfig.Error()+": ")
			}
		case proto.KindResources:
			r.resourceRev[p.Name] = kv.ModRevision
		}
	}
	return reads, resp.Header.Revision, nil
}

// summarize is SummarizeFences with what the view does not keep.
func (r *fenceRead) summarize(rev int64) GroupFences {
	g := SummarizeFences(r.view, rev)
	g.Configured, g.ConfigError, g.ConfigRevision = r.configured, r.configErr, r.configRev
	for i := range g.Resources {
		g.Resources[i].RegisteredRevision = r.resourceRev[g.Resources[i].Name]
	}
	return g
}

// Fences reads the named groups (every group when none is named) in one
// consistent read and returns where their resources stand with fences,
// sorted by group name. A group named that has no records is an
// ErrNoGroup.
func Fences(ctx context.Context, cli *clientv3.Client, keys proto.Keys, groups ...string) ([]GroupFences, error) {
	for _, g := range groups {
		if err := proto.CheckName("group", g); err != nil {
			return nil, err
		}
	}
	reads, rev, err := readFences(ctx, cli, keys, groups)
	if err != nil {
		return nil, err
	}
	names := slices.Clone(groups)
	if len(names) == 0 {
		for g := range reads {
			names = append(names, g)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	out := make([]GroupFences, 0, len(names))
	for _, name := range names {
		r, ok := reads[name]
		if !ok {
			return nil, fmt.Errorf("%w: %q has no records under %s", ErrNoGroup, name, keys.Groups())
		}
		out = append(out, r.summarize(rev))
	}
	return out, nil
}

// Fence reads one group and returns where one of its resources stands:
// the group's summary with Resources holding that resource alone. The
// resource may be one that is neither registered nor expected but has
// fence acknowledgements left in the store (one just removed, say);
// otherwise such a name is an ErrNoResource.
func Fence(ctx context.Context, cli *clientv3.Client, keys proto.Keys, group, resource string) (GroupFences, error) {
	if err := proto.CheckName("group", group); err != nil {
		return GroupFences{}, err
	}
	if err := proto.CheckName("resource", resource); err != nil {
		return GroupFences{}, err
	}
	reads, rev, err := readFences(ctx, cli, keys, []string{group})
	if err != nil {
		return GroupFences{}, err
	}
	r, ok := reads[group]
	if !ok {
		return GroupFences{}, fmt.Errorf("%w: %q has no records under %s", ErrNoGroup, group, keys.Groups())
	}
	g := r.summarize(rev)
	for _, rf := range g.Resources {
		if rf.Name == resource {
			g.Resources = []ResourceFence{rf}
			return g, nil
		}
	}
	rf := resourceFence(r.view, &g, resource)
	if len(rf.AckEpochs) == 0 {
		return GroupFences{}, fmt.Errorf("%w: %s is neither registered in group %s nor expected by its configuration", ErrNoResource, resource, group)
	}
	g.Resources = []ResourceFence{rf}
	return g, nil
}
