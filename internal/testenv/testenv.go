// Package testenv starts real embedded etcd servers and coordinators for
// idc's integration tests, records the epoch history they write (History)
// and taps store clients to time what they send (Tap).
package testenv

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/idc-dev/idc/coordinator"
	core "github.com/idc-dev/idc/core/coordinator"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Logger returns a logger that writes to the test log when IDC_TEST_LOG is
// set and discards otherwise.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("IDC_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p[:len(p)-1])); return len(p), nil }

// Etcd starts an embedded single-node etcd in a temporary directory, with
// fast raft timings, and stops it when the test ends.
func Etcd(t testing.TB) *store.Embedded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		DataDir:   t.TempDir(),
		ClientURL: "http://127.0.0.1:0",
		PeerURL:   "http://127.0.0.1:0",
		TickMs:    10, ElectionMs: 100,
		Logger: Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// Client dials endpoints and closes the client when the test ends.
func Client(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := store.Dial(ctx, store.DialConfig{Endpoints: endpoints, Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Coordinator runs a coordinator until the returned stop function is
// called or the test ends; stop waits until it has returned. The fields of
// cfg that are set (not zero) override coordinator.DefaultConfig(): a test
// convenience, which coordinator.Run itself does not offer.
func Coordinator(t testing.TB, cfg coordinator.Config) (stop func()) {
	t.Helper()
	cfg = overDefaults(cfg)
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := coordinator.Run(ctx, cfg); err != nil {
			t.Errorf("coordinator: %v", err)
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// overDefaults returns coordinator.DefaultConfig() with the fields set in c.
func overDefaults(c coordinator.Config) coordinator.Config {
	d := coordinator.DefaultConfig()
	d.Client, d.Name, d.NoElection, d.Logger, d.Metrics = c.Client, c.Name, c.NoElection, c.Logger, c.Metrics
	if c.Keys.Prefix != "" {
		d.Keys = c.Keys
	}
	if c.Mode != "" {
		d.Mode = c.Mode
	}
	set := func(dst *time.Duration, v time.Duration) {
		if v != 0 {
			*dst = v
		}
	}
	set(&d.QuiesceTimeout, c.QuiesceTimeout)
	set(&d.LeaseMargin, c.LeaseMargin)
	set(&d.ElectionTTL, c.ElectionTTL)
	set(&d.OpTimeout, c.OpTimeout)
	set(&d.WatchCheck, c.WatchCheck)
	if c.Rho != 0 {
		d.Rho = c.Rho
	}
	if c.MaxTxnOps != 0 {
		d.MaxTxnOps = c.MaxTxnOps
	}
	if c.Damping != (core.Damping{}) {
		d.Damping = c.Damping
	}
	return d
}
