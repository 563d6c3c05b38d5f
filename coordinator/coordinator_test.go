package coordinator_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/store"
)

// TestElectionTTLRaisedIsRefused: a store whose minimum lease is longer
// than the election TTL asked (etcd at its default timings: 2 s) would
// silently make a crashed coordinator hold the election longer; Run
// refuses with a configuration error that says what to set.
func TestElectionTTLRaisedIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		DataDir: t.TempDir(), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Logger: testenv.Logger(t),
	}) // default timings: ElectionMs 1000, so leases of at least 2 s
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli := testenv.Client(t, e.Endpoints)
	cfg := coordinator.DefaultConfig()
	cfg.Client, cfg.ElectionTTL, cfg.Logger = cli, time.Second, testenv.Logger(t)
	err = coordinator.Run(ctx, cfg)
	if !errors.Is(err, coordinator.ErrConfig) || !strings.Contains(err.Error(), "at least 2s") {
		t.Fatalf("Run with a 1 s election TTL on a store with a 2 s minimum: %v, want ErrConfig saying at least 2s", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run did not return: it retried instead of refusing")
	}
}
