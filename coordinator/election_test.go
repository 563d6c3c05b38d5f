package coordinator

import (
	"fmt"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/core/lease"
	dto "github.com/prometheus/client_model/go"
)

func (m *Metrics) stepDownCount() float64 {
	var d dto.Metric
	if err := m.stepDowns.Write(&d); err != nil {
		panic(err)
	}
	return d.GetCounter().GetValue()
}

// TestCandidateHoldsElectionUnderStoreLatency: a leader whose store
// answers its renewals late, or loses some of them, keeps the election as
// long as some renewal is answered before its term ends — in particular
// through the longest stall the members hold their leases through at
// idc's defaults, so that under load the election is not the first thing
// to break. The old default TTL (2 s) does not hold through that.
func TestCandidateHoldsElectionUnderStoreLatency(t *testing.T) {
	members := lease.Config{TTL: idc.DefaultLeaseTTL, Rho: idc.DefaultRho, Margin: idc.DefaultLeaseMargin}.Valid() - idc.DefaultRenewInterval
	own := func(ttl time.Duration) time.Duration { // the documented bound
		return time.Duration(float64(ttl)*(1-DefaultRho)) - ttl/10 - ttl/RenewFraction
	}
	steady := func(d time.Duration) func(int) (time.Duration, bool) {
		return func(int) (time.Duration, bool) { return d, false }
	}
	for _, tc := range []struct {
		name    string
		ttl     time.Duration
		renewal func(n int) (time.Duration, bool)
		hold    bool
	}{
		{"answered at once", DefaultElectionTTL, steady(0), true},
		{fmt.Sprintf("each answered after the members' stall bound %v", members), DefaultElectionTTL, steady(members), true},
		{"each answered just within its own bound", DefaultElectionTTL, steady(own(DefaultElectionTTL) - 10*time.Millisecond), true},
		{"each answered just past its own bound", DefaultElectionTTL, steady(own(DefaultElectionTTL) + 10*time.Millisecond), false},
		{"every other renewal lost", DefaultElectionTTL, func(n int) (time.Duration, bool) { return 0, n%2 == 0 }, true},
		{"four in five lost, the rest 1 s late", DefaultElectionTTL, func(n int) (time.Duration, bool) { return time.Second, n%5 != 4 }, true},
		{"all lost", DefaultElectionTTL, func(int) (time.Duration, bool) { return 0, true }, false},
		{"2 s TTL, members' stall bound", 2 * time.Second, steady(members), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			w.idleGroups(3)
			c := StartCandidate(CandidateConfig{Leader: w.leaderConfig(), Name: "c", TTL: tc.ttl, Rho: DefaultRho})
			defer c.Stop()
			w.run(0)
			if !c.Leading() {
				t.Fatal("not elected")
			}
			w.renewal = tc.renewal
			lost := -1
			for i := range 600 { // a minute, in steps of 100 ms
				w.run(100 * time.Millisecond)
				if !c.Leading() && lost < 0 {
					lost = i
				}
			}
			downs := c.met.stepDownCount()
			switch {
			case tc.hold && (lost >= 0 || downs != 0):
				t.Errorf("stepped down %v times, first after %v; want it to hold", downs, time.Duration(lost+1)*100*time.Millisecond)
			case !tc.hold && downs == 0:
				t.Errorf("held the election for a minute; want it lost")
			}
			t.Logf("%d renewals sent, %v step-downs", w.keepAlives, downs)
		})
	}
}
