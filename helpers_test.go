package idc_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const group = "g"

// env is a real embedded etcd with a client and a recorder of every epoch
// record written.
type env struct {
	t    *testing.T
	etcd *store.Embedded
	cli  *clientv3.Client
	h    *testenv.History
}

func newEnv(t *testing.T) *env {
	e := testenv.Etcd(t)
	cli := testenv.Client(t, e.Endpoints)
	return &env{t: t, etcd: e, cli: cli, h: testenv.Record(t, cli, proto.Keys{})}
}

// coordinator runs a coordinator on the shared client unless cfg has one.
func (e *env) coordinator(cfg coordinator.Config) (stop func()) {
	if cfg.Client == nil {
		cfg.Client = e.cli
	}
	if cfg.LeaseMargin == 0 {
		cfg.LeaseMargin = 100 * time.Millisecond
	}
	return testenv.Coordinator(e.t, cfg)
}

// join joins domain id to the test group with a 2 s lease.
func (e *env) join(id string, mod ...func(*idc.Config)) *idc.Domain {
	e.t.Helper()
	cfg := idc.Config{Group: group, ID: id, Client: e.cli, LeaseTTL: 2 * time.Second, LeaseMargin: 100 * time.Millisecond, Logger: testenv.Logger(e.t)}
	for _, f := range mod {
		f(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := idc.Join(ctx, cfg)
	if err != nil {
		e.t.Fatalf("join %s: %v", id, err)
	}
	e.t.Cleanup(func() { d.Close() })
	return d
}

// connected waits until an epoch record of the test group is connected
// with exactly the members ids.
func (e *env) connected(timeout time.Duration, ids ...string) proto.EpochRecord {
	e.t.Helper()
	slices.Sort(ids)
	return e.h.WaitFor(e.t, group, timeout, "connected with "+join(ids), func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && slices.Equal(proto.IDs(r.Members), ids)
	})
}

// current waits until d is connected in an epoch with exactly ids.
func current(t *testing.T, d *idc.Domain, timeout time.Duration, ids ...string) *idc.Epoch {
	t.Helper()
	slices.Sort(ids)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ep := d.Current(); ep != nil && slices.Equal(proto.IDs(ep.Members()), ids) {
			return ep
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: not connected with %v within %v", d.ID(), ids, timeout)
	return nil
}

func join(ids []string) string {
	s := ""
	for i, id := range ids {
		if i > 0 {
			s += ","
		}
		s += id
	}
	return s
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// waitDone waits until d has stopped.
func waitDone(t *testing.T, d *idc.Domain, timeout time.Duration) {
	t.Helper()
	select {
	case <-d.Done():
	case <-time.After(timeout):
		t.Fatalf("%s did not stop within %v", d.ID(), timeout)
	}
}
