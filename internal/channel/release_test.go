package channel

import (
	"bytes"
	"runtime"
	"sync/atomic"
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

// TestReleaseCalls: a call's response handed back with Op.Release, and a
// request's frame handed back by its handler (Request.Frame) after its
// reply, are read into again — never while still held: every response
// and request arrives intact, also those held a while, and a released
// response's Resp is cleared. Released, a stream of 64 KiB calls
// allocates far less than a buffer per call on either side; kept, at
// least one each.
func TestReleaseCalls(t *testing.T) {
	var release atomic.Bool
	fixed := pattern(7, 1<<16) // the response of every request of 64 KiB
	a, b := pair(t, network.OS{}, network.OS{}, true, func(c *Config) {
		c.MaxMessage = 1 << 17
		c.Handler = func(r *Request) {
			f := r.Frame()
			if len(r.Data) == len(fixed) {
				r.Reply(fixed, nil)
			} else {
				i := int(r.Data[0]) | int(r.Data[1])<<8
				if !bytes.Equal(r.Data[2:], pattern(i, len(r.Data)-2)) {
					t.Errorf("request %d arrived damaged", i)
				}
				data := r.Data
				r.Reply(pattern(i+1, len(r.Data)), nil)
				// The request's bytes are still the handler's after the reply.
				if !bytes.Equal(data[2:], pattern(i, len(data)-2)) {
					t.Errorf("request %d overwritten before its release", i)
				}
			}
			if release.Load() {
				f.Release()
			}
		}
	})
	a.connect(1, a, b)
	b.connect(1, a, b)
	done := make(chan struct{}, 1)
	call := func(req []byte, op *Op) {
		op.Done = func(*Op) { done <- struct{}{} }
		a.m.Call(1, "b", req, op)
		<-done
		if op.Err != nil {
			t.Fatal(op.Err)
		}
	}
	// Intact: every third response held for a few more calls.
	release.Store(true)
	sizes := []int{3000, 65000, 100000}
	type heldOp struct {
		op *Op
		i  int
	}
	var held []heldOp
	for i := range 100 {
		size := sizes[i%len(sizes)]
		op := &Op{}
		call(append([]byte{byte(i), byte(i >> 8)}, pattern(i, size-2)...), op)
		if !bytes.Equal(op.Resp, pattern(i+1, size)) {
			t.Fatalf("response %d arrived damaged", i)
		}
		if i%3 == 0 {
			held = append(held, heldOp{op, i})
		} else {
			op.Release()
			if op.Resp != nil {
				t.Fatal("Release left Resp set")
			}
		}
		for len(held) > 4 {
			h := held[0]
			if !bytes.Equal(h.op.Resp, pattern(h.i+1, sizes[h.i%len(sizes)])) {
				t.Fatalf("response %d, held unreleased, was overwritten", h.i)
			}
			h.op.Release()
			held = held[1:]
		}
	}
	// Bytes allocated per 64 KiB call, both sides in this process.
	req := make([]byte, len(fixed))
	run := func(rel bool, n int) float64 {
		release.Store(rel)
		op := &Op{}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range n {
			call(req, op)
			if rel {
				op.Release()
			}
		}
		runtime.ReadMemStats(&after)
		return float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
	}
	run(true, 100)
	released, kept := run(true, 300), run(false, 300)
	t.Logf("bytes allocated per 64 KiB call: %.0f released, %.0f kept", released, kept)
	if kept < 2<<16 || released > 16<<10 {
		t.Fatalf("bytes allocated per call: %.0f released, %.0f kept: want releasing to spare the request's and the response's buffers", released, kept)
	}
}
