package multipath

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/internal/scripttest"
)

// TestScripts runs the interaction scripts in testdata/*.txt; each file's
// header says which rule it shows. Regenerate expectations with
//
//	go test ./core/multipath/ -run TestScripts -rewrite
//
// and read the diff: every line is the machine's real output.
//
// Commands (time is t=DURATION, default the previous command's; each
// ends with the machine's state "> epoch=N connected|disconnected
// path=P" and a line per request "> id: state attempt@epoch/path"):
//
//	config [paths=a,b] [timeout=1s] [retry=100ms]   (a new machine)
//	submit id=N
//	abandon id=N
//	connect epoch=N peers=a,b
//	disconnect epoch=N
//	answer id=N attempt=N status=ok|fenced|io|invalid|shutdown
//	fail id=N attempt=N [report]
//	tick
//	close
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		d := &scriptDriver{}
		d.reset(Config{Timeout: time.Second, RetryDelay: 100 * time.Millisecond})
		datadriven.RunTest(t, path, d.run)
	})
}

type scriptDriver struct {
	m   *Machine
	now time.Duration
}

func (d *scriptDriver) reset(cfg Config) {
	m, err := New(cfg)
	if err != nil {
		panic(err)
	}
	d.m, d.now = m, 0
}

var statuses = map[string]block.Status{
	"ok": block.StatusOK, "fenced": block.StatusFenced, "io": block.StatusIO,
	"invalid": block.StatusInvalid, "shutdown": block.StatusShutdown,
}

func (d *scriptDriver) run(t *testing.T, td *datadriven.TestData) string {
	d.now = scripttest.Dur(t, td, "t", d.now)
	id := func() uint64 { return scripttest.Uint(t, td, "id") }
	attempt := func() uint32 { return uint32(scripttest.Uint(t, td, "attempt")) }
	list := func(key string) []string {
		if !td.HasArg(key) {
			return nil
		}
		var s string
		td.ScanArgs(t, key, &s)
		return strings.Split(s, ",")
	}
	var out strings.Builder
	switch td.Cmd {
	case "config":
		d.reset(Config{Paths: list("paths"), Timeout: scripttest.Dur(t, td, "timeout", time.Second),
			RetryDelay: scripttest.Dur(t, td, "retry", 100*time.Millisecond)})
		return "ok\n"
	case "submit":
		if err := d.m.Submit(id(), d.now); err != nil {
			fmt.Fprintf(&out, "error: %v\n", err)
		}
	case "abandon":
		d.m.Abandon(id())
	case "connect":
		d.m.Connected(scripttest.Uint(t, td, "epoch"), list("peers"), d.now)
	case "disconnect":
		d.m.Disconnected(scripttest.Uint(t, td, "epoch"))
	case "answer":
		var s string
		td.ScanArgs(t, "status", &s)
		st, ok := statuses[s]
		if !ok {
			td.Fatalf(t, "status %q", s)
		}
		d.m.Answered(id(), attempt(), st, d.now)
	case "fail":
		d.m.Failed(id(), attempt(), td.HasArg("report"))
	case "tick":
		d.m.Tick(d.now)
	case "close":
		d.m.Close()
	default:
		td.Fatalf(t, "unknown command %q", td.Cmd)
	}
	rd := d.m.Ready()
	for _, r := range rd.Reports {
		fmt.Fprintf(&out, "report %s in %d\n", r.Path, r.Epoch)
	}
	for _, s := range rd.Sends {
		fmt.Fprintf(&out, "send %d#%d via %s in %d\n", s.ID, s.Attempt, s.Path, s.Epoch)
	}
	for _, dn := range rd.Done {
		ab := ""
		if dn.Abandoned {
			ab = " (abandoned)"
		}
		fmt.Fprintf(&out, "done %d %s%s\n", dn.ID, dn.Status, ab)
	}
	out.WriteString(d.m.describe())
	return out.String()
}

// describe prints the machine's state for the scripts.
func (m *Machine) describe() string {
	var b strings.Builder
	conn := "disconnected"
	if m.connected {
		conn = "connected"
	}
	path := m.path
	if path == "" {
		path = "-"
	}
	fmt.Fprintf(&b, "> epoch=%d %s path=%s", m.epoch, conn, path)
	if m.orphans > 0 {
		fmt.Fprintf(&b, " abandoned=%d", m.orphans)
	}
	if at, ok := m.Deadline(); ok {
		fmt.Fprintf(&b, " deadline=%v", at)
	}
	b.WriteString("\n")
	for _, r := range m.sorted() {
		fmt.Fprintf(&b, "> %d: %s", r.id, r.state)
		if r.attempt > 0 {
			fmt.Fprintf(&b, " #%d@%d/%s", r.attempt, r.epoch, r.path)
		}
		if r.abandoned {
			b.WriteString(" abandoned")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{Timeout: 0, RetryDelay: time.Second},
		{Timeout: time.Second},
		{Timeout: time.Second, RetryDelay: time.Second, Paths: []string{"a", "a"}},
		{Timeout: time.Second, RetryDelay: time.Second, Paths: []string{""}},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
	m, err := New(Config{Timeout: time.Second, RetryDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Submit(0, 0); err == nil {
		t.Error("id 0 accepted")
	}
	if err := m.Submit(1, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Submit(1, 0); err == nil {
		t.Error("id submitted twice accepted")
	}
	if got := slices.Collect(func(yield func(uint64) bool) {
		for id := range m.reqs {
			yield(id)
		}
	}); len(got) != 1 {
		t.Errorf("requests %v", got)
	}
}
