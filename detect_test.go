package idc_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
	"github.com/idc-dev/idc/proto"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func init() { children["IDC_DETECT_CHILD"] = detectChild }

// detectChild joins the test group as "p" with the default channel
// settings and a handler that answers every call with its request, prints
// "connected <epoch>" for each epoch it holds and, when its membership
// stops, "stopped <error>".
func detectChild(endpoint string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := testConfig("p", nil)
	cfg.Endpoints = []string{endpoint}
	cfg.Handler = idc.HandlerFunc(func(_ context.Context, req idc.Request) ([]byte, error) { return req.Data, nil })
	d, err := idc.Join(ctx, cfg)
	if err != nil {
		fmt.Println("stopped", err)
		return 1
	}
	for {
		ep, err := d.Next(ctx)
		if err != nil {
			fmt.Println("stopped", err)
			return 0
		}
		fmt.Println("connected", ep.Number())
	}
}

// detectGroup is a group {a, p}: a in this process, p a child process of
// the test binary (detectChild), both with the default channel settings,
// the channel between them shown open by a call.
type detectGroup struct {
	e     *env
	a     *idc.Membership
	cfg   idc.Config // a's
	reg   *prometheus.Registry
	lost  chan lostAt // a's mesh reporting p lost, from its log
	child *exec.Cmd
	lines chan string // the child's output
	epoch testenv.Entry
}

// lostAt is when a's channel driver logged that it lost p.
type lostAt struct {
	at    time.Time
	cause string
}

func startDetectGroup(t *testing.T) *detectGroup {
	g := &detectGroup{e: newEnv(t), reg: prometheus.NewRegistry(), lost: make(chan lostAt, 16), lines: make(chan string, 1024)}
	g.e.coordinator(coordinator.Config{})
	g.a = g.e.join("a", func(c *idc.Config) {
		c.Metrics = g.reg
		c.Logger = slog.New(lostHandler{Handler: c.Logger.Handler(), lost: g.lost})
		// The reporter's store operations are bounded by a second, which
		// bounds how long its fault report may take to be written.
		c.OpTimeout = time.Second
		g.cfg = *c
	})
	g.child = exec.Command(os.Args[0], "-test.run=^$")
	g.child.Env = append(os.Environ(), "IDC_DETECT_CHILD="+g.e.etcd.Endpoints[0])
	g.child.Stderr = os.Stderr
	out, err := g.child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = g.child.Process.Signal(syscall.SIGCONT)
		_ = g.child.Process.Kill()
		_ = g.child.Wait()
	})
	go func() {
		defer close(g.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			g.lines <- sc.Text()
		}
	}()
	g.epoch = g.e.connected(testenv.Mark{}, 20*time.Second, "a", "p")
	ep := current(t, g.a, 10*time.Second, "a", "p")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if resp, err := ep.Call(ctx, "p", []byte("ping")); err != nil || string(resp) != "ping" {
		t.Fatalf("a's call to p: %q, %v", resp, err)
	}
	return g
}

// bound is how long after p stopped answering a's fault report may be
// written: a silent peer is reported within Heartbeat·(Misses+½), an
// abrupt close at once; half a heartbeat more for the timers, and the
// reporter's store operation timeout for the write.
func (g *detectGroup) bound() time.Duration {
	return g.cfg.Heartbeat*time.Duration(g.cfg.HeartbeatMisses+1) + g.cfg.OpTimeout
}

// faultSeen is a fault report as a watch saw it.
type faultSeen struct {
	proto.FaultReport
	seen time.Time
}

// watchFaults watches the test group's fault reports written after
// since.
func (g *detectGroup) watchFaults(t *testing.T, since testenv.Mark) <-chan faultSeen {
	ch := make(chan faultSeen, 16)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	wch := g.e.cli.Watch(ctx, proto.Keys{}.Faults(group), clientv3.WithPrefix(), clientv3.WithRev(since.Rev+1))
	go func() {
		for wr := range wch {
			seen := time.Now()
			for _, ev := range wr.Events {
				var r proto.FaultReport
				if ev.Type == clientv3.EventTypePut && json.Unmarshal(ev.Kv.Value, &r) == nil {
					ch <- faultSeen{FaultReport: r, seen: seen}
				}
			}
		}
	}()
	return ch
}

