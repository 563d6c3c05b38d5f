package idc_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/store"
)

// TestJoinRejectsBadConfig: invalid configurations fail with an error
// wrapping ErrConfig that says what is wrong, before touching the store:
// the store endpoint is a listener that counts the connections made to it,
// and none may be.
func TestJoinRejectsBadConfig(t *testing.T) {
	srv := listenCounting(t)
	ok := idc.DefaultConfig()
	ok.Group, ok.ID, ok.Endpoints = "g", "a", []string{"http://" + srv.addr}
	tests := []struct {
		name string
		mod  func(*idc.Config)
		want string
	}{
		{"empty group", func(c *idc.Config) { c.Group = "" }, "group is empty"},
		{"empty ID", func(c *idc.Config) { c.ID = "" }, "domain ID is empty"},
		{"slash in ID", func(c *idc.Config) { c.ID = "a/b" }, `has '/'`},
		{"TTL below store minimum", func(c *idc.Config) { c.LeaseTTL = time.Second }, "below the store's minimum"},
		{"TTL not whole seconds", func(c *idc.Config) { c.LeaseTTL = 2500 * time.Millisecond }, "not whole seconds"},
		{"drift bound too large", func(c *idc.Config) { c.Rho = 0.7 }, "drift bound"},
		{"margin eats validity", func(c *idc.Config) { c.LeaseMargin = 5 * time.Second }, "leaves no validity"},
		{"renew slower than validity", func(c *idc.Config) { c.RenewInterval = 10 * time.Second }, "renew interval"},
		{"zero renew interval", func(c *idc.Config) { c.RenewInterval = 0 }, "renew interval 0s must be positive"},
		{"zero op timeout", func(c *idc.Config) { c.OpTimeout = 0 }, "op timeout 0s must be positive"},
		{"zero watch check", func(c *idc.Config) { c.WatchCheck = 0 }, "watch check 0s must be positive"},
		{"no endpoints", func(c *idc.Config) { c.Endpoints = nil }, "no store endpoints"},
		{"bad endpoint scheme", func(c *idc.Config) { c.Endpoints = []string{"ftp://127.0.0.1:2379"} }, `scheme "ftp"`},
		{"endpoint without port", func(c *idc.Config) { c.Endpoints = []string{"http://localhost"} }, "want http://host:port"},
		{"empty prefix", func(c *idc.Config) { c.Prefix = "" }, "key prefix"},
		{"negative drift bound", func(c *idc.Config) { c.Rho = -1 }, "drift bound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mod(&cfg)
			// The context only keeps a Join that wrongly dials from
			// retrying for ever; the check is on the connections made.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := idc.Join(ctx, cfg)
			if !errors.Is(err, idc.ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to say %q", err, tt.want)
			}
			if n := strings.Count(err.Error(), "idc:"); n != 1 {
				t.Errorf("err = %q: %d 'idc:' prefixes, want one", err, n)
			}
			if n := srv.connections(t); n != 0 {
				t.Errorf("%d connection(s) to the store: a bad config must fail before dialing", n)
			}
		})
	}
}

// countingListener accepts connections on a loopback port and counts them.
type countingListener struct {
	addr   string
	probed chan int // the index of each probe connection, in accept order

	mu       sync.Mutex
	accepted int // connections accepted, probes included
	probes   int // probes made
}

func listenCounting(t *testing.T) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{addr: ln.Addr().String(), probed: make(chan int, 1)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			idx := l.accepted
			l.accepted++
			l.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, len(probeHello))
				if _, err := io.ReadFull(c, buf); err == nil && string(buf) == probeHello {
					l.probed <- idx
				}
			}()
		}
	}()
	return l
}

const probeHello = "probe"

// connections returns how many connections other than its own probes were
// made to the listener before this call. It connects a probe: connections
// are accepted in the order they were made, so the probe's place in that
// order counts all earlier ones.
func (l *countingListener) connections(t *testing.T) int {
	t.Helper()
	l.mu.Lock()
	probesBefore := l.probes
	l.probes++
	l.mu.Unlock()
	c, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(probeHello)); err != nil {
		t.Fatal(err)
	}
	select {
	case idx := <-l.probed:
		return idx - probesBefore
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not accept the probe")
		return 0
	}
}

// TestJoinAlreadyLive: a second live incarnation of a domain ID in a group
// is refused, naming the live one; the first is undisturbed.
func TestJoinAlreadyLive(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{})
	a := e.join("a")
	_, err := idc.Join(context.Background(), testConfig("a", e.cli))
	if !errors.Is(err, idc.ErrAlreadyLive) {
		t.Fatalf("err = %v, want ErrAlreadyLive", err)
	}
	t.Log(err)
	current(t, a, 5*time.Second, "a")
	if a.Err() != nil {
		t.Fatalf("the live incarnation was disturbed: %v", a.Err())
	}
}

// TestJoinUnreachableStore: with no store listening, Join retries until its
// context ends and then says so, never hanging past the context.
func TestJoinUnreachableStore(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	deadline, _ := ctx.Deadline()
	cfg := testConfig("a", nil)
	cfg.Endpoints, cfg.Logger = []string{"http://" + addr}, testenv.Logger(t)
	_, err = idc.Join(ctx, cfg)
	returned := time.Now()
	if !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrUnavailable wrapping the context's deadline", err)
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "attempts") {
		t.Errorf("err = %q: want the endpoint and the attempts named", err)
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %q: want the cause named (connection refused), not only a deadline", err)
	}
	// Join dials with the store's default attempt timeout: the attempt in
	// progress when the context ends is cut short by the context, and
	// would in any case end within its own timeout; so would finding out,
	// for the error, why the one endpoint could not be reached. Join
	// returns within that of the context's deadline, however loaded the
	// machine.
	const attemptTimeout = time.Second // store.DialConfig.AttemptTimeout's default, which Join leaves
	if over := returned.Sub(deadline); over > attemptTimeout {
		t.Errorf("Join returned %v after its context's deadline; want at most one attempt timeout, %v", over, attemptTimeout)
	}
	t.Log(err)
}
