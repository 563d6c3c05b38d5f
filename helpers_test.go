package idc_test

import (
	"context"
	"errors"
	"slices"
	"sync"
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
func (e *env) join(id string, mod ...func(*idc.Config)) *idc.Membership {
	e.t.Helper()
	cfg := testConfig(id, e.cli)
	cfg.Logger = testenv.Logger(e.t)
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

// mark returns the present point of the store's history: waits from it
// match only records written after mark was called.
func (e *env) mark() testenv.Mark {
	e.t.Helper()
	return e.h.Mark(e.t)
}

// connected waits until an epoch record of the test group written after
// since is connected with exactly the members ids (the zero Mark: any
// record of the history).
func (e *env) connected(since testenv.Mark, timeout time.Duration, ids ...string) testenv.Entry {
	e.t.Helper()
	slices.Sort(ids)
	return e.h.WaitFor(e.t, group, since, timeout, "connected with "+join(ids), func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && slices.Equal(proto.IDs(r.Members), ids)
	})
}

// current waits until d is connected in an epoch with exactly ids.
func current(t *testing.T, d *idc.Membership, timeout time.Duration, ids ...string) *idc.Epoch {
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
func waitDone(t *testing.T, d *idc.Membership, timeout time.Duration) {
	t.Helper()
	select {
	case <-d.Done():
	case <-time.After(timeout):
		t.Fatalf("%s did not stop within %v", d.ID(), timeout)
	}
}

// leaseOf returns the store lease of member id among ms.
func leaseOf(t *testing.T, ms []proto.Member, id string) int64 {
	t.Helper()
	m, ok := proto.Find(ms, id)
	if !ok || m.Lease == 0 {
		t.Fatalf("no lease of %s among %v", id, proto.IDs(ms))
	}
	return m.Lease
}

// ioLoop does an I/O every millisecond while its epoch allows it, as a
// careful application does: Epoch.Err right before each I/O, whose time
// is read after the check.
type ioLoop struct {
	mu   sync.Mutex
	last time.Time
	n    int
	done chan struct{}
}

func startIO(ep *idc.Epoch) *ioLoop {
	l := &ioLoop{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ep.Err() == nil {
			l.mu.Lock()
			l.last, l.n = time.Now(), l.n+1
			l.mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()
	return l
}

// stopped waits until the loop has stopped and returns the time of its
// last I/O and the number of I/Os.
func (l *ioLoop) stopped(t *testing.T, timeout time.Duration) (time.Time, int) {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(timeout):
		t.Fatalf("the I/O loop did not stop within %v", timeout)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last, l.n
}

// bystander gives a peer that is not under test a longer lease than the
// 2 s one under test, so that a test process starved by a loaded machine
// does not lose it too.
func bystander(c *idc.Config) { c.LeaseTTL = 5 * time.Second }

// testConfig is the tests' membership configuration: a 2 s lease renewed
// every fifth of it, a 100 ms margin.
func testConfig(id string, cli *clientv3.Client) idc.Config {
	cfg := idc.DefaultConfig()
	cfg.Group, cfg.ID, cfg.Client = group, id, cli
	cfg.LeaseTTL, cfg.RenewInterval, cfg.LeaseMargin = 2*time.Second, 400*time.Millisecond, 100*time.Millisecond
	return cfg
}
