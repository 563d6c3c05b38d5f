package idc_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/store"
)

// TestJoinRejectsBadConfig: invalid configurations fail at once with an
// error wrapping ErrConfig that says what is wrong, before touching the
// store.
func TestJoinRejectsBadConfig(t *testing.T) {
	ok := idc.Config{Group: "g", ID: "a", Endpoints: []string{"http://127.0.0.1:1"}}
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
		{"margin eats validity", func(c *idc.Config) { c.LeaseMargin = 5 * time.Second }, "renew interval"},
		{"renew slower than validity", func(c *idc.Config) { c.RenewInterval = 10 * time.Second }, "renew interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mod(&cfg)
			start := time.Now()
			_, err := idc.Join(context.Background(), cfg)
			if !errors.Is(err, idc.ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to say %q", err, tt.want)
			}
			if time.Since(start) > 100*time.Millisecond {
				t.Errorf("took %v: a bad config must fail before dialing", time.Since(start))
			}
		})
	}
}

// TestJoinAlreadyLive: a second live incarnation of a domain ID in a group
// is refused, naming the live one; the first is undisturbed.
func TestJoinAlreadyLive(t *testing.T) {
	e := newEnv(t)
	e.coordinator(coordinator.Config{})
	a := e.join("a")
	_, err := idc.Join(context.Background(), idc.Config{Group: group, ID: "a", Client: e.cli, LeaseTTL: 2 * time.Second})
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
	start := time.Now()
	_, err = idc.Join(ctx, idc.Config{Group: "g", ID: "a", Endpoints: []string{"http://" + addr}, Logger: testenv.Logger(t)})
	took := time.Since(start)
	if !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrUnavailable wrapping the context's deadline", err)
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "attempts") {
		t.Errorf("err = %q: want the endpoint and the attempts named", err)
	}
	if took > 3500*time.Millisecond {
		t.Errorf("Join took %v with a 2.5 s context", took)
	}
	t.Log(err)
}
