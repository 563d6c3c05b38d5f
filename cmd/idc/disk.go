package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/core/multipath"
	"github.com/idc-dev/idc/internal/disk"
	"github.com/idc-dev/idc/nbd"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/cobra"
)

// diskOptions are the flags of idc disk.
type diskOptions struct {
	member      memberOptions
	size        string
	nbdListen   string
	export      string
	paths       []string
	timeout     time.Duration
	retryDelay  time.Duration
	maxRequest  int
	addressFile string
	drain       time.Duration
	procs       int
}

// blockMessageMax is the channel message size the disk and the driver
// domains allow: the largest NBD request the disk accepts (its
// --max-request, at most this less 64 KiB) plus the block request's
// header and token.
const blockMessageMax = 4<<20 + 64<<10

func newDiskCmd(g *globals) *cobra.Command {
	o := &diskOptions{}
	cmd := &cobra.Command{
		Use:   "disk",
		Short: "Run the multipath disk: an NBD export over two driver domains to the shared storage",
		Long: `Runs the FT domain of the storage scenario: a virtual disk that joins
GROUP as --id and serves an NBD export (--nbd-listen) to stock clients
(qemu-img, qemu-io, nbdcopy, fio, the kernel's nbd-client). Every block
request goes through one driver domain of the group (idc driver) to the
shared storage (idc storage) as a channel call of the connected epoch,
carrying the disk's token of that epoch.

When the active path fails — its channel breaks, or a request goes
unanswered for --timeout — the disk reports the driver faulty and sends
nothing more through any path in that epoch. The next epoch's fence at the
storage guarantees that a request still in the failed path is applied
before it or never; the disk then sends every request whose outcome it does
not know again, with the new epoch's token, through the other driver. A
write is acknowledged to the client only once the storage has applied it.
With no path at all, requests wait, as on a disk with every path down.

A request whose NBD connection closes is still carried to its outcome, and
requests arriving meanwhile wait for it, so a client that reconnects and
sends it again (qemu's reconnect-delay) cannot be overtaken by the old copy.

The group should be in fence mode (idc group set GROUP --mode fence) with
the storage as its resource; --size must not exceed the storage's.`,
		Example: `  idc disk --group disk1 --size 64M --nbd-listen unix:///tmp/disk1.sock
  qemu-io -f raw 'nbd+unix:///idc?socket=/tmp/disk1.sock' -c 'write -P 0xab 0 1M'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDisk(cmd.Context(), g, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	o.member.register(f, "disk")
	f.StringVar(&o.size, "size", "", "the disk's size in bytes, with an optional suffix K, M, G or T (powers of 1024); required")
	f.StringVar(&o.nbdListen, "nbd-listen", "tcp://127.0.0.1:10809", "where to serve NBD: tcp://HOST:PORT or unix:///PATH")
	f.StringVar(&o.export, "export", "idc", "the NBD export's name (clients asking for the empty name get it too)")
	f.StringSliceVar(&o.paths, "paths", nil, "the driver domains to use, in order of preference (default: every other member of the group, by ID)")
	f.DurationVar(&o.timeout, "timeout", disk.DefaultTimeout, "how long a request may go unanswered before its path is reported faulty")
	f.DurationVar(&o.retryDelay, "retry-delay", disk.DefaultRetryDelay, "how long after the storage refused a request (not fenced yet, restarting) it is sent again")
	f.IntVar(&o.maxRequest, "max-request", 1<<20, "the largest NBD read or write accepted, in bytes (a power of two, 4096 to 4 MiB); clients split larger ones")
	f.StringVar(&o.addressFile, "address-file", "", "write the NBD address there once serving (atomically), for scripts")
	f.DurationVar(&o.drain, "drain", 10*time.Second, "on interrupt, how long to let requests in flight finish before ending them")
	f.IntVar(&o.procs, "procs", 1, procsUsage)
	return cmd
}

func (o *diskOptions) validate() (uint64, error) {
	if err := o.member.validate(); err != nil {
		return 0, err
	}
	if o.size == "" {
		return 0, fmt.Errorf("%w: --size is required", proto.ErrConfig)
	}
	size, err := parseBytes(o.size)
	if err != nil {
		return 0, fmt.Errorf("%w: --size: %w", proto.ErrConfig, err)
	}
	switch {
	case size == 0 || size%512 != 0:
		return 0, fmt.Errorf("%w: --size %s must be a positive multiple of 512 bytes", proto.ErrConfig, o.size)
	case o.maxRequest < 4096 || o.maxRequest > 4<<20 || o.maxRequest&(o.maxRequest-1) != 0:
		return 0, fmt.Errorf("%w: --max-request %d must be a power of two from 4096 to 4 MiB", proto.ErrConfig, o.maxRequest)
	case o.timeout <= 0 || o.retryDelay <= 0 || o.drain < 0:
		return 0, fmt.Errorf("%w: --timeout, --retry-delay must be positive and --drain not negative", proto.ErrConfig)
	case o.procs < 0:
		return 0, fmt.Errorf("%w: --procs %d: want 0 (Go's default) or more", proto.ErrConfig, o.procs)
	}
	if _, _, err := splitListen(o.nbdListen); err != nil {
		return 0, fmt.Errorf("%w: --nbd-listen: %w", proto.ErrConfig, err)
	}
	for _, p := range o.paths {
		if err := proto.CheckName("path", p); err != nil {
			return 0, fmt.Errorf("%w: --paths: %w", proto.ErrConfig, err)
		}
		if p == o.member.id {
			return 0, fmt.Errorf("%w: --paths names the disk itself (%s)", proto.ErrConfig, p)
		}
	}
	if _, err := multipath.New(multipath.Config{Paths: o.paths, Timeout: o.timeout, RetryDelay: o.retryDelay}); err != nil {
		return 0, fmt.Errorf("%w: %w", proto.ErrConfig, err)
	}
	return size, nil
}

func runDisk(ctx context.Context, g *globals, o *diskOptions, out io.Writer) error {
	size, err := o.validate()
	if err != nil {
		return err
	}
	setProcs(o.procs)
	log := g.logger().With("group", o.member.group, "domain", o.member.id)
	network, addr, _ := splitListen(o.nbdListen)
	if network == "unix" {
		if err := removeStaleSocket(addr); err != nil {
			return err
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("idc: disk: %w", err)
	}
	defer l.Close()

	cli, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()

	tr := &diskTransport{log: log, eps: map[uint64]*idc.Epoch{}}
	d, err := disk.New(disk.Config{
		Size:       size,
		Multipath:  multipath.Config{Paths: o.paths, Timeout: o.timeout, RetryDelay: o.retryDelay},
		Transport:  tr,
		Clock:      clock.System(),
		EpochEnded: callEpochEnded,
		FirstID:    uint64(time.Now().UnixNano()),
		Logger:     log,
	})
	if err != nil {
		return err
	}
	srv, err := nbd.NewServer(nbd.Config{
		Exports:        []nbd.Export{{Name: o.export, Description: fmt.Sprintf("idc multipath disk %s of group %s", o.member.id, o.member.group), Backend: disk.Backend(d)}},
		MaxRequestSize: uint32(o.maxRequest),
		Logger:         log,
	})
	if err != nil {
		return err
	}

	cfg := o.member.config(g)
	cfg.Client, cfg.Logger = cli, g.logger() // idc adds group and domain itself
	o.member.withClock(ctx, &cfg, log)
	cfg.MaxMessage = blockMessageMax

	// The membership: join, follow the epochs, rejoin as a new incarnation
	// if fenced.
	var wg sync.WaitGroup
	memberCtx, stopMember := context.WithCancel(ctx)
	defer stopMember()
	left := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		left <- followEpochs(memberCtx, cfg, out, log, func(ep *idc.Epoch, m *idc.Membership) {
			tr.connect(ep, m)
			var peers []string
			for _, p := range ep.Peers() {
				peers = append(peers, p.ID)
			}
			d.Connected(ep.Number(), ep.Token(), peers)
			path := d.Stats().Path
			if path == "" {
				path = "none (requests wait)"
			}
			fmt.Fprintf(out, "disk: epoch %d connected: %s; path %s\n", ep.Number(), memberList(ep), path)
			go func() {
				<-ep.Context().Done()
				d.Disconnected(ep.Number())
				tr.disconnect(ep.Number())
			}()
		})
	}()

	uri := nbdURI(network, l.Addr().String(), o.export)
	fmt.Fprintf(out, "disk: serving %s (%s) at %s for group %s as %s\n", o.export, formatBytes(size), uri, o.member.group, o.member.id)
	if o.addressFile != "" {
		if err := writeFileAtomic(o.addressFile, uri+"\n"); err != nil {
			return err
		}
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(context.WithoutCancel(ctx), l) }()

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		if errors.Is(err, nbd.ErrServerClosed) {
			err = nil
		}
	}
	// Drain the NBD connections (their requests in flight may still
	// finish through a path), then end what is left, then leave.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.drain)
	serr := srv.Shutdown(sctx)
	cancel()
	d.Close()
	stopMember()
	wg.Wait()
	lerr := <-left
	if network == "unix" {
		os.Remove(addr)
	}
	s := d.Stats()
	fmt.Fprintf(out, "disk: stopped: %d requests done, %d sendings (%d again), %d failovers, %d paths reported\n", s.Done, s.Sent, s.Resent, s.Failovers, s.Reports)
	if serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = errors.Join(err, serr)
	}
	return errors.Join(err, lerr)
}

// followEpochs joins the group with cfg and calls connected for every
// connected epoch, until ctx ends; then it leaves gracefully. A
// membership that is fenced or evicted is replaced by a new incarnation.
func followEpochs(ctx context.Context, cfg idc.Config, out io.Writer, log *slog.Logger, connected func(*idc.Epoch, *idc.Membership)) error {
	backoff := 100 * time.Millisecond
	for {
		c := cfg
		c.Incarnation = 0 // a fresh one for every membership
		m, err := idc.Join(ctx, c)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("join failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		log.Info("joined", "incarnation", m.Incarnation(), "channels", m.Addr())
		for {
			ep, err := m.Next(ctx)
			if err != nil {
				break
			}
			connected(ep, m)
		}
		if ctx.Err() != nil {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			lerr := m.Leave(lctx)
			cancel()
			m.Close()
			if lerr != nil {
				return fmt.Errorf("leave group %s: %w", cfg.Group, lerr)
			}
			return nil
		}
		fmt.Fprintf(out, "%s: membership ended (%v); joining again as a new incarnation\n", cfg.ID, m.Err())
		m.Close()
	}
}

// memberList names an epoch's members.
func memberList(ep *idc.Epoch) string {
	var ids []string
	for _, m := range ep.Members() {
		ids = append(ids, m.ID)
	}
	return strings.Join(ids, ", ")
}

// callEpochEnded tells whether a call failed only because its epoch
// ended here (then the path is not to blame).
func callEpochEnded(err error) bool {
	return errors.Is(err, idc.ErrEpochEnded) || errors.Is(err, idc.ErrNotConnected) ||
		errors.Is(err, idc.ErrFenced) || errors.Is(err, idc.ErrClosed) || errors.Is(err, context.Canceled)
}

// diskTransport is the disk's transport over idc channels: a call of
// epoch e is an Epoch.Call of that epoch, a report a fault report of the
// membership.
type diskTransport struct {
	log *slog.Logger
	mu  sync.Mutex
	eps map[uint64]*idc.Epoch
	mem map[uint64]*idc.Membership
}

func (t *diskTransport) connect(ep *idc.Epoch, m *idc.Membership) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mem == nil {
		t.mem = map[uint64]*idc.Membership{}
	}
	t.eps[ep.Number()], t.mem[ep.Number()] = ep, m
}

func (t *diskTransport) disconnect(e uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.eps, e)
	delete(t.mem, e)
}

// Call implements disk.Transport: an asynchronous call of the epoch,
// which ends with the epoch. The disk keeps nothing of the response once
// done returned (it copies a read's data), so the response's buffer goes
// back to the channel then (Epoch.GoTransient).
func (t *diskTransport) Call(e uint64, peer string, req []byte, done func([]byte, error)) {
	t.mu.Lock()
	ep := t.eps[e]
	t.mu.Unlock()
	if ep == nil {
		done(nil, fmt.Errorf("%w: epoch %d", idc.ErrEpochEnded, e))
		return
	}
	ep.GoTransient(peer, req, done)
}

// Report implements disk.Transport.
func (t *diskTransport) Report(e uint64, peer string) {
	t.mu.Lock()
	m := t.mem[e]
	t.mu.Unlock()
	if m == nil {
		return // the epoch ended: the report would not count
	}
	go func() {
		// A report the store did not take (no answer, no leader) is tried
		// again while its epoch lasts: the disk sends nothing more through
		// a path it reported until the next epoch, which only the report
		// may bring. (The simulator found the disk waiting for good with
		// one attempt.)
		delay := 100 * time.Millisecond
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := m.ReportFault(ctx, peer)
			cancel()
			switch {
			case err == nil:
				return
			case errors.Is(err, idc.ErrEpochEnded) || errors.Is(err, idc.ErrFenced) || errors.Is(err, idc.ErrLeft) ||
				errors.Is(err, idc.ErrClosed) || !t.live(e):
				t.log.Info("fault report not counted", "peer", peer, "epoch", e, "err", err)
				return
			}
			t.log.Warn("fault report failed; trying again", "peer", peer, "epoch", e, "err", err, "in", delay)
			time.Sleep(delay)
			delay = min(2*delay, time.Second)
		}
	}()
}

// live says whether epoch e is still connected here.
func (t *diskTransport) live(e uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mem[e] != nil
}

// splitListen reads tcp://HOST:PORT or unix:///PATH.
func splitListen(s string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(s, "tcp://"):
		addr = strings.TrimPrefix(s, "tcp://")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return "", "", fmt.Errorf("%q: %w", s, err)
		}
		return "tcp", addr, nil
	case strings.HasPrefix(s, "unix://"):
		addr = strings.TrimPrefix(s, "unix://")
		if !filepath.IsAbs(addr) {
			return "", "", fmt.Errorf("%q: want unix:///absolute/path", s)
		}
		return "unix", addr, nil
	}
	return "", "", fmt.Errorf("%q: want tcp://HOST:PORT or unix:///PATH", s)
}

// removeStaleSocket removes a unix socket left by an earlier run, and
// refuses to touch anything else.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("idc: disk: %w", err)
	case fi.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("%w: --nbd-listen %s exists and is not a socket", proto.ErrConfig, path)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("%w: --nbd-listen %s: another server is listening there", proto.ErrConfig, path)
	}
	return os.Remove(path)
}

// nbdURI is the NBD URI clients use for the export.
func nbdURI(network, addr, export string) string {
	if network == "unix" {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, addr)
	}
	return fmt.Sprintf("nbd://%s/%s", addr, export)
}

// writeFileAtomic writes s to path through a temporary file and a rename.
func writeFileAtomic(path, s string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		return fmt.Errorf("idc: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("idc: %w", err)
	}
	return nil
}
