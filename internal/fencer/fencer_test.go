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
		{"bad writer", func(c *Config) { c.Writer = "a b" }},
	} {
		c := ok
		tc.mod(&c)
		if _, err := Start(c, guard.New(guard.Config{})); !errors.Is(err, proto.ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", tc.name, err)
		}
	}
}

// recordStore is a store holding one epoch record: it answers every
// transaction (a read of the record gets it), and watches are created but
// see no change.
type recordStore struct {
	record []byte
}

type noWatch struct{}

func (noWatch) RequestProgress() {}
func (noWatch) Cancel()          {}

func (s *recordStore) Grant(time.Duration, time.Duration, func(store.Lease, error))       {}
func (s *recordStore) KeepAlive(store.LeaseID, time.Duration, func(time.Duration, error)) {}
func (s *recordStore) Revoke(store.LeaseID, time.Duration, func(error))                   {}
func (s *recordStore) Txn(t store.Txn, _ time.Duration, done func(store.TxnResponse, error)) {
	resp := store.TxnResponse{Succeeded: true}
	for _, op := range t.Then {
		switch op.Type {
		case store.OpGet:
			resp.Gets = append(resp.Gets, []store.KV{{Key: op.Key, Value: s.record, ModRev: 1}})
		}
	}
	go done(resp, nil)
}
func (s *recordStore) Watch(_ store.WatchRequest, fn func(store.WatchResponse)) store.Watch {
	go fn(store.WatchResponse{Created: true})
	return noWatch{}
}

// TestWriter: with Config.Writer, every fence the driver raises reserves
// writes for that domain: the guard refuses another member's writes
// (ErrNotWriter) and admits its reads; without it, every member writes.
func TestWriter(t *testing.T) {
	rec := proto.EncodeEpoch(proto.EpochRecord{
		Group: "g", Number: 2, State: proto.Connected,
		Members: []proto.Member{{ID: "ft", Incarnation: 3}, {ID: "drv-a", Incarnation: 1}},
	})
	tokOf := func(domain string, inc uint64) token.Token {
		return token.Token{Group: "g", Epoch: 2, Domain: domain, Incarnation: inc}
	}
	for _, tc := range []struct {
		writer       string
		driverWrites error
	}{
		{"", nil},
		{"ft", guard.ErrNotWriter},
	} {
		g := guard.New(guard.Config{Name: "disk"})
		d, err := Start(Config{Resource: "disk", Groups: []string{"g"}, Writer: tc.writer, Store: &recordStore{record: rec}, Clock: clock.System()}, g)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for s := d.Status(); len(s) != 1 || s[0].Acked != 2; s = d.Status() {
			if time.Now().After(deadline) {
				t.Fatalf("writer %q: the fence of 2 was never acknowledged: %+v", tc.writer, s)
			}
			time.Sleep(time.Millisecond)
		}
		d.Stop()
		if f, _ := g.Floor("g"); f.Epoch != 2 || f.Writer != tc.writer {
			t.Errorf("writer %q: the guard's fence is %+v", tc.writer, f)
		}
		for _, r := range []struct {
			what string
			tk   guard.Ticket
			want error
		}{
			{"the writer's write", guard.Ticket{Token: tokOf("ft", 3), Write: true}, nil},
			{"the driver's write", guard.Ticket{Token: tokOf("drv-a", 1), Write: true}, tc.driverWrites},
			{"the driver's read", guard.Ticket{Token: tokOf("drv-a", 1)}, nil},
		} {
			err := g.Begin(&r.tk)
			if err == nil {
				g.End(&r.tk)
			}
			if r.want == nil && err != nil || r.want != nil && !errors.Is(err, r.want) {
				t.Errorf("writer %q: %s: %v, want %v", tc.writer, r.what, err, r.want)
			}
		}
	}
}
