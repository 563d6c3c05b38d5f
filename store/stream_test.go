package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/store"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestEtcdRenewalsShareOneStream: the Etcds of one client renew every
// lease over one keep-alive stream of etcd's, each answer going to its
// own renewal; a revoked lease is ErrLeaseNotFound; the stream closes
// with the client's last Etcd.
func TestEtcdRenewalsShareOneStream(t *testing.T) {
	e := testenv.Etcd(t)
	cli := testenv.Client(t, e.Endpoints)
	a, b := store.NewEtcd(cli), store.NewEtcd(cli)
	grant := func(st *store.Etcd) store.LeaseID {
		ch := make(chan error, 1)
		var id store.LeaseID
		st.Grant(5*time.Second, 5*time.Second, func(l store.Lease, err error) { id = l.ID; ch <- err })
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
		return id
	}
	la, lb := grant(a), grant(b)
	before := keepAliveStreams(t)
	type result struct {
		lease store.LeaseID
		ttl   time.Duration
		err   error
	}
	results := make(chan result, 20)
	renew := func(st *store.Etcd, id store.LeaseID) {
		st.KeepAlive(id, 5*time.Second, func(ttl time.Duration, err error) { results <- result{id, ttl, err} })
	}
	for range 5 {
		renew(a, la)
		renew(b, lb)
	}
	for range 10 {
		r := <-results
		if r.err != nil || r.ttl != 5*time.Second {
			t.Fatalf("lease %x: ttl %v, err %v", int64(r.lease), r.ttl, r.err)
		}
	}
	if opened, replaced := a.RenewStreams(); opened != 1 || replaced != 0 {
		t.Fatalf("%d streams opened, %d replaced; want 1", opened, replaced)
	}
	if n := keepAliveStreams(t) - before; n != 1 {
		t.Fatalf("the server saw %v keep-alive streams start; want 1 for both Etcds", n)
	}
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(lb)); err != nil {
		t.Fatal(err)
	}
	renew(b, lb)
	if r := <-results; !errors.Is(r.err, store.ErrLeaseNotFound) {
		t.Fatalf("renewal of a revoked lease: ttl %v, err %v; want ErrLeaseNotFound", r.ttl, r.err)
	}
	a.Close()
	renew(b, la) // the stream is b's now too
	if r := <-results; r.err != nil {
		t.Fatalf("after the first Etcd closed: %v", r.err)
	}
	b.Close()
	renew(b, la)
	if r := <-results; !errors.Is(r.err, store.ErrClosed) {
		t.Fatalf("after the last Etcd closed: %v, want ErrClosed", r.err)
	}
}

// keepAliveStreams reads how many LeaseKeepAlive streams the embedded
// servers of this process have started (etcd's gRPC server metrics, in the
// default Prometheus registry).
func keepAliveStreams(t *testing.T) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_started_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "grpc_method" && l.GetValue() == "LeaseKeepAlive" {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}
