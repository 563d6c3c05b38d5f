package idc_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

func init() { children["IDC_WRITER_CHILD"] = writerChild }

// writerChild joins the test group as "w" and writes to the resource at
// $IDC_WRITER_SOCK, one request at a time, while its epoch allows it (a
// careful application: Epoch.Err right before each request). A request is
// a 4-byte length, then the epoch's token and an 8-byte write number; the
// answer one byte (1 applied, 0 refused).
func writerChild(endpoint string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := testConfig("w", nil)
	cfg.Endpoints = []string{endpoint}
	d, err := idc.Join(ctx, cfg)
	if err != nil {
		fmt.Println("stopped", err)
		return 1
	}
	c, err := net.Dial("unix", os.Getenv("IDC_WRITER_SOCK"))
	if err != nil {
		fmt.Println("stopped", err)
		return 1
	}
	var id uint64
	for {
		ep, err := d.Next(ctx)
		if err != nil {
			fmt.Println("stopped", err)
			return 0
		}
		for ep.Err() == nil {
			id++
			req := ep.Token().Append(make([]byte, 4, 64))
			req = binary.BigEndian.AppendUint64(req, id)
			binary.BigEndian.PutUint32(req, uint32(len(req)-4))
			var ans [1]byte
			if _, err := c.Write(req); err != nil {
				return 1
			}
			if _, err := io.ReadFull(c, ans[:]); err != nil {
				return 1
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// writeServer is a guarded resource's front end: it reads writerChild's
// requests, checks each with the guard and applies it (records it). While
// hold is on it holds requests back, as a driver domain or a congested
// path that delays forwarded writes: the first after admitting it (it is
// then admitted but not applied), the others before.
type writeServer struct {
	g  *guard.Guard
	ln net.Listener

	mu      sync.Mutex
	hold    bool
	held    []*heldWrite
	applies []appliedWrite
	refused int
}

type heldWrite struct {
	t        *guard.Ticket
	admitted bool
	answer   chan byte
}

type appliedWrite struct {
	epoch uint64
	at    time.Time
}

func newWriteServer(t *testing.T, g *guard.Guard) (*writeServer, string) {
	sock := filepath.Join(t.TempDir(), "resource.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &writeServer{g: g, ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s, sock
}

func (s *writeServer) serve(c net.Conn) {
	defer c.Close()
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		if _, err := c.Write([]byte{s.handle(b)}); err != nil {
			return
		}
	}
}

// handle checks and applies one request, or holds it until release.
func (s *writeServer) handle(b []byte) byte {
	tok, _, err := token.Parse(b)
	if err != nil {
		return 0
	}
	t := &guard.Ticket{Token: tok, Write: true}
	s.mu.Lock()
	if s.hold {
		h := &heldWrite{t: t, answer: make(chan byte, 1)}
		if len(s.held) == 0 {
			h.admitted = s.g.Admit(t) == nil
		}
		s.held = append(s.held, h)
		s.mu.Unlock()
		return <-h.answer
	}
	s.mu.Unlock()
	return s.apply(t, false)
}

func (s *writeServer) apply(t *guard.Ticket, admitted bool) byte {
	if !admitted {
		if err := s.g.Admit(t); err != nil {
			s.mu.Lock()
			s.refused++
			s.mu.Unlock()
			return 0
		}
	}
	err := s.g.Apply(t, func() error {
		s.mu.Lock()
		s.applies = append(s.applies, appliedWrite{epoch: t.Token.Epoch, at: time.Now()})
		s.mu.Unlock()
		return nil
	})
	if err != nil {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		return 0
	}
	return 1
}

// release lets the held requests go on and returns how many were
// applied.
func (s *writeServer) release() (held, applied int) {
	s.mu.Lock()
	hs := s.held
	s.held, s.hold = nil, false
	s.mu.Unlock()
	for _, h := range hs {
		a := s.apply(h.t, h.admitted)
		applied += int(a)
		h.answer <- a
	}
	return len(hs), applied
}

// appliesOf returns when each write of epoch e was applied.
func (s *writeServer) appliesOf(e uint64) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []time.Time
	for _, a := range s.applies {
		if a.epoch == e {
			out = append(out, a.at)
		}
	}
	return out
}

// startWriter starts writerChild against the server at sock.
func startWriter(t *testing.T, e *env, sock string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "IDC_WRITER_CHILD="+e.etcd.Endpoints[0], "IDC_WRITER_SOCK="+sock)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// writerGroup starts a coordinator in mode, a guarded resource "disk"
// behind a write server, member a in this process and the writer w in a
// child process, and waits until w has applied writes in the first epoch
// with both.
func writerGroup(t *testing.T, mode proto.Mode) (e *env, srv *writeServer, a *idc.Membership, cmd *exec.Cmd, first testenv.Entry) {
	e = newEnv(t)
	e.coordinator(coordinator.Config{Mode: mode})
	r := e.resource("disk")
	srv, sock := newWriteServer(t, r.g)
	a = e.join("a", bystander)
	cmd = startWriter(t, e, sock)
	first = e.connected(testenv.Mark{}, 20*time.Second, "a", "w")
	r.floor(t, first.Number, 5*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for len(srv.appliesOf(first.Number)) < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("w applied %d writes in epoch %d", len(srv.appliesOf(first.Number)), first.Number)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return e, srv, a, cmd, first
}

// TestG4_FenceMode_StoppedWriterCannotWrite (G4 and G5 in fence mode, real
// processes): a member's process doing writes to a guarded resource is
// stopped (SIGSTOP) while some of its writes are held on their way — one
// admitted by the guard, not yet applied. A peer reports it; the
// coordinator drops it and connects the next epoch as soon as the resource
// acknowledged the fence, without waiting for its lease. The held writes,
// released after the connect, and whatever the process sends once resumed,
// are refused: no write of its epoch is applied after the next epoch
// connected.
func TestG4_FenceMode_StoppedWriterCannotWrite(t *testing.T) {
	e, srv, a, cmd, first := writerGroup(t, proto.ModeFence)

	// Hold w's writes on their way, then stop w.
	srv.mu.Lock()
	srv.hold = true
	srv.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitStopped(t, cmd.Process.Pid)
	mark := e.mark()
	reported := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.ReportFault(ctx, "w"); err != nil {
		t.Fatal(err)
	}
	next := e.connected(mark, 10*time.Second, "a")
	took := next.Seen.Sub(reported)
	// w's lease (2 s, renewed every 400 ms) is certainly valid for
	// another TTL−renewal interval after it was stopped: a coordinator
	// that waited it out could not have connected before.
	if lease := 2*time.Second - 400*time.Millisecond; took >= lease {
		t.Fatalf("fence mode connected %v after the report: it waited for w's lease (%v)", took, lease)
	}
	if !e.acked("disk", next.Number) {
		t.Fatalf("epoch %d connected without the resource's fence acknowledgement", next.Number)
	}

	held, applied := srv.release()
	if held == 0 {
		t.Fatal("no write was held: the test did not exercise the held path")
	}
	if applied != 0 {
		t.Fatalf("%d of %d held writes of epoch %d were applied after epoch %d connected", applied, held, first.Number, next.Number)
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // w runs on, until it learns it was dropped
	for _, at := range srv.appliesOf(first.Number) {
		if at.After(next.Seen) {
			t.Fatalf("a write of epoch %d was applied at %v, after epoch %d connected (seen at %v)", first.Number, at, next.Number, next.Seen)
		}
	}
	t.Logf("connected %v after the report; %d held writes refused; %d refused in all", took.Round(time.Millisecond), held, srv.refused)
}

// TestG4_LeaseMode_WaitsTheLeaseOut: the same stopped writer in lease mode:
// the coordinator connects the next epoch only once the writer's lease has
// certainly run out.
func TestG4_LeaseMode_WaitsTheLeaseOut(t *testing.T) {
	e, _, a, cmd, _ := writerGroup(t, proto.ModeLease)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitStopped(t, cmd.Process.Pid)
	stopped := time.Now()
	mark := e.mark()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.ReportFault(ctx, "w"); err != nil && !errors.Is(err, idc.ErrEpochEnded) {
		t.Fatal(err)
	}
	next := e.connected(mark, 15*time.Second, "a")
	if took, lease := next.Seen.Sub(stopped), 2*time.Second-400*time.Millisecond; took < lease {
		t.Fatalf("lease mode connected %v after w stopped, before its lease (≥ %v left) ran out", took, lease)
	}
}
