package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/guard"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/storage"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
)

// storageOptions are the flags of idc storage.
type storageOptions struct {
	file            string
	size            string
	blockSize       int
	listen          string
	resource        string
	groups          []string
	writer          string
	applyLog        string
	addressFile     string
	metricsListen   string
	maxInFlight     int
	shutdownTimeout time.Duration
	procs           int
	unguarded       bool
}

// storagePlan is what idc storage's flags come to, once checked.
type storagePlan struct {
	size   int64
	create bool   // the file does not exist: it is created
	socket string // the unix socket's path, if --listen is one
}

func newStorageCmd(g *globals) *cobra.Command {
	o := &storageOptions{}
	cmd := &cobra.Command{
		Use:   "storage",
		Short: "Run the shared block store of the storage scenario: a file served to the driver domains, guarded by the groups' fences",
		Long: `Runs the shared storage of the multipath disk: the file --file, of --size
bytes, served at --listen to the driver domains (idc driver) over resource
connections — plain framed connections, one block request a frame, one
answer a frame back. Each request carries the token of the disk that sent
it, and the store's guard checks it in one step with the start of its
apply: a request of an epoch that a later fence ended is refused
(answered "fenced") and never applied, however late it arrives.

The store registers as resource --resource in every --group (for good: a
resource that is down holds fence-mode changes back until it returns or
an operator removes it, idc fence remove) and keeps its guard fenced at
each group's epochs, acknowledging every fence once the applies of older
epochs have ended. Until it has read a group's epoch record it refuses
every request of the group. With --writer, only that domain's writes are
admitted (reads from every member).

--file is created with --size bytes if it does not exist; an existing file
is used as it is (never truncated), and must hold at least --size bytes
(without --size, its size is the store's). --apply-log appends one JSON
line for every write, trim and zero applied and for every fence once it
holds, for checkers. --address-file receives the address to dial once the
store listens (written atomically; removed on exit), so that scripts and
'idc driver --storage-file' find a port chosen by the system.

With --unguarded the store checks no token and fences nothing (it does not
register as a resource): it applies every request of any epoch, as a
resource that cannot check tokens would. Lease mode alone is correct for
such a resource only while no request is delayed longer than a lease; the
demo runs it to show a stale write landing. Never use it for data.

On SIGINT or SIGTERM the store stops accepting, answers the requests not
yet started "shutdown", waits up to --shutdown-timeout for those under
way, flushes the apply log, closes the file and stops fencing.`,
		Example: `  idc storage --file disk1.img --size 64M --group disk1 --writer disk
  idc storage --file disk1.img --group disk1 --listen unix:///tmp/storage.sock --apply-log apply.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStorage(cmd.Context(), g, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.file, "file", "", "the store's backing file; required")
	f.StringVar(&o.size, "size", "", "the store's size in bytes, with an optional suffix K, M or G (powers of 1024); required if --file does not exist")
	f.IntVar(&o.blockSize, "block-size", 4096, "the block size in bytes: a power of two, at least 512")
	f.StringVar(&o.listen, "listen", idc.DefaultListen, "where the driver domains connect: tcp://HOST:PORT (port 0 for any) or unix:///PATH")
	f.StringVar(&o.resource, "resource", "storage", "the resource's name in its groups")
	f.StringSliceVar(&o.groups, "group", nil, "a group whose members use the store (repeat the flag or give a comma-separated list); required")
	f.StringVar(&o.writer, "writer", "", "the one domain whose writes are admitted (default: every member's)")
	f.StringVar(&o.applyLog, "apply-log", "", "append the apply log (JSON lines: every write applied, every fence that holds) to this file")
	f.StringVar(&o.addressFile, "address-file", "", "write the address to dial to this file once listening")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve the store's Prometheus metrics at this host:port under /metrics (default: off)")
	f.IntVar(&o.maxInFlight, "max-in-flight", storage.DefaultMaxInFlight, "requests of one connection applied at once; later ones wait")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on exit, how long to wait for the requests under way")
	f.IntVar(&o.procs, "procs", 1, procsUsage)
	f.BoolVar(&o.unguarded, "unguarded", false, "check no token and fence nothing: apply every request of any epoch, as a resource that cannot check tokens does (what lease mode alone is meant for); to show what fencing prevents, never for data that matters")
	return cmd
}

// validate checks the flags and the backing file, touching nothing.
// Errors wrap proto.ErrConfig.
func (o *storageOptions) validate() (storagePlan, error) {
	var p storagePlan
	bad := func(format string, args ...any) (storagePlan, error) {
		return storagePlan{}, fmt.Errorf("%w: "+format, append([]any{proto.ErrConfig}, args...)...)
	}
	switch {
	case o.file == "":
		return bad("--file is required")
	case len(o.groups) == 0:
		return bad("--group is required")
	case o.blockSize < 512 || o.blockSize&(o.blockSize-1) != 0:
		return bad("--block-size %d: want a power of two, at least 512", o.blockSize)
	case o.maxInFlight < 1:
		return bad("--max-in-flight %d: want at least 1", o.maxInFlight)
	case o.shutdownTimeout <= 0:
		return bad("--shutdown-timeout %v must be positive", o.shutdownTimeout)
	case o.procs < 0:
		return bad("--procs %d: want 0 (Go's default) or more", o.procs)
	case o.unguarded && o.writer != "":
		return bad("--unguarded with --writer: an unguarded store checks no writer")
	}
	for _, gr := range o.groups {
		if err := proto.CheckName("group", gr); err != nil {
			return bad("--group: %w", err)
		}
	}
	if err := proto.CheckName("resource", o.resource); err != nil {
		return bad("--resource: %w", err)
	}
	if o.writer != "" {
		if err := proto.CheckName("writer", o.writer); err != nil {
			return bad("--writer: %w", err)
		}
	}
	netw, addr, err := splitListen(o.listen)
	if err != nil {
		return bad("--listen %w", err)
	}
	if netw == "unix" {
		p.socket = addr
	}
	if o.size != "" {
		n, err := parseBytes(o.size)
		switch {
		case err != nil:
			return bad("--size: %w", err)
		case n == 0 || n%uint64(o.blockSize) != 0 || n > 1<<62:
			return bad("--size %s: want a positive multiple of the block size %d", o.size, o.blockSize)
		}
		p.size = int64(n)
	}
	fi, err := os.Stat(o.file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if o.size == "" {
			return bad("--file %s does not exist: give --size to create it", o.file)
		}
		p.create = true
	case err != nil:
		return bad("--file: %w", err)
	case !fi.Mode().IsRegular():
		return bad("--file %s is not a regular file", o.file)
	case o.size != "" && fi.Size() < p.size:
		return bad("--file %s holds %d bytes (%s), fewer than --size %s (%d bytes); nothing is truncated or overwritten: give a smaller --size or another file",
			o.file, fi.Size(), formatBytes(uint64(fi.Size())), o.size, p.size)
	case o.size == "" && fi.Size() == 0:
		return bad("--file %s is empty: give --size", o.file)
	case o.size == "" && fi.Size()%int64(o.blockSize) != 0:
		return bad("--file %s holds %d bytes, not a whole number of blocks of %d: give --size", o.file, fi.Size(), o.blockSize)
	case o.size == "":
		p.size = fi.Size()
	}
	return p, nil
}

func runStorage(ctx context.Context, g *globals, o *storageOptions, out io.Writer) (err error) {
	p, err := o.validate()
	if err != nil {
		return err
	}
	setProcs(o.procs)
	log := g.logger().With("resource", o.resource)
	cli, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()

	var applyLog io.Writer
	if o.applyLog != "" {
		lf, dropped, err := storage.OpenApplyLog(o.applyLog)
		if err != nil {
			return fmt.Errorf("idc: storage: --apply-log: %w", err)
		}
		if dropped > 0 {
			log.Warn("apply log: cut off its last line, left incomplete by a store that stopped while writing it", "bytes", dropped)
		}
		defer func() {
			err = errors.Join(err, lf.Sync(), lf.Close())
		}()
		applyLog = lf
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The guard is made before the store, whose apply log records its
	// fences; fencing starts only once the store is open.
	var (
		st *storage.Storage
		gd *guard.Guard
	)
	if !o.unguarded {
		gd = guard.New(guard.Config{Name: o.resource, Metrics: reg, OnFence: func(group string, f guard.Fence) {
			st.Fenced(group, f)
			log.Info("fence holds", "group", group, "epoch", f.Epoch, "members", len(f.Members), "writer", f.Writer)
		}})
	}
	st, err = storage.Open(storage.Config{Path: o.file, Size: p.size, BlockSize: o.blockSize, Guard: gd, Unguarded: o.unguarded, Log: applyLog})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, st.Close()) }()

	srv, err := storage.NewServer(storage.ServerConfig{
		Storage: st, Network: network.OS{}, Logger: log, MaxInFlight: o.maxInFlight, Name: o.resource, Metrics: reg,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	if p.socket != "" {
		if err := removeStaleStorageSocket(p.socket); err != nil {
			return err
		}
	}
	addr, err := srv.Listen(o.listen)
	if err != nil {
		return fmt.Errorf("%w: --listen: %w", proto.ErrConfig, err)
	}
	if p.socket != "" {
		defer os.Remove(p.socket)
	}

	if gd != nil {
		fencing, err := idc.Fence(ctx, idc.FencingConfig{
			Resource: o.resource, Groups: o.groups, Writer: o.writer, Client: cli, Prefix: g.prefix, Logger: log,
		}, gd)
		if err != nil {
			return err
		}
		defer fencing.Stop()
	}

	if o.metricsListen != "" {
		stopMetrics, err := serveMetrics(o.metricsListen, reg, log)
		if err != nil {
			return fmt.Errorf("%w: %w", proto.ErrConfig, err)
		}
		defer stopMetrics()
	}
	if o.addressFile != "" {
		if err := writeFileAtomic(o.addressFile, addr+"\n"); err != nil {
			return err
		}
		defer os.Remove(o.addressFile)
	}
	if o.unguarded {
		fmt.Fprintf(out, "storage: serving %s (%s, block %d) at %s for %s, UNGUARDED: no token is checked, a stale write lands\n",
			o.file, formatBytes(uint64(p.size)), o.blockSize, addr, groupsText(o.groups))
		log.Warn("unguarded: no token is checked")
	} else {
		fmt.Fprintf(out, "storage: serving %s (%s, block %d) at %s for %s as resource %q%s\n",
			o.file, formatBytes(uint64(p.size)), o.blockSize, addr, groupsText(o.groups), o.resource, writerText(o.writer))
	}
	log.Info("serving", "file", o.file, "size", p.size, "created", p.create, "addr", addr, "groups", o.groups, "writer", o.writer)

	// The apply log is written out every 100 ms, so that a storage killed
	// (kill -9) loses at most that much of it.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			if err := st.FlushLog(); err != nil {
				log.Warn("apply log", "err", err)
			}
		}
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("idc: storage: requests still under way after --shutdown-timeout %v: %w", o.shutdownTimeout, err)
	}
	return nil
}

// groupsText names the groups for people.
func groupsText(groups []string) string {
	if len(groups) == 1 {
		return "group " + groups[0]
	}
	return "groups " + strings.Join(groups, ", ")
}

// writerText says whose writes the store admits, if not everyone's.
func writerText(writer string) string {
	if writer == "" {
		return ""
	}
	return fmt.Sprintf(", writes only from %s", writer)
}

// removeStaleStorageSocket removes a unix socket an earlier run of the
// store left at --listen, and refuses to touch anything else.
func removeStaleStorageSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("idc: storage: %w", err)
	case fi.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("%w: --listen %s exists and is not a socket", proto.ErrConfig, path)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("%w: --listen %s: another server is listening there", proto.ErrConfig, path)
	}
	return os.Remove(path)
}

// procsUsage is the usage of --procs, which the storage scenario's
// processes (idc storage, driver, disk) share.
const procsUsage = "how many threads run Go code at once (GOMAXPROCS); 0 keeps Go's default (the environment's GOMAXPROCS, else the CPUs). " +
	"The data path is event-driven: with one, a request handed from one goroutine to another wakes no thread"

// setProcs sets GOMAXPROCS to n, if n is positive.
func setProcs(n int) {
	if n > 0 {
		runtime.GOMAXPROCS(n)
	}
}
