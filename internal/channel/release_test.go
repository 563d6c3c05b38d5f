package channel

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"github.com/idc-dev/idc/network"
)

// pattern fills a message of size bytes that says which message it is.
func pattern(i, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte(i*31 + j/7)
	}
	return b
}

// TestReleaseIntact: large messages handed back with Message.Release are
// read into again, and never while the application still holds them:
// every message arrives intact, also those kept for a while before their
// release, and a released message's Data is cleared.
func TestReleaseIntact(t *testing.T) {
	a, b := pair(t, network.OS{}, network.OS{}, true, func(c *Config) { c.MaxMessage = 1 << 17 })
	a.connect(1, a, b)
	b.connect(1, a, b)
	sizes := []int{2000, 4096, 5000, 65536, 100000}
	const n = 300
	go func() {
		for i := range n {
			if _, err := send(a, 1, "b", pattern(i, sizes[i%len(sizes)]), false); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var held []Message
	heldIdx := []int{}
	for i := range n {
		msg, err := recv(t, b, 1, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(msg.Data, pattern(i, sizes[i%len(sizes)])) {
			t.Fatalf("message %d arrived damaged", i)
		}
		// Every third message is held for a few more messages.
		if i%3 == 0 {
			held, heldIdx = append(held, msg), append(heldIdx, i)
		} else {
			msg.Release()
			if msg.Data != nil {
				t.Fatal("Release left Data set")
			}
		}
		for len(held) > 4 {
			if !bytes.Equal(held[0].Data, pattern(heldIdx[0], sizes[heldIdx[0]%len(sizes)])) {
				t.Fatalf("message %d, held unreleased, was overwritten", heldIdx[0])
			}
			held[0].Release()
			held, heldIdx = held[1:], heldIdx[1:]
		}
	}
}

// TestReleaseAllocs: a stream of 64 KiB messages released by the receiver
// allocates well under one buffer per message; kept, one per message.
func TestReleaseAllocs(t *testing.T) {
	a, b := pair(t, network.OS{}, network.OS{}, true)
	a.connect(1, a, b)
	b.connect(1, a, b)
	data := make([]byte, 1<<16)
	run := func(release bool, n int) float64 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			op := &Op{}
			sent := make(chan struct{}, 1)
			op.Done = func(*Op) { sent <- struct{}{} }
			for range n {
				a.m.Send(1, "b", data, op)
				<-sent
				if op.Err != nil {
					t.Error(op.Err)
					return
				}
			}
		}()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range n {
			msg, err := recv(t, b, 1, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if release {
				msg.Release()
			}
		}
		<-done
		runtime.ReadMemStats(&after)
		return float64(after.Mallocs-before.Mallocs) / float64(n)
	}
	run(true, 200) // warm up: buffers, goroutines, queues
	released, kept := run(true, 1000), run(false, 1000)
	t.Logf("allocations per 64 KiB message: %.2f released, %.2f kept", released, kept)
	if kept < 1 || released > kept-0.5 {
		t.Fatalf("allocations per message: %.2f released, %.2f kept: want Release to spare one buffer per message", released, kept)
	}
}