// detected waits for a's report that it lost p (a report of anything else
// fails the test) and checks that it was written within the bound after
// t0 and that a's channel driver gave cause as the reason.
func (g *detectGroup) detected(t *testing.T, faults <-chan faultSeen, t0 time.Time, cause string) {
	t.Helper()
	bound := g.bound()
	var f faultSeen
	select {
	case f = <-faults:
	case <-time.After(bound + 10*time.Second): // for liveness; the bound is checked below
		t.Fatalf("no fault report within %v", bound+10*time.Second)
	}
	if f.Reporter != "a" || f.Suspect != "p" || f.Epoch != g.epoch.Number || f.SuspectIncarnation != findInc(g.epoch.EpochRecord, "p") {
		t.Fatalf("fault report %+v, want a reporting p/%x in epoch %d", f.FaultReport, findInc(g.epoch.EpochRecord, "p"), g.epoch.Number)
	}
	took := f.seen.Sub(t0)
	noticed := "not logged"
	select {
	case l := <-g.lost:
		noticed = fmt.Sprintf("%v (%s)", l.at.Sub(t0).Round(100*time.Microsecond), l.cause)
	default:
	}
	t.Logf("a noticed after %s; its fault report seen in the store after %v (bound %v: heartbeat %v × (%d+1) + op timeout %v)",
		noticed, took.Round(100*time.Microsecond), bound, g.cfg.Heartbeat, g.cfg.HeartbeatMisses, g.cfg.OpTimeout)
	if took > bound {
		t.Errorf("a's fault report was written %v after p stopped answering, above the bound %v", took, bound)
	}
	key := fmt.Sprintf("idc_channel_faults_total{cause=%s,domain=a,group=%s}", cause, group)
	if n := gather(t, g.reg)[key]; n != 1 {
		t.Errorf("%s = %v, want 1 (a must have lost p for that cause)", key, n)
	}
}

// dropped waits for the epoch change that drops p for a's report, and for
// {a} connected.
func (g *detectGroup) dropped(t *testing.T, since testenv.Mark) {
	t.Helper()
	p := proto.Ref{ID: "p", Incarnation: findInc(g.epoch.EpochRecord, "p")}
	next := g.e.h.WaitFor(t, group, since, 20*time.Second, "without p", func(r proto.EpochRecord) bool {
		return r.Number > g.epoch.Number && !proto.Contains(r.Members, p)
	})
	if !strings.Contains(next.Reason, "a reported losing p") {
		t.Errorf("epoch %d dropped p for %q, want a's report", next.Number, next.Reason)
	}
	g.e.connected(since, 20*time.Second, "a")
	current(t, g.a, 10*time.Second, "a")
}

// TestDetectKilledPeer kills a member's process with SIGKILL: the kernel
// closes its sockets, so its peer loses it at once (a reset, not
// silence), reports it, and the group moves on without it.
func TestDetectKilledPeer(t *testing.T) {
	g := startDetectGroup(t)
	mark := g.e.mark()
	faults := g.watchFaults(t, mark)
	t0 := time.Now()
	if err := g.child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	g.detected(t, faults, t0, "reset")
	g.dropped(t, mark)
}

// TestDetectStoppedPeer stops a member's process with SIGSTOP: its
// sockets stay open but it sends nothing, so its peer suspects it after
// Heartbeat·Misses of silence, reports it, and the group moves on without
// it. Resumed, the member finds itself fenced.
func TestDetectStoppedPeer(t *testing.T) {
	g := startDetectGroup(t)
	mark := g.e.mark()
	faults := g.watchFaults(t, mark)
	t0 := time.Now()
	if err := g.child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	g.detected(t, faults, t0, "silent")
	g.dropped(t, mark)
	if err := g.child.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-g.lines:
			if !ok {
				t.Fatal("the child ended without saying why")
			}
			if strings.HasPrefix(l, "stopped ") {
				if !strings.Contains(l, idc.ErrFenced.Error()) {
					t.Errorf("the resumed child %q, want it fenced", l)
				}
				return
			}
		case <-timeout:
			t.Fatal("the resumed child did not stop")
		}
	}
}

// lostHandler passes records on to its handler, and the time and cause
// of each "peer lost" record about p to lost.
type lostHandler struct {
	slog.Handler
	lost chan lostAt
}

func (h lostHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "peer lost" {
		var peer, cause string
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "peer":
				peer = a.Value.String()
			case "cause":
				cause = a.Value.String()
			}
			return true
		})
		if peer == "p" {
			select {
			case h.lost <- lostAt{at: r.Time, cause: cause}:
			default:
			}
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h lostHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return lostHandler{Handler: h.Handler.WithAttrs(as), lost: h.lost}
}

func (h lostHandler) WithGroup(name string) slog.Handler {
	return lostHandler{Handler: h.Handler.WithGroup(name), lost: h.lost}
}
