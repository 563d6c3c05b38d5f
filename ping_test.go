package idc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
)

// TestPing: Epoch.Ping measures a round trip to a peer that has no
// Handler (its channel driver answers), and fails as a call does for a
// domain that is not a member or an epoch that ended.
func TestPing(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{})
	a := e.join("a")
	b := e.join("b")
	e.connected(testenv.Mark{}, 10*time.Second, "a", "b")
	epA := current(t, a, 5*time.Second, "a", "b")
	current(t, b, 5*time.Second, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 5 {
		rtt, err := epA.Ping(ctx, "b")
		if err != nil || rtt <= 0 || rtt > 5*time.Second {
			t.Fatalf("ping a→b: %v, %v", rtt, err)
		}
	}
	if _, err := epA.Ping(ctx, "nobody"); !errors.Is(err, idc.ErrNotMember) {
		t.Fatalf("ping to a non-member: %v, want ErrNotMember", err)
	}
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	current(t, a, 10*time.Second, "a")
	if _, err := epA.Ping(ctx, "b"); !errors.Is(err, idc.ErrEpochEnded) {
		t.Fatalf("ping in an ended epoch: %v, want ErrEpochEnded", err)
	}
}
