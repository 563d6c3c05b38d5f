package idc

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/internal/fencer"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// FencingConfig configures Fence: the fence driver of a guarded resource.
type FencingConfig struct {
	// Resource is the resource's name, as registered in its groups
	// (letters, digits, '.', '_' and '-').
	Resource string
	// Groups are the groups whose members use the resource.
	Groups []string
	// Writer, if not empty, is the ID of the one domain whose writes the
	// resource admits (a reservation, as SCSI-3's): every fence carries
	// it, so the guard refuses writes from any other member
	// (guard.ErrNotWriter) and admits reads from all.
	Writer string
	// Endpoints are the store's client URLs (default DefaultEndpoints);
	// Client, if set, is used instead (Fence does not close it).
	Endpoints []string
	Client    *clientv3.Client
	// Prefix is the store's key prefix (default "/idc").
	Prefix string
	// Logger receives the driver's logs (default: none).
	Logger *slog.Logger
}

// Fencing is a running fence driver (see Fence).
type Fencing struct {
	d     *fencer.Driver
	close func()
}

// Fence keeps g, a shared resource's guard, fenced at the epochs of the
// groups that use the resource (DESIGN §6). It registers the resource in
// each group — for good: a resource that is down holds fence-mode changes
// back until it returns or an operator removes it (idc fence remove) —
// then raises g's fence at every new epoch record, aborting the requests
// of older epochs that g admitted but has not applied, and writes the
// resource's acknowledgement once the applies of older epochs under way
// have ended. In fence and both modes, a group's next epoch connects only
// when every resource of the group has acknowledged.
//
// Until it has read a group's epoch record, g refuses every request of
// the group: a resource that restarts reads its fences again before it
// admits anything. Stop the driver with Stop; g keeps its fences.
func Fence(ctx context.Context, cfg FencingConfig, g *guard.Guard) (*Fencing, error) {
	if g == nil {
		return nil, fmt.Errorf("%w: Fence needs a guard", ErrConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cli, closeCli := cfg.Client, func() {}
	if cli == nil {
		eps := cfg.Endpoints
		if len(eps) == 0 {
			eps = DefaultEndpoints
		}
		c, err := store.Dial(ctx, store.DialConfig{Endpoints: eps, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		cli, closeCli = c, func() { c.Close() }
	}
	d, err := fencer.Start(fencer.Config{
		Resource: cfg.Resource, Groups: cfg.Groups, Writer: cfg.Writer, Store: store.NewEtcd(cli), Clock: clock.System(),
		Keys: proto.Keys{Prefix: cfg.Prefix}, Logger: cfg.Logger,
	}, g)
	if err != nil {
		closeCli()
		return nil, err
	}
	return &Fencing{d: d, close: closeCli}, nil
}

// FenceStatus is where a fence driver stands in one group.
type FenceStatus = fencer.Status

// Status returns where the driver stands in each group.
func (f *Fencing) Status() []FenceStatus { return f.d.Status() }

// Stop stops the driver; the guard keeps its fences (and refuses what
// they refuse) but learns no new one.
func (f *Fencing) Stop() {
	f.d.Stop()
	f.close()
}
