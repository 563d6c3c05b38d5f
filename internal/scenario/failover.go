package scenario

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/idc-dev/idc/nbd"
)

// Fault is a fault injected into the driver the disk is using.
type Fault string

// The faults.
const (
	// Kill kills the driver (SIGKILL): its channel closes at once.
	Kill Fault = "killed"
	// Stop stops it (SIGSTOP) past its lease, with writes it forwarded
	// held on their way to the storage; then resumes it and lets them go.
	Stop Fault = "stopped"
	// CutOff holds every connection of it (channel, store, storage) while
	// it runs on — a blackhole — with writes it forwarded among what is
	// held; then releases everything.
	CutOff Fault = "cut-off"
)

// Faults lists the faults.
func Faults() []Fault { return []Fault{Kill, Stop, CutOff} }

// Proxied reports whether the fault needs the drivers' connections behind
// proxies (Config.Proxied).
func (f Fault) Proxied() bool { return f == Stop || f == CutOff }

// Failover is what one failover showed.
type Failover struct {
	Fault Fault `json:"fault"`
	// Driver is the driver the fault hit: the one the disk was using.
	Driver string `json:"driver"`
	// Gap is the service gap: the longest time without an acknowledged
	// write that ends after the fault (from the last write acknowledged
	// through the failed driver to the first through the other).
	Gap time.Duration `json:"gap_ns"`
	// ToFence is the time from the fault to the first fence that held at
	// the storage after it.
	ToFence time.Duration `json:"to_fence_ns"`
	// Acks is the number of writes acknowledged, Writes the number the
	// storage applied (re-sent ones count twice).
	Acks   int `json:"acks"`
	Writes int `json:"writes"`
	// Refused counts the writes of ended epochs the storage's guard
	// refused: the held ones, once released.
	Refused int `json:"refused"`
}

// ErrCheck wraps every failed check of RunFailover.
var ErrCheck = errors.New("scenario: check failed")

