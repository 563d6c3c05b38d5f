// Package scenario runs the storage scenario of DESIGN §8 as real
// processes of the idc binary: the store (idc store, embedded etcd and a
// coordinator), the shared storage (idc storage), driver domains (idc
// driver) and the multipath disk (idc disk), each its own OS process with
// its own output, so that tests and the demo can kill (SIGKILL), stop
// (SIGSTOP) and resume them, and stock NBD clients can use the disk.
package scenario

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes a scenario. Zero fields take the defaults documented.
type Config struct {
	// Binary is the idc binary to run; required (tests build it with
	// Build).
	Binary string
	// Dir holds the store's data, the storage file, sockets, address files
	// and the apply log; required.
	Dir string
	// Group is the group's name; default "disk1".
	Group string
	// Mode is the group's mode: fence (default), lease or both.
	Mode string
	// Size is the disk's and the storage's size; default "64M".
	Size string
	// Drivers names the driver domains; default driver-a, driver-b.
	Drivers []string
	// Heartbeat and HeartbeatMisses are every member's channel heartbeat
	// settings; defaults 10ms and 5.
	Heartbeat       time.Duration
	HeartbeatMisses int
	// LeaseTTL is every member's lease; default 2s.
	LeaseTTL time.Duration
	// Timeout is the disk's request timeout; default 1s.
	Timeout time.Duration
	// Output receives every process's output, each line prefixed with the
	// process's name; default discards.
	Output io.Writer
	// StartTimeout bounds the start; default 60s.
	StartTimeout time.Duration
	// Proxied names the drivers whose connections — channels, store and
	// storage — go through a Proxy each, for the nemesis to hold, release
	// or cut (Scenario.Proxies). The storage then listens on TCP.
	Proxied []string
	// Unguarded runs the storage with --unguarded: it checks no token,
	// and the group expects no resource, so departures wait leases out
	// (what lease mode alone is meant for: a resource that cannot check
	// tokens). It shows what fencing prevents.
	Unguarded bool
	// Coordinators, if positive, runs the coordinator candidates as
	// processes of their own ("coordinator-1", ...; the store then runs
	// none), so that one can crash while the store lives on.
	Coordinators int
	// Extra adds flags to a process's command line, by process name
	// ("store", "storage", "disk", a driver's name, or "coordinator" for
	// every coordinator process).
	Extra map[string][]string
}

func (c *Config) defaults() error {
	if c.Binary == "" || c.Dir == "" {
		return errors.New("scenario: Binary and Dir are required")
	}
	if c.Group == "" {
		c.Group = "disk1"
	}
	if c.Mode == "" {
		c.Mode = "fence"
	}
	if c.Size == "" {
		c.Size = "64M"
	}
	if len(c.Drivers) == 0 {
		c.Drivers = []string{"driver-a", "driver-b"}
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 10 * time.Millisecond
	}
	if c.HeartbeatMisses == 0 {
		c.HeartbeatMisses = 5
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 2 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = time.Second
	}
	if c.Output == nil {
		c.Output = io.Discard
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
	return nil
}

// Scenario is a running scenario.
type Scenario struct {
	cfg      Config
	Endpoint string // the store's client URL
	NBD      string // the disk's NBD URI
	ApplyLog string // the storage's apply log
	File     string // the storage's backing file

	mu      sync.Mutex
	procs   map[string]*Proc
	proxies map[string]*Proxies
	closers []func()
	out     *syncWriter

	storageArgs []string // the storage's command line, for RestartStorage
}

// Config returns the scenario's configuration, defaults filled in.
func (s *Scenario) Config() Config { return s.cfg }

// Proxies are the proxies of a driver's connections.
type Proxies struct {
	Channel *Proxy // the disk's channel to the driver
	Store   *Proxy // the driver's store connection
	Storage *Proxy // the driver's connections to the storage
}

// All returns the three proxies.
func (p *Proxies) All() []*Proxy { return []*Proxy{p.Channel, p.Store, p.Storage} }

// Hold holds every connection of the driver: it is cut off, a blackhole.
func (p *Proxies) Hold() {
	for _, x := range p.All() {
		x.Hold()
	}
}

// Release releases every connection of the driver, and what they held.
func (p *Proxies) Release() {
	for _, x := range p.All() {
		x.Release()
	}
}

// Build builds the idc binary into dir and returns its path.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "idc")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/idc-dev/idc/cmd/idc")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("scenario: go build: %v\n%s", err, out)
	}
	return bin, nil
}

