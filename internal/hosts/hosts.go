// Package hosts builds a small network of hosts out of Linux network
// namespaces, for end-to-end tests that need several machines: each host
// is a namespace with one interface (eth0) and its own address on a
// private subnet, 10.77.0.0/24, plugged into a bridge that lives in a
// namespace of its own, so nothing is added to the machine's own
// network. A test runs processes inside a host (Host.Command), cuts a
// host off (Partition) or only from some others (Block), heals it, and
// dials into a host from the test process itself (Host.DialContext).
//
// Every name is unique to the Net (its process ID and a counter), so
// tests in parallel packages do not collide, and Close deletes every
// namespace the Net made, which deletes its links with it. A Net whose
// process died without closing it is removed by the next New.
//
// It needs root and the ip command (iproute2); Check says whether it
// can run here.
package hosts

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrUnavailable is wrapped by Check's and New's errors when network
// namespaces cannot be made here.
var ErrUnavailable = errors.New("hosts: network namespaces unavailable")

// Subnet is the hosts' subnet; host i (from 1) is Subnet's .i+1 (the
// bridge itself has no address).
const Subnet = "10.77.0.0/24"

// prefix starts every namespace name a Net makes.
const prefix = "idct-"

var seq atomic.Int64

// Check reports why network namespaces cannot be used here (not root,
// no ip command, a namespace cannot be made), or nil.
func Check(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: not root", ErrUnavailable)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: no ip command (iproute2): %v", ErrUnavailable, err)
	}
	name := fmt.Sprintf("%s%d-%d-check", prefix, os.Getpid(), seq.Add(1))
	if err := ip(ctx, "netns", "add", name); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return ip(ctx, "netns", "del", name)
}

// Net is a bridge and the hosts plugged into it.
type Net struct {
	tag    string // unique: prefix, pid, counter
	bridge string // the bridge's namespace

	mu     sync.Mutex
	hosts  []*Host
	closed bool
}

// Host is one namespace on the Net.
type Host struct {
	// Name is the host's name in the test.
	Name string
	// NS is its network namespace's name (ip netns).
	NS string
	// IP is its address.
	IP string

	n    *Net
	veth string // its link's end in the bridge's namespace
}

// New makes a Net: a namespace holding a bridge. It first removes the
// namespaces of Nets whose process is gone.
func New(ctx context.Context) (*Net, error) {
	if err := Check(ctx); err != nil {
		return nil, err
	}
	sweep(ctx)
	n := &Net{tag: fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), seq.Add(1))}
	n.bridge = n.tag + "-br"
	if err := ip(ctx, "netns", "add", n.bridge); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"link", "set", "br0", "up"},
	} {
		if err := ip(ctx, append([]string{"-n", n.bridge}, args...)...); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// sweep deletes the namespaces of Nets whose process no longer runs.
func sweep(ctx context.Context) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix) {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(f[0], prefix), "-", 2)[0])
		if err != nil || pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue // alive, or not ours to judge
		}
		_ = ip(ctx, "netns", "del", f[0])
	}
}

// AddHost adds a host called name (letters, digits, '-'; at most 12)
// with the next address of Subnet, and brings its link up.
func (n *Net) AddHost(ctx context.Context, name string) (*Host, error) {
	if name == "" || len(name) > 12 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return nil, fmt.Errorf("hosts: host name %q: want up to 12 of a-z, 0-9 and '-'", name)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, errors.New("hosts: the net is closed")
	}
	i := len(n.hosts) + 1
	if i > 250 {
		n.mu.Unlock()
		return nil, errors.New("hosts: the subnet is full")
	}
	h := &Host{Name: name, NS: n.tag + "-" + name, IP: fmt.Sprintf("10.77.0.%d", i+1), n: n, veth: fmt.Sprintf("v%d", i)}
	for _, o := range n.hosts {
		if o.Name == name {
			n.mu.Unlock()
			return nil, fmt.Errorf("hosts: host %q exists", name)
		}
	}
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	if err := ip(ctx, "netns", "add", h.NS); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", n.bridge, "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"-n", n.bridge, "link", "set", h.veth, "master", "br0", "up"},
		{"-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
	} {
		if err := ip(ctx, args...); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// Hosts returns the hosts added so far.
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Host(nil), n.hosts...)
}

