package fencer

import (
	"errors"
	"testing"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
	"github.com/idc-dev/idc/token"
)

// silentStore is a store that never answers (unreachable).
type silentStore struct{ calls int }

func (s *silentStore) Grant(time.Duration, time.Duration, func(store.Lease, error)) { s.calls++ }
func (s *silentStore) KeepAlive(store.LeaseID, time.Duration, func(time.Duration, error)) {
	s.calls++
}
func (s *silentStore) Revoke(store.LeaseID, time.Duration, func(error)) { s.calls++ }
func (s *silentStore) Txn(store.Txn, time.Duration, func(store.TxnResponse, error)) {
	s.calls++
}
func (s *silentStore) Watch(store.WatchRequest, func(store.WatchResponse)) store.Watch {
	s.calls++
	return nil
}

// TestUnreachableStoreRefusesEverything: a resource that restarts while
// the store is unreachable has read no fence: its guard refuses every
// request, of any epoch, until it has.
func TestUnreachableStoreRefusesEverything(t *testing.T) {
	g := guard.New(guard.Config{Name: "disk"})
	st := &silentStore{}
	d, err := Start(Config{Resource: "disk", Groups: []string{"g"}, Store: st, Clock: clock.System()}, g)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	time.Sleep(10 * time.Millisecond)
	if st.calls == 0 {
		t.Fatal("the driver did not try the store")
	}
	for e := uint64(1); e < 100; e += 7 {
		tk := &guard.Ticket{Token: token.Token{Group: "g", Epoch: e, Domain: "a", Incarnation: 1}, Write: true}
		if err := g.Begin(tk); !errors.Is(err, guard.ErrNoFence) {
			t.Fatalf("epoch %d: %v, want ErrNoFence", e, err)
		}
	}
	if s := d.Status(); len(s) != 1 || s[0].Registered || s[0].Fenced != 0 || s[0].Acked != 0 {
		t.Fatalf("status %+v", s)
	}
}

func TestConfigRefused(t *testing.T) {
	ok := Config{Resource: "disk", Groups: []string{"g"}, Store: &silentStore{}, Clock: clock.System()}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no resource", func(c *Config) { c.Resource = "" }},
		{"bad resource", func(c *Config) { c.Resource = "a/b" }},
		{"no group", func(c *Config) { c.Groups = nil }},
		{"bad group", func(c *Config) { c.Groups = []string{"g", ".x"} }},
		{"no store", func(c *Config) { c.Store = nil }},
		{"negative timeout", func(c *Config) { c.OpTimeout = -1 }},
	} {
		c := ok
		tc.mod(&c)
		if _, err := Start(c, guard.New(guard.Config{})); !errors.Is(err, proto.ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", tc.name, err)
		}
	}
}