// RunFailover starts a scenario (cfg, with the drivers proxied if the
// fault needs it), writes through its disk with a Workload, injects the
// fault into the driver the disk uses once warm writes have been
// acknowledged, waits for the disk to fail over to the other driver and
// write warm more, then checks: the
// client saw no error; every block holds its last acknowledged write,
// read through the disk and in the storage's file; the apply log shows no
// write of an ended epoch applied after the fence of the next (G5); and,
// for the faults that hold writes, that the guard refused them. It returns
// the figures, or an error wrapping ErrCheck if a check failed.
func RunFailover(ctx context.Context, cfg Config, fault Fault, warm int) (res Failover, err error) {
	res.Fault = fault
	if err := cfg.defaults(); err != nil {
		return res, err
	}
	if fault.Proxied() {
		cfg.Proxied = cfg.Drivers
	}
	s, err := Start(ctx, cfg)
	if err != nil {
		return res, err
	}
	defer s.Close()
	c, err := nbd.DialURI(ctx, s.NBD, nbd.ClientConfig{})
	if err != nil {
		return res, err
	}
	defer c.Close()
	w := &Workload{Client: c}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()

	if err := waitAcks(ctx, w, warm); err != nil {
		return res, err
	}
	// The driver the disk uses now: a false suspicion on a loaded machine
	// may already have moved it from its first choice.
	disk := s.Proc("disk")
	res.Driver, err = s.Path(ctx)
	if err != nil {
		return res, err
	}
	a := s.Proc(res.Driver)
	seen := disk.Count()
	at := time.Now()
	switch fault {
	case Kill:
		a.Kill()
	case Stop, CutOff:
		if err := holdForwarded(ctx, s.Proxies(res.Driver).Storage); err != nil {
			return res, err
		}
		if fault == Stop {
			err = a.Signal(syscall.SIGSTOP)
		} else {
			s.Proxies(res.Driver).Hold()
		}
	default:
		return res, fmt.Errorf("scenario: unknown fault %q", fault)
	}
	if err != nil {
		return res, err
	}
	if _, _, err := disk.WaitFor(ctx, seen, func(l string) bool {
		p, ok := PathOf(l)
		return ok && p != res.Driver && p != ""
	}); err != nil {
		return res, fmt.Errorf("scenario: the disk did not fail over from %s: %w", res.Driver, err)
	}
	if err := waitAcks(ctx, w, w.Count()+warm); err != nil {
		return res, err
	}
	stop()
	if err := <-done; err != nil {
		return res, fmt.Errorf("%w: the client saw errors: %w", ErrCheck, err)
	}
	var last time.Time
	res.Gap, last, _ = Gap(w.Acks(), at)
	if last.IsZero() {
		return res, fmt.Errorf("%w: no write acknowledged after the fault", ErrCheck)
	}
	res.Acks = w.Count()
	if err := w.Verify(ctx, c.ReadAt); err != nil {
		return res, fmt.Errorf("%w: through the disk: %w", ErrCheck, err)
	}

	// Let the held writes go: a stopped driver resumes (past its lease),
	// finds its membership fenced; then the proxies release everything.
	switch fault {
	case Stop:
		if d := time.Until(at.Add(2 * cfg.lease())); d > 0 {
			time.Sleep(d)
		}
		if err := a.Signal(syscall.SIGCONT); err != nil {
			return res, err
		}
		if err := a.WaitLine(ctx, "membership ended"); err != nil {
			return res, err
		}
		s.Proxies(res.Driver).Release()
	case CutOff:
		s.Proxies(res.Driver).Release()
		if err := a.WaitLine(ctx, "membership ended"); err != nil {
			return res, err
		}
	}
	if fault.Proxied() {
		// The released writes reach the storage: wait until its apply log
		// (written out every 100 ms) shows it refusing them.
		deadline := time.Now().Add(10 * time.Second)
		for refusedWrites(s.ApplyLog) == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	c.Close()
	s.Close()
	if err := checkStorage(ctx, s, w, at, &res); err != nil {
		return res, err
	}
	if fault.Proxied() && res.Refused == 0 {
		return res, fmt.Errorf("%w: no held write refused by the guard", ErrCheck)
	}
	return res, nil
}

// Path returns the driver the disk uses now, waiting for one if it has
// none.
func (s *Scenario) Path(ctx context.Context) (string, error) {
	disk := s.Proc("disk")
	lines := disk.Lines()
	for i := len(lines) - 1; i >= 0; i-- {
		if p, ok := PathOf(lines[i]); ok {
			if p != "" {
				return p, nil
			}
			break
		}
	}
	_, l, err := disk.WaitFor(ctx, len(lines), func(l string) bool { p, ok := PathOf(l); return ok && p != "" })
	if err != nil {
		return "", err
	}
	p, _ := PathOf(l)
	return p, nil
}

// PathOf reads the path of a line the disk prints when an epoch connects
// ("disk: epoch 4 connected: disk, driver-b; path driver-b"): "" if it
// has none; ok is false for other lines.
func PathOf(line string) (path string, ok bool) {
	i := strings.LastIndex(line, "; path ")
	if !strings.HasPrefix(line, "disk: epoch ") || i < 0 {
		return "", false
	}
	p := line[i+len("; path "):]
	if strings.HasPrefix(p, "none") {
		return "", true
	}
	return p, true
}

// lease is the members' lease TTL.
func (c Config) lease() time.Duration {
	if c.LeaseTTL == 0 {
		return 2 * time.Second
	}
	return c.LeaseTTL
}

// checkStorage checks the storage's file and apply log once the scenario
// stopped.
func checkStorage(ctx context.Context, s *Scenario, w *Workload, at time.Time, res *Failover) error {
	f, err := os.Open(s.File)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := w.Verify(ctx, func(_ context.Context, p []byte, off uint64) error {
		_, err := f.ReadAt(p, int64(off))
		return err
	}); err != nil {
		return fmt.Errorf("%w: in the storage's file: %w", ErrCheck, err)
	}
	log, err := ReadApplyLog(s.ApplyLog)
	if err != nil {
		return err
	}
	if len(log.Stale) > 0 {
		return fmt.Errorf("%w: G5: %d writes applied after the fence of a later epoch, first %+v", ErrCheck, len(log.Stale), log.Stale[0])
	}
	if len(log.Overtaken) > 0 {
		return fmt.Errorf("%w: G5: %d writes applied after a write of a later epoch, first %+v", ErrCheck, len(log.Overtaken), log.Overtaken[0])
	}
	res.Writes = log.Writes
	for _, ns := range log.Fenced {
		if d := time.Unix(0, ns).Sub(at); d > 0 && (res.ToFence == 0 || d < res.ToFence) {
			res.ToFence = d
		}
	}
	res.Refused = log.staleWrites()
	return nil
}

// refusedWrites reads the apply log so far and counts the refused writes
// of ended epochs.
func refusedWrites(path string) int {
	log, _ := ReadApplyLog(path)
	return log.staleWrites()
}

// holdForwarded holds the proxy of a driver's connections to the storage
// until a write it forwarded is held there (the proxy reads on while it
// holds, so the rest of a request whose first bytes it holds follows).
func holdForwarded(ctx context.Context, p *Proxy) error {
	p.HoldForward() // answers still come back, so the writes go on coming
	defer p.Hold()
	for p.HeldForward() < 4096+64 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("scenario: no write held on its way to the storage (%d bytes held towards it): %w", p.HeldForward(), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// waitAcks waits until the workload has n acknowledged writes.
func waitAcks(ctx context.Context, w *Workload, n int) error {
	for w.Count() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("scenario: %d of %d writes acknowledged: %w", w.Count(), n, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}
