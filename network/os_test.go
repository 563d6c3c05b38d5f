package network

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"
)

// pair listens at addr, dials it, and returns both ends.
func pair(t *testing.T, addr string) (client, server Conn) {
	t.Helper()
	accepted := make(chan Conn, 1)
	ln, err := OS{}.Listen(addr, func(c Conn) { accepted <- c })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dialed := make(chan error, 1)
	OS{}.Dial(ln.Addr(), 5*time.Second, func(c Conn, err error) { client = c; dialed <- err })
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}
	select {
	case server = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing accepted")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestOSFramesInOrder: frames arrive whole and in order, both ways, over
// TCP and unix sockets; an orderly close ends the peer's Receive with
// io.EOF.
func TestOSFramesInOrder(t *testing.T) {
	for _, addr := range []string{"tcp://127.0.0.1:0", "unix://" + filepath.Join(t.TempDir(), "s")} {
		t.Run(addr[:4], func(t *testing.T) {
			c, s := pair(t, addr)
			got := make(chan string, 200)
			end := make(chan error, 1)
			s.Receive(func(b []byte, err error) {
				if err != nil {
					end <- err
					return
				}
				got <- string(b)
				// Echo, waiting until the reply is written: the next
				// frame is read only then (backpressure).
				sent := make(chan error, 1)
				s.Send(append([]byte("re:"), b...), func(err error) { sent <- err })
				if err := <-sent; err != nil {
					t.Errorf("reply: %v", err)
				}
			})
			replies := make(chan string, 200)
			c.Receive(func(b []byte, err error) {
				if err == nil {
					replies <- string(b)
				}
			})
			const n = 100
			sent := make(chan error, n)
			for i := range n {
				c.Send([]byte(fmt.Sprintf("frame %d %s", i, make([]byte, i*100))), func(err error) { sent <- err })
				if i%32 == 31 { // stay inside the send window
					for range 32 {
						if err := <-sent; err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			for i := range n {
				want := fmt.Sprintf("frame %d %s", i, make([]byte, i*100))
				if g := <-got; g != want {
					t.Fatalf("frame %d: got %d bytes %.12q, want %.12q", i, len(g), g, want)
				}
				if r := <-replies; r != "re:"+want {
					t.Fatalf("reply %d out of order", i)
				}
			}
			c.Close()
			select {
			case err := <-end:
				if !errors.Is(err, io.EOF) {
					t.Fatalf("the peer's Receive ended with %v, want io.EOF", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the peer never saw the close")
			}
			done := make(chan error, 1)
			c.Send([]byte("late"), func(err error) { done <- err })
			if err := <-done; !errors.Is(err, ErrClosed) {
				t.Fatalf("Send on a closed connection: %v, want ErrClosed", err)
			}
		})
	}
}

// TestOSBackpressure: a receiver that does not read fills the socket
// buffers; the sender's window then fills and Send says ErrBusy instead
// of queueing without bound.
func TestOSBackpressure(t *testing.T) {
	c, _ := pair(t, "tcp://127.0.0.1:0") // the server never reads
	frame := make([]byte, 1<<20)
	busy := make(chan struct{}, 1)
	for i := 0; i < 10*SendWindow; i++ {
		c.Send(frame, func(err error) {
			if errors.Is(err, ErrBusy) {
				select {
				case busy <- struct{}{}:
				default:
				}
			}
		})
		select {
		case <-busy:
			return
		default:
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-busy:
	case <-time.After(5 * time.Second):
		t.Fatalf("%d MiB sent to a peer that reads nothing and Send never said ErrBusy", 10*SendWindow)
	}
}

func TestOSErrors(t *testing.T) {
	c, _ := pair(t, "tcp://127.0.0.1:0")
	done := make(chan error, 1)
	c.Send(make([]byte, MaxFrame+1), func(err error) { done <- err })
	if err := <-done; !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
	for _, addr := range []string{"udp://127.0.0.1:1", "tcp://", "127.0.0.1:1"} {
		if _, err := (OS{}).Listen(addr, func(Conn) {}); !errors.Is(err, ErrAddress) {
			t.Errorf("Listen(%q): %v, want ErrAddress", addr, err)
		}
	}
	// A port nobody listens on: take one and close it.
	ln, err := OS{}.Listen("tcp://127.0.0.1:0", func(Conn) {})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr()
	ln.Close()
	dialed := make(chan error, 1)
	OS{}.Dial(addr, time.Second, func(_ Conn, err error) { dialed <- err })
	if err := <-dialed; !errors.Is(err, ErrUnreachable) {
		t.Errorf("dial of a closed port: %v, want ErrUnreachable", err)
	}
}

// TestOSLargeFramesAmongSmall: a stream that mixes small frames with
// frames larger than the read buffer — sent in bursts, so that small
// frames are buffered behind a large one, and then alone — arrives whole
// and in order, across the connection's switch to its larger read buffer.
func TestOSLargeFramesAmongSmall(t *testing.T) {
	for _, addr := range []string{"tcp://127.0.0.1:0", "unix://" + filepath.Join(t.TempDir(), "s")} {
		t.Run(addr[:4], func(t *testing.T) {
			c, s := pair(t, addr)
			sizes := []int{10, 100, readBuffer + 1, 50, 3 * readBuffer, 7, 64 << 10, largeReadBuffer + 3, 1, 2 << 20, 300}
			frame := func(i int) []byte {
				n := sizes[i%len(sizes)]
				b := make([]byte, n)
				for j := range b {
					b[j] = byte(i*13 + j/5)
				}
				return b
			}
			const n = 300
			got := make(chan []byte, n)
			s.Receive(func(b []byte, err error) {
				if err == nil {
					got <- append([]byte(nil), b...)
				}
			})
			go func() {
				sent := make(chan error, SendWindow)
				inflight := 0
				for i := range n {
					if inflight == SendWindow/2 || i%37 == 0 { // bursts, then a pause
						for ; inflight > 0; inflight-- {
							if err := <-sent; err != nil {
								t.Error(err)
								return
							}
						}
						time.Sleep(time.Millisecond)
					}
					c.Send(frame(i), func(err error) { sent <- err })
					inflight++
				}
			}()
			for i := range n {
				select {
				case b := <-got:
					if want := frame(i); string(b) != string(want) {
						t.Fatalf("frame %d: %d bytes, want %d intact", i, len(b), len(want))
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("frame %d never arrived", i)
				}
			}
		})
	}
}
