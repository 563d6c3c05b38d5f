package idc_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
)

func TestSmokeJoinFaultReconnect(t *testing.T) {
	e := testenv.Etcd(t)
	cli := testenv.Client(t, e.Endpoints)
	h := testenv.Record(t, cli, proto.Keys{})
	testenv.Coordinator(t, coordinator.Config{Client: cli, LeaseMargin: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ds []*idc.Domain
	for i := range 3 {
		d, err := idc.Join(ctx, idc.Config{Group: "g", ID: fmt.Sprintf("d%d", i), Client: cli, LeaseTTL: 2 * time.Second, Logger: testenv.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	h.WaitFor(t, "g", 10*time.Second, "connected with 3", func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && len(r.Members) == 3
	})
	ep, err := ds[0].Next(ctx)
	for err == nil && len(ep.Members()) < 3 {
		ep, err = ds[0].Next(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := ds[0].ReportFault(ctx, "d2"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rec := h.WaitFor(t, "g", 15*time.Second, "connected without d2", func(r proto.EpochRecord) bool {
		return r.State == proto.Connected && slices.Equal(proto.IDs(r.Members), []string{"d0", "d1"})
	})
	t.Logf("reconnected in epoch %d after %v", rec.Number, time.Since(start))
	<-ds[2].Done()
	if err := ds[2].Err(); !errorsIs(err, idc.ErrFenced) {
		t.Fatalf("d2: %v, want ErrFenced", err)
	}
	h.CheckG1(t, "g")
	t.Log("\n" + testenv.Format(h.Records("g")))
	for _, d := range ds {
		d.Close()
	}
}