// BuildTemp builds the idc binary into a new temporary directory and
// returns its path and a function that removes the directory (for a
// TestMain).
func BuildTemp(ctx context.Context) (string, func(), error) {
	dir, err := os.MkdirTemp("", "idc-bin-")
	if err != nil {
		return "", nil, err
	}
	bin, err := Build(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// LogWriter is a writer for Config.Output that hands each line to l's Log
// (a *testing.T's, say).
func LogWriter(l interface{ Log(args ...any) }) io.Writer { return logWriter{l} }

type logWriter struct{ l interface{ Log(args ...any) } }

func (w logWriter) Write(b []byte) (int, error) {
	w.l.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// Start starts the store, configures the group, then starts the storage,
// the drivers and the disk, and returns once the disk serves NBD through
// a path. On error it stops whatever it started.
func Start(ctx context.Context, cfg Config) (s *Scenario, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	s = &Scenario{cfg: cfg, procs: map[string]*Proc{}, proxies: map[string]*Proxies{}, out: &syncWriter{w: cfg.Output},
		ApplyLog: filepath.Join(cfg.Dir, "apply.log"), File: filepath.Join(cfg.Dir, "storage.img")}
	started := s // the returns below set s to nil
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	storeArgs := []string{"store", "--data-dir", filepath.Join(cfg.Dir, "store"),
		"--listen-client", s.Endpoint, "--listen-peer", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--mode", cfg.Mode}
	if cfg.Coordinators > 0 {
		storeArgs = append(storeArgs, "--no-coordinator")
	}
	if _, err := s.start(ctx, "store", storeArgs, "store: embedded etcd serving"); err != nil {
		return nil, err
	}
	for _, c := range s.Coordinators() {
		if err := s.StartCoordinator(ctx, c); err != nil {
			return nil, err
		}
	}
	groupArgs := []string{"group", "set", cfg.Group, "--mode", cfg.Mode, "--resources", "storage"}
	storageArgs := []string{"--resource", "storage", "--writer", "disk"}
	if cfg.Unguarded {
		groupArgs = groupArgs[:len(groupArgs)-2]
		storageArgs = []string{"--unguarded"}
	}
	if err := s.run(ctx, groupArgs...); err != nil {
		return nil, err
	}
	// The storage listens on a unix socket (proxies forward TCP to it):
	// its address stays the same when it restarts.
	s.storageArgs = append([]string{"storage", "--file", s.File, "--size", cfg.Size,
		"--group", cfg.Group, "--listen", "unix://" + filepath.Join(cfg.Dir, "storage.sock"),
		"--apply-log", s.ApplyLog, "--address-file", filepath.Join(cfg.Dir, "storage.addr")}, storageArgs...)
	if _, err := s.start(ctx, "storage", s.storageArgs, "storage: serving"); err != nil {
		return nil, err
	}
	for _, d := range cfg.Drivers {
		if err := s.StartDriver(ctx, d); err != nil {
			return nil, err
		}
	}
	diskAddr := filepath.Join(cfg.Dir, "disk.addr")
	if _, err := s.start(ctx, "disk", append([]string{"disk", "--group", cfg.Group, "--id", "disk", "--size", cfg.Size,
		"--nbd-listen", "unix://" + filepath.Join(cfg.Dir, "disk.sock"), "--address-file", diskAddr,
		"--timeout", cfg.Timeout.String()}, s.memberFlags("disk")...), "path driver-"); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(diskAddr)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	s.NBD = strings.TrimSpace(string(b))
	return s, nil
}

// memberFlags are the flags every member shares. A member accepts
// channels on a unix socket in the scenario's directory (all domains run
// on this host, and a unix socket costs a third of loopback TCP's CPU per
// frame); a proxied driver advertises its proxy's TCP address instead,
// which forwards to that socket.
func (s *Scenario) memberFlags(name string) []string {
	return []string{"--heartbeat", s.cfg.Heartbeat.String(), "--heartbeat-misses", strconv.Itoa(s.cfg.HeartbeatMisses),
		"--lease-ttl", s.cfg.LeaseTTL.String(), "--listen", "unix://" + s.sock(name)}
}

// sock is the path of member name's channel socket.
func (s *Scenario) sock(name string) string { return filepath.Join(s.cfg.Dir, name+".chan.sock") }

// Coordinators returns the names of the coordinator processes
// (Config.Coordinators).
func (s *Scenario) Coordinators() []string {
	var out []string
	for i := range s.cfg.Coordinators {
		out = append(out, fmt.Sprintf("coordinator-%d", i+1))
	}
	return out
}

// StartCoordinator starts (or restarts) the coordinator process name, a
// candidate of the store's election named as its process.
func (s *Scenario) StartCoordinator(ctx context.Context, name string) error {
	args := []string{"store", "--etcd-endpoints", s.Endpoint, "--name", name, "--mode", s.cfg.Mode}
	args = append(args, s.cfg.Extra["coordinator"]...)
	_, err := s.start(ctx, name, args, "coordinator: candidate")
	return err
}

// rateFile is where SetClockRate writes driver name's clock rate.
func (s *Scenario) rateFile(name string) string { return filepath.Join(s.cfg.Dir, name+".clock-rate") }

// SetClockRate sets driver name's clock to run at rate of real time (its
// --clock-rate-file, then SIGUSR1), until it is set again or the driver
// restarts.
func (s *Scenario) SetClockRate(name string, rate float64) error {
	p := s.Proc(name)
	if p == nil {
		return fmt.Errorf("scenario: no process %s", name)
	}
	if err := os.WriteFile(s.rateFile(name), []byte(strconv.FormatFloat(rate, 'f', -1, 64)+"\n"), 0o644); err != nil {
		return fmt.Errorf("scenario: %w", err)
	}
	return p.Signal(syscall.SIGUSR1)
}

// RestartStorage kills the storage (SIGKILL) if it runs and starts it
// again on the same file, apply log and socket; it returns once it
// serves. Until it has read the group's epoch record again, its guard
// refuses every request.
func (s *Scenario) RestartStorage(ctx context.Context) error {
	if p := s.Proc("storage"); p != nil {
		p.Kill()
	}
	_, err := s.start(ctx, "storage", s.storageArgs, "storage: serving")
	return err
}

// StartDriver starts (or restarts) the driver domain name.
func (s *Scenario) StartDriver(ctx context.Context, name string) error {
	// A killed driver left its socket behind.
	if err := os.Remove(s.sock(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("scenario: %w", err)
	}
	args := append([]string{"driver", "--group", s.cfg.Group, "--id", name,
		"--clock-rate-file", s.rateFile(name)}, s.memberFlags(name)...)
	if slices.Contains(s.cfg.Proxied, name) {
		px, pflags, err := s.proxy(name)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.proxies[name] = px
		s.mu.Unlock()
		args = append(args, pflags...)
	} else {
		args = append(args, "--storage-file", filepath.Join(s.cfg.Dir, "storage.addr"))
	}
	_, err := s.start(ctx, name, args, "epoch")
	return err
}

// proxy sets up the proxies of a driver and returns the flags that send
// its connections through them (later flags override memberFlags').
func (s *Scenario) proxy(name string) (*Proxies, []string, error) {
	if old := s.Proxies(name); old != nil {
		for _, p := range old.All() {
			p.Close()
		}
	}
	b, err := os.ReadFile(filepath.Join(s.cfg.Dir, "storage.addr"))
	if err != nil {
		return nil, nil, fmt.Errorf("scenario: %w", err)
	}
	storage := strings.TrimSpace(string(b))
	storage = strings.TrimPrefix(storage, "tcp://") // a unix:// address stays as it is
	// The driver listens on its unix socket (memberFlags), which no other
	// process can take as it could a port chosen before it listens.
	listen := "unix://" + s.sock(name)
	px := &Proxies{}
	for _, t := range []struct {
		p      **Proxy
		target string
	}{{&px.Channel, listen}, {&px.Store, strings.TrimPrefix(s.Endpoint, "http://")}, {&px.Storage, storage}} {
		if *t.p, err = NewProxy(t.target); err != nil {
			return nil, nil, err
		}
		s.closers = append(s.closers, (*t.p).Close)
	}
	return px, []string{"--advertise", "tcp://" + px.Channel.Addr(),
		"--storage", "tcp://" + px.Storage.Addr(), "--etcd-endpoints", "http://" + px.Store.Addr()}, nil
}

// Proxies returns the proxies of driver name (nil if it is not proxied).
func (s *Scenario) Proxies(name string) *Proxies {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proxies[name]
}

// Proc returns the process called name (nil if none).
func (s *Scenario) Proc(name string) *Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[name]
}

// Close kills every process (the disk first, the store last) and waits
// for them.
func (s *Scenario) Close() {
	order := []string{"disk"}
	order = append(order, s.cfg.Drivers...)
	order = append(order, "storage")
	order = append(order, s.Coordinators()...)
	order = append(order, "store")
	for _, n := range order {
		if p := s.Proc(n); p != nil {
			p.Stop(5 * time.Second)
		}
	}
	for _, c := range s.closers {
		c()
	}
}

// run runs a one-shot idc command against the store.
func (s *Scenario) run(ctx context.Context, args ...string) error {
	args = append(args, "--etcd-endpoints", s.Endpoint)
	cmd := exec.CommandContext(ctx, s.cfg.Binary, args...)
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(s.out, "[idc %s] %s", strings.Join(args, " "), out)
	if err != nil {
		return fmt.Errorf("scenario: idc %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// start starts a long-running process and waits until a line of its
// output contains ready.
func (s *Scenario) start(ctx context.Context, name string, args []string, ready string) (*Proc, error) {
	if extra := s.cfg.Extra[name]; len(extra) > 0 {
		args = append(args, extra...)
	}
	if name != "store" && !slices.Contains(args, "--etcd-endpoints") {
		args = append(args, "--etcd-endpoints", s.Endpoint)
	}
	p, stderr, err := startProc(name, append([]string{s.cfg.Binary}, args...), s.out)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.procs[name] = p
	s.mu.Unlock()
	if err := p.waitReady(ctx, ready, stderr); err != nil {
		return nil, err
	}
	return p, nil
}

// Launch starts argv as a process called name — any command, such as
// an idc binary run inside a network namespace with ip netns exec — and
// waits until a line of its standard output contains ready. Each line
// it prints goes to out prefixed with its name; out must take writes
// from several goroutines (LogWriter's does). If it does not get ready
// before ctx ends, Launch kills it.
func Launch(ctx context.Context, name string, argv []string, out io.Writer, ready string) (*Proc, error) {
	p, stderr, err := startProc(name, argv, out)
	if err != nil {
		return nil, err
	}
	if err := p.waitReady(ctx, ready, stderr); err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

// startProc starts argv as process name; it is killed if the caller dies.
func startProc(name string, argv []string, out io.Writer) (*Proc, *prefixWriter, error) {
	p := &Proc{Name: name, changed: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	stderr := &prefixWriter{name: name, w: out}
	p.cmd.Stderr = stderr
	if err := p.cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("scenario: start %s: %w", name, err)
	}
	go p.read(stdout, out)
	return p, stderr, nil
}

// waitReady waits for a line containing ready and says what the process
// printed last if none comes.
func (p *Proc) waitReady(ctx context.Context, ready string, stderr *prefixWriter) error {
	if err := p.WaitLine(ctx, ready); err != nil {
		lines := append(p.Lines(), stderr.last()...)
		return fmt.Errorf("scenario: %s did not get ready: %w; its last output:\n  %s", p.Name, err, strings.Join(lines[max(0, len(lines)-8):], "\n  "))
	}
	return nil
}

// Proc is a process of the scenario.
type Proc struct {
	Name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	history []string      // every stdout line
	times   []time.Time   // when each was read
	changed chan struct{} // closed and replaced when a line comes
	seen    int           // lines WaitLine has looked at
	exited  chan struct{}
	err     error
}

func (p *Proc) read(r io.Reader, out io.Writer) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintf(out, "[%s] %s\n", p.Name, line)
		p.mu.Lock()
		p.history = append(p.history, line)
		p.times = append(p.times, time.Now())
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	p.err = p.cmd.Wait()
	close(p.exited)
}

// Lines returns every line the process printed on stdout so far.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.history...)
}

// Line is a line of a process's output and when it was read.
type Line struct {
	At   time.Time
	Text string
}

// TimedLines returns every line of the process's standard output so far,
// each with the time it was read.
func (p *Proc) TimedLines() []Line {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Line, len(p.history))
	for i, l := range p.history {
		out[i] = Line{At: p.times[i], Text: l}
	}
	return out
}

// WaitLine waits for a line, printed after the lines seen by earlier
// WaitLine calls, that contains s.
func (p *Proc) WaitLine(ctx context.Context, s string) error {
	p.mu.Lock()
	from := p.seen
	p.mu.Unlock()
	i, _, err := p.WaitFor(ctx, from, func(l string) bool { return strings.Contains(l, s) })
	if err != nil {
		return fmt.Errorf("waiting for %q: %w", s, err)
	}
	p.mu.Lock()
	p.seen = max(p.seen, i+1)
	p.mu.Unlock()
	return nil
}

// WaitFor waits for the first line from the from-th on (counting from 0)
// that match accepts, and returns its index and text.
func (p *Proc) WaitFor(ctx context.Context, from int, match func(string) bool) (int, string, error) {
	for {
		p.mu.Lock()
		for i := from; i < len(p.history); i++ {
			if match(p.history[i]) {
				l := p.history[i]
				p.mu.Unlock()
				return i, l, nil
			}
		}
		from = len(p.history)
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.exited:
			p.mu.Lock()
			n := len(p.history)
			p.mu.Unlock()
			if n > from {
				continue
			}
			return 0, "", fmt.Errorf("%s exited (%v)", p.Name, p.err)
		case <-ctx.Done():
			return 0, "", fmt.Errorf("%s: %w", p.Name, ctx.Err())
		}
	}
}

// Count returns how many lines the process printed so far.
func (p *Proc) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.history)
}

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill kills the process (SIGKILL) and waits for it to end.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Exited is closed once the process has ended.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is how the process ended (after Exited).
func (p *Proc) Err() error { return p.err }

// Stop asks the process to stop (SIGCONT, in case it was stopped, then
// SIGTERM), and kills it if it has not ended within grace.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.Kill()
	}
}

// freePorts returns n free TCP ports on loopback.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// syncWriter serialises writes from several goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *syncWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

// prefixWriter prefixes each line with a process's name.
type prefixWriter struct {
	name string
	w    io.Writer
	buf  []byte
	mu   sync.Mutex
	tail []string // the last lines, for errors
}

// last returns the last lines written.
func (p *prefixWriter) last() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.tail)
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(p.w, "[%s] %s\n", p.name, p.buf[:i])
		if len(p.tail) == 8 {
			p.tail = append(p.tail[:0], p.tail[1:]...)
		}
		p.tail = append(p.tail, string(p.buf[:i]))
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}
