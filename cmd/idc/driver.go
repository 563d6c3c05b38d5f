package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/internal/forwarder"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/spf13/cobra"
)

// driverOptions are the flags of idc driver.
type driverOptions struct {
	member             memberOptions
	storage            string
	storageFile        string
	storageDialTimeout time.Duration
	procs              int
}

func newDriverCmd(g *globals) *cobra.Command {
	o := &driverOptions{}
	cmd := &cobra.Command{
		Use:   "driver",
		Short: "Run a driver domain: forward the group's block requests to the shared storage",
		Long: `Runs a driver domain of the storage scenario: it joins GROUP as --id and
serves the channel calls of the group's disk (idc disk), each a block
request carrying the disk's token, by forwarding the request byte for byte
to the shared storage (idc storage) and returning the storage's answer.
The storage's guard, not the driver, decides whether a request may be
applied: a driver cannot change the token it forwards.

The driver keeps one connection to the storage per epoch, opened at the
epoch's first request. When the epoch ends here, the requests it still
waits for fail at once (the disk sends them again in the next epoch) and
the connection closes; a request already on its way stays in the network,
and the storage's guard refuses it once it holds the next epoch's fence.
If the storage connection fails, every request of that epoch through this
driver fails (it does not reconnect within the epoch), so the disk reports
this path faulty and fails over; the next epoch connects afresh.

If the membership is fenced (its lease may have lapsed) or the group drops
it, the driver joins again as a new incarnation. On interrupt it leaves the
group gracefully.

The storage's address is --storage, or --storage-file: a file holding it
(as idc storage --address-file writes it), waited for up to --dial-timeout.`,
		Example: `  idc driver --group disk1 --id driver-a --storage unix:///run/idc/storage.sock
  idc driver --group disk1 --id driver-b --storage-file /run/idc/storage.addr --listen tcp://10.0.0.6:0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDriver(cmd.Context(), g, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	o.member.register(f, "")
	f.StringVar(&o.storage, "storage", "", "the storage's address: tcp://HOST:PORT or unix:///PATH (or --storage-file)")
	f.StringVar(&o.storageFile, "storage-file", "", "a file holding the storage's address, as idc storage --address-file writes it; waited for up to --dial-timeout")
	f.DurationVar(&o.storageDialTimeout, "storage-dial-timeout", forwarder.DefaultDialTimeout, "how long to wait for a connection to the storage before the epoch's requests through this driver fail")
	f.IntVar(&o.procs, "procs", 1, procsUsage)
	return cmd
}

func (o *driverOptions) validate() error {
	if err := o.member.validate(); err != nil {
		return err
	}
	switch {
	case o.storage == "" && o.storageFile == "":
		return fmt.Errorf("%w: --storage or --storage-file is required", proto.ErrConfig)
	case o.storage != "" && o.storageFile != "":
		return fmt.Errorf("%w: give --storage or --storage-file, not both", proto.ErrConfig)
	case o.storageDialTimeout <= 0:
		return fmt.Errorf("%w: --storage-dial-timeout %v must be positive", proto.ErrConfig, o.storageDialTimeout)
	case o.procs < 0:
		return fmt.Errorf("%w: --procs %d: want 0 (Go's default) or more", proto.ErrConfig, o.procs)
	}
	if o.storage != "" {
		if err := forwarder.CheckAddress(o.storage); err != nil {
			return fmt.Errorf("--storage: %w", err)
		}
	}
	return nil
}

func runDriver(ctx context.Context, g *globals, o *driverOptions, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	setProcs(o.procs)
	id := o.member.id
	// The membership and the forwarder add the domain (and the membership
	// the group) to what they log.
	base := g.logger()
	log := base.With("group", o.member.group, "domain", id)
	addr := o.storage
	if o.storageFile != "" {
		var err error
		if addr, err = readStorageFile(ctx, o.storageFile, g.timeout); err != nil {
			if ctx.Err() != nil {
				return nil // interrupted before joining: nothing to leave
			}
			return err
		}
	}
	fw, err := forwarder.New(forwarder.Config{
		Storage: addr, Network: network.OS{}, Clock: clock.System(),
		DialTimeout: o.storageDialTimeout, Domain: id, Logger: base.With("group", o.member.group),
	})
	if err != nil {
		return err
	}
	defer fw.Close()

	cli, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()

	cfg := o.member.config(g)
	cfg.Client, cfg.Logger = cli, base
	o.member.withClock(ctx, &cfg, base)
	cfg.MaxMessage = blockMessageMax
	cfg.Handler = &driverHandler{f: fw}
	if err := cfg.Validate(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: forwarding group %s's block requests to the storage at %s\n", id, o.member.group, addr)

	err = followEpochs(ctx, cfg, out, log, func(ep *idc.Epoch, m *idc.Membership) {
		n := ep.Number()
		// Requests of earlier epochs fail now, if their handlers have not
		// ended them already; and this epoch's, once it ends here.
		if n > 1 {
			fw.EndEpoch(n - 1)
		}
		go func() {
			<-ep.Context().Done()
			fw.EndEpoch(n)
		}()
		fmt.Fprintf(out, "%s: epoch %d connected: %s\n", id, n, memberList(ep))
		log.Info("epoch connected", "epoch", n, "incarnation", m.Incarnation(), "members", memberList(ep))
	})
	fw.Close()
	s := fw.Stats()
	log.Info("forwarder stopped", "forwarded", s.Forwarded, "answered", s.Answered, "invalid", s.Invalid,
		"ended", s.Ended, "lost", s.Lost, "unmatched", s.Unmatched, "dials", s.Dials)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: left group %s: %d requests forwarded, %d answered, %d failed (%d as their epoch ended, %d with the storage lost)\n",
		id, o.member.group, s.Forwarded, s.Answered, s.Invalid+s.Ended+s.Lost+s.Closed, s.Ended, s.Lost)
	return nil
}

// readStorageFile reads the storage's address from path, waiting up to
// wait for the file to appear (and to hold something): the storage writes
// it once it listens, possibly after the driver started. Errors wrap
// proto.ErrConfig.
func readStorageFile(ctx context.Context, path string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		b, err := os.ReadFile(path)
		addr := strings.TrimSpace(string(b))
		switch {
		case err == nil && addr != "":
			if err := forwarder.CheckAddress(addr); err != nil {
				return "", fmt.Errorf("--storage-file %s: %w", path, err)
			}
			return addr, nil
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("%w: --storage-file: %w", proto.ErrConfig, err)
		}
		if time.Now().After(deadline) {
			if err == nil {
				return "", fmt.Errorf("%w: --storage-file %s is still empty after --dial-timeout %v", proto.ErrConfig, path, wait)
			}
			return "", fmt.Errorf("%w: --storage-file %s did not appear within --dial-timeout %v (is idc storage --address-file running?)", proto.ErrConfig, path, wait)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// driverHandler serves the disk's calls: each is a block request,
// forwarded to the storage; the response is the storage's answer.
type driverHandler struct {
	f *forwarder.Forwarder
}

// forwardWait is what a call waits on; pooled, so that a call allocates
// nothing of its own.
type forwardWait struct {
	ch   chan forwardResult
	done func(forwarder.Answer, error)
}

type forwardResult struct {
	a   forwarder.Answer
	err error
}

var forwardWaits = sync.Pool{New: func() any {
	w := &forwardWait{ch: make(chan forwardResult, 1)}
	w.done = func(a forwarder.Answer, err error) { w.ch <- forwardResult{a, err} }
	return w
}}

// ServeCall forwards req to the storage and returns its answer, or why
// there is none (the disk sees it as an error of this path). req.Data is
// the handler's to keep (idc.Request), so the forwarder may still be
// writing it after the call returned. The answer is never handed back to
// the connection: the channel copies it into its own frame only after
// ServeCall returns.
//
// If the epoch ends here first (ctx), the epoch's requests fail at once
// (EndEpoch), and the call returns ctx's cause, so that quiesce does not
// wait for the storage.
func (h *driverHandler) ServeCall(ctx context.Context, req idc.Request) ([]byte, error) {
	w := forwardWaits.Get().(*forwardWait)
	h.f.Forward(req.Epoch, req.Data, w.done)
	var r forwardResult
	select {
	case r = <-w.ch:
	case <-ctx.Done():
		h.f.EndEpoch(req.Epoch)
		<-w.ch // done runs at once now: EndEpoch failed the request, or it was being answered
		forwardWaits.Put(w)
		return nil, context.Cause(ctx)
	}
	forwardWaits.Put(w)
	if r.err != nil {
		return nil, r.err
	}
	return r.a.Frame, nil
}

// StartCall forwards the call's request to the storage and answers the
// call once the storage did, from the forwarder's callback: no goroutine
// waits per call. The storage's answer is handed back to its connection
// once Reply has copied it, and the request's bytes to the channel once
// the forwarder no longer uses them (ForwardThen), so that a stream of
// large requests and answers allocates nothing. When the epoch ends here,
// runDriver's EndEpoch fails its pending requests at once, which answers
// their calls.
func (h *driverHandler) StartCall(_ context.Context, c idc.Call) {
	fc := forwardCalls.Get().(*forwardCall)
	fc.call = c
	fc.left.Store(2)
	h.f.ForwardThen(c.Epoch, c.Data, fc.done, fc.release)
}

// forwardCall is a call StartCall forwards; pooled, so that a call
// allocates nothing of its own. It goes back to the pool once both its
// answer and its release have come.
type forwardCall struct {
	call    idc.Call
	left    atomic.Int32 // of done and release, those still to come
	done    func(forwarder.Answer, error)
	release func()
}

var forwardCalls sync.Pool

func init() {
	forwardCalls.New = func() any {
		fc := &forwardCall{}
		fc.done = func(a forwarder.Answer, err error) {
			if err != nil {
				fc.call.Reply(nil, err)
			} else {
				fc.call.Reply(a.Frame, nil) // copies it
				a.Release()
			}
			fc.end()
		}
		fc.release = func() {
			fc.call.Release()
			fc.end()
		}
		return fc
	}
}

func (fc *forwardCall) end() {
	if fc.left.Add(-1) == 0 {
		fc.call = idc.Call{}
		forwardCalls.Put(fc)
	}
}

var _ idc.AsyncHandler = (*driverHandler)(nil)
