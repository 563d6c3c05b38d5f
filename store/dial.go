package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ErrUnavailable means the store could not be reached before the caller's
// context ended, or did not answer a request in time.
var ErrUnavailable = errors.New("idc: store unavailable")

// ErrEndpoint is wrapped by errors about an endpoint that cannot be a
// store's address at all (bad scheme, no host or port).
var ErrEndpoint = errors.New("bad store endpoint")

// DialConfig says how to reach the store.
type DialConfig struct {
	Endpoints []string
	// AttemptTimeout bounds each attempt to reach the store (default 1 s).
	AttemptTimeout time.Duration
	// KeepAliveTime and KeepAliveTimeout are the gRPC keep-alive: a
	// connection that answers no ping within KeepAliveTime+KeepAliveTimeout
	// is closed and its calls and watches fail over to another endpoint, so
	// a silently dropped connection is closed within that bound (defaults
	// 10 s, gRPC's minimum, and 2 s). Until then idc's requests route
	// around it (store.Etcd repeats a stuck request on the next
	// connection) and its watches are replaced on a fresh stream. Pings
	// go only on connections with a call or stream in progress: etcd's
	// server refuses pings on an idle connection (its enforcement policy
	// does not permit them without a stream) and closes the connection
	// after the second, which made clients of a cluster reconnect every
	// half minute.
	KeepAliveTime, KeepAliveTimeout time.Duration
	// Logger receives one warning per failed attempt (default slog.Default()).
	Logger *slog.Logger
}

// Defaults of DialConfig.
const (
	DefaultKeepAliveTime    = 10 * time.Second
	DefaultKeepAliveTimeout = 2 * time.Second
)

// CheckEndpoint checks that ep can be a store's client URL:
// http://host:port, https://host:port, or unix:///path.
func CheckEndpoint(ep string) error {
	u, err := url.Parse(ep)
	if err != nil {
		return fmt.Errorf("%w %q: %v", ErrEndpoint, ep, err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Hostname() == "" || u.Port() == "" {
			return fmt.Errorf("%w %q: want %s://host:port", ErrEndpoint, ep, u.Scheme)
		}
	case "unix", "unixs":
		if u.Path == "" && u.Host == "" {
			return fmt.Errorf("%w %q: want unix:///path", ErrEndpoint, ep)
		}
	default:
		return fmt.Errorf("%w %q: scheme %q (want http, https or unix)", ErrEndpoint, ep, u.Scheme)
	}
	return nil
}

// diagnose says why endpoint ep cannot be reached, if a plain connection
// to it fails (refused, no such host, timeout), or "" if it connects.
func diagnose(ep string, timeout time.Duration) string {
	u, err := url.Parse(ep)
	if err != nil {
		return err.Error()
	}
	network, addr := "tcp", u.Host
	if strings.HasPrefix(u.Scheme, "unix") {
		network, addr = "unix", u.Host+u.Path
	}
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return err.Error()
	}
	c.Close()
	return ""
}

// Dial connects to the store and checks that it answers, retrying with
// backoff until it does or ctx ends. It never hangs past ctx. A malformed
// endpoint fails at once (ErrEndpoint); an unreachable one says why each
// endpoint could not be reached.
func Dial(ctx context.Context, c DialConfig) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no endpoints given", ErrEndpoint)
	}
	for _, ep := range c.Endpoints {
		if err := CheckEndpoint(ep); err != nil {
			return nil, err
		}
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = time.Second
	}
	if c.KeepAliveTime <= 0 {
		c.KeepAliveTime = DefaultKeepAliveTime
	}
	if c.KeepAliveTimeout <= 0 {
		c.KeepAliveTimeout = DefaultKeepAliveTimeout
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		DialTimeout:          c.AttemptTimeout,
		DialKeepAliveTime:    c.KeepAliveTime,
		DialKeepAliveTimeout: c.KeepAliveTimeout,
		PermitWithoutStream:  false,
		Logger:               zap.NewNop(),
		Context:              context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v: %w", ErrUnavailable, c.Endpoints, err)
	}
	why := func(err error) string {
		var reasons []string
		for _, ep := range c.Endpoints {
			if d := diagnose(ep, c.AttemptTimeout); d != "" {
				reasons = append(reasons, d)
			}
		}
		if len(reasons) == 0 {
			return err.Error()
		}
		return strings.Join(reasons, "; ")
	}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, c.AttemptTimeout)
		_, err := cli.Get(actx, "/idc-ping", clientv3.WithCountOnly())
		cancel()
		if err == nil {
			return cli, nil
		}
		reason := why(err)
		if ctx.Err() != nil {
			cli.Close()
			return nil, fmt.Errorf("%w: %v after %d attempts (%w): %s", ErrUnavailable, c.Endpoints, attempt, ctx.Err(), reason)
		}
		log.Warn("store unreachable, retrying", "endpoints", c.Endpoints, "attempt", attempt, "retry_in", backoff, "err", reason)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			cli.Close()
			return nil, fmt.Errorf("%w: %v after %d attempts (%w): %s", ErrUnavailable, c.Endpoints, attempt, ctx.Err(), reason)
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
