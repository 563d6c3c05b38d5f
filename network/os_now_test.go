package network

import (
	"path/filepath"
	"testing"
	"time"
)

// TestOSSendNow: SendNow writes a frame at once on an idle connection and
// calls no callback; the next one, with nothing received in between, goes
// through the writer (its callback runs); once a frame was received,
// SendNow writes at once again. Every frame arrives, in order.
func TestOSSendNow(t *testing.T) {
	c, s := pair(t, "unix://"+filepath.Join(t.TempDir(), "s"))
	got := make(chan string, 10)
	s.Receive(func(b []byte, err error) {
		if err == nil {
			got <- string(b)
		}
	})
	echoed := make(chan string, 10)
	c.Receive(func(b []byte, err error) {
		if err == nil {
			echoed <- string(b)
		}
	})
	now := c.(*osConn)
	called := make(chan error, 10)
	done := func(err error) { called <- err }
	if !now.SendNow([]byte("one"), done) {
		t.Fatal("the first frame on an idle connection was not written at once")
	}
	if now.SendNow([]byte("two"), done) {
		t.Fatal("a second frame with nothing received in between was written at once")
	}
	select {
	case err := <-called:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second frame's callback did not run")
	}
	for _, want := range []string{"one", "two"} {
		if g := <-got; g != want {
			t.Fatalf("got %q, want %q", g, want)
		}
	}
	s.Send([]byte("back"), nil)
	if g := <-echoed; g != "back" {
		t.Fatalf("got %q", g)
	}
	if !now.SendNow([]byte("three"), done) {
		t.Fatal("after a frame was received, SendNow did not write at once")
	}
	if g := <-got; g != "three" {
		t.Fatalf("got %q, want three", g)
	}
	select {
	case err := <-called:
		t.Fatalf("a callback ran for a frame written at once: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
}
