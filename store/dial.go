package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ErrUnavailable means the store could not be reached before the caller's
// context ended.
var ErrUnavailable = errors.New("idc: store unavailable")

// DialConfig says how to reach the store.
type DialConfig struct {
	Endpoints []string
	// AttemptTimeout bounds each attempt to reach the store (default 1 s).
	AttemptTimeout time.Duration
	// Logger receives one warning per failed attempt (default slog.Default()).
	Logger *slog.Logger
}

// Dial connects to the store and checks that it answers, retrying with
// backoff until it does or ctx ends. It never hangs past ctx.
func Dial(ctx context.Context, c DialConfig) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no endpoints given", ErrUnavailable)
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = time.Second
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.AttemptTimeout,
		Logger:      zap.NewNop(),
		Context:     context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v: %w", ErrUnavailable, c.Endpoints, err)
	}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, c.AttemptTimeout)
		_, err := cli.Get(actx, "/idc-ping", clientv3.WithCountOnly())
		cancel()
		if err == nil {
			return cli, nil
		}
		if ctx.Err() != nil {
			cli.Close()
			return nil, fmt.Errorf("%w: %v after %d attempts: %w (last error: %v)", ErrUnavailable, c.Endpoints, attempt, ctx.Err(), err)
		}
		log.Warn("store unreachable, retrying", "endpoints", c.Endpoints, "attempt", attempt, "retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			cli.Close()
			return nil, fmt.Errorf("%w: %v after %d attempts: %w (last error: %v)", ErrUnavailable, c.Endpoints, attempt, ctx.Err(), err)
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