// Close deletes every namespace of the Net, and so every link. Processes
// still running in a host keep its namespace alive, unnamed, until they
// end: stop them first. It returns the first error but tries them all.
func (n *Net) Close() error {
	n.mu.Lock()
	n.closed = true
	hosts := n.hosts
	n.mu.Unlock()
	ctx := context.Background()
	var first error
	for _, ns := range append([]string{n.bridge}, nsNames(hosts)...) {
		if err := ip(ctx, "netns", "del", ns); err != nil && first == nil && !strings.Contains(err.Error(), "No such file") {
			first = err
		}
	}
	return first
}

func nsNames(hs []*Host) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.NS
	}
	return out
}

// Command returns argv run inside the host: ip netns exec, which then
// executes argv in place, so the process's ID is argv's own.
func (h *Host) Command(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", h.NS}, argv...)
}

// Partition cuts the host off from every other: its link to the bridge
// goes down, so whatever it sends or is sent is lost (no error, no reset:
// connections hang as behind a dead switch).
func (h *Host) Partition(ctx context.Context) error {
	return ip(ctx, "-n", h.n.bridge, "link", "set", h.veth, "down")
}

// Heal undoes Partition.
func (h *Host) Heal(ctx context.Context) error {
	return ip(ctx, "-n", h.n.bridge, "link", "set", h.veth, "up")
}

// Block cuts the host off from others only, both ways: each side gets a
// blackhole route to the other's address, so packets between them are
// dropped silently while both still reach the rest.
func (h *Host) Block(ctx context.Context, others ...*Host) error {
	for _, o := range others {
		if err := ip(ctx, "-n", h.NS, "route", "add", "blackhole", o.IP+"/32"); err != nil {
			return err
		}
		if err := ip(ctx, "-n", o.NS, "route", "add", "blackhole", h.IP+"/32"); err != nil {
			return err
		}
	}
	return nil
}

// Unblock undoes Block.
func (h *Host) Unblock(ctx context.Context, others ...*Host) error {
	var first error
	for _, o := range others {
		for _, args := range [][]string{
			{"-n", h.NS, "route", "del", "blackhole", o.IP + "/32"},
			{"-n", o.NS, "route", "del", "blackhole", h.IP + "/32"},
		} {
			if err := ip(ctx, args...); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// inside runs f on a thread that has entered the host's network
// namespace, so the sockets f makes belong to the host (a socket keeps
// its namespace for life, whichever thread uses it later). The thread
// goes back to its own namespace afterwards: it must live on, because a
// child process started from it (os/exec) with Pdeathsig, as
// internal/scenario starts them, would be killed when it ended.
func inside[T any](h *Host, f func() (T, error)) (T, error) {
	var zero T
	runtime.LockOSThread()
	own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return zero, fmt.Errorf("hosts: own namespace: %w", err)
	}
	defer own.Close()
	ns, err := os.Open("/var/run/netns/" + h.NS)
	if err != nil {
		runtime.UnlockOSThread()
		return zero, fmt.Errorf("hosts: %s: %w", h.Name, err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return zero, fmt.Errorf("hosts: %s: setns: %w", h.Name, err)
	}
	v, err := f()
	if rerr := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); rerr != nil {
		// The thread, stuck in the host's namespace, must run nothing else.
		panic(fmt.Sprintf("hosts: cannot return a thread to its own network namespace: %v", rerr))
	}
	runtime.UnlockOSThread()
	return v, err
}

// DialContext dials addr from inside the host, as a process running
// there would. For gRPC clients, such as etcd's, pass Dial as
// grpc.WithContextDialer(h.Dial).
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return inside(h, func() (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
}

// Listen listens at addr inside the host, as a process running there
// would.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	return inside(h, func() (net.Listener, error) { return net.Listen(network, addr) })
}

// Dial dials TCP address addr from inside the host (the form of gRPC's
// WithContextDialer).
func (h *Host) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return h.DialContext(ctx, "tcp", addr)
}

// ip runs the ip command with args.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("hosts: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
