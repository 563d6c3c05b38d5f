package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/channel"
	"github.com/idc-dev/idc/network"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// The kinds of channel measurement.
const (
	// KindCall is a request/response round trip: Call, with a handler that
	// replies at once with the request's bytes. Its figure is ns per round
	// trip.
	KindCall = "call"
	// KindMessage is a message round trip: a sends to b, b receives and
	// sends the bytes back, a receives. Its figure is ns per round trip.
	KindMessage = "message"
	// KindStream is a stream: a sends messages as fast as it may, b
	// receives them. Its figure is MB/s of message bytes.
	KindStream = "stream"
)

// The levels a channel is measured at.
const (
	// LevelMesh is the channel driver (internal/channel.Mesh) with a host
	// that always admits the operation, callbacks used directly.
	LevelMesh = "mesh"
	// LevelAPI is the public API (idc.Epoch.Call, Send, Receive) of two
	// memberships on an embedded store.
	LevelAPI = "api"
)

// Goals of the channels, against raw sockets of the same run.
const (
	// GoalRTT is the most a round trip may take, as a multiple of a raw
	// socket's.
	GoalRTT = 1.25
	// GoalThroughput is the least throughput, as a fraction of a raw
	// socket's.
	GoalThroughput = 0.8
	// GoalAllocs is the most allocations per message.
	GoalAllocs = 1.0
)

// ChannelOptions configure Channels.
type ChannelOptions struct {
	// Transports to measure: "unix", "tcp" (default both).
	Transports []string
	// Sizes of the messages in bytes (default 64, 4096, 65536).
	Sizes []int
	// Kinds to measure: KindCall, KindMessage, KindStream (default all).
	Kinds []string
	// Levels to measure: LevelMesh, LevelAPI (default both). LevelAPI
	// starts an embedded store and a coordinator.
	Levels []string
	// Duration is how long each figure of a round is measured (default
	// 200 ms); a short calibration run precedes it.
	Duration time.Duration
	// Rounds is how many times every figure is measured, raw and idc
	// interleaved (default 5); the table reports medians.
	Rounds int
	// Heartbeat and Misses configure the channels' heartbeats (default
	// idc.DefaultHeartbeat and idc.DefaultHeartbeatMisses). On a machine
	// busy with other work, a longer heartbeat keeps a starved process
	// from reporting its peer lost in the middle of a measurement.
	Heartbeat time.Duration
	Misses    int
	// DataDir holds the unix sockets and the embedded store (default: a
	// temporary directory, removed at the end).
	DataDir string
	// Progress receives a line per round (may be nil).
	Progress io.Writer
}

func (o *ChannelOptions) defaults() error {
	if len(o.Transports) == 0 {
		o.Transports = []string{"unix", "tcp"}
	}
	if len(o.Sizes) == 0 {
		o.Sizes = []int{64, 4096, 65536}
	}
	if len(o.Kinds) == 0 {
		o.Kinds = []string{KindCall, KindMessage, KindStream}
	}
	if len(o.Levels) == 0 {
		o.Levels = []string{LevelMesh, LevelAPI}
	}
	if o.Duration <= 0 {
		o.Duration = 200 * time.Millisecond
	}
	if o.Rounds <= 0 {
		o.Rounds = 5
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = idc.DefaultHeartbeat
	}
	if o.Misses <= 0 {
		o.Misses = idc.DefaultHeartbeatMisses
	}
	for _, t := range o.Transports {
		if t != "unix" && t != "tcp" {
			return fmt.Errorf("bench: transport %q: want unix or tcp", t)
		}
	}
	for _, s := range o.Sizes {
		if s < 1 || s > idc.DefaultMaxMessage {
			return fmt.Errorf("bench: message size %d: want 1..%d", s, idc.DefaultMaxMessage)
		}
	}
	for _, k := range o.Kinds {
		if k != KindCall && k != KindMessage && k != KindStream {
			return fmt.Errorf("bench: kind %q: want %s, %s or %s", k, KindCall, KindMessage, KindStream)
		}
	}
	for _, l := range o.Levels {
		if l != LevelMesh && l != LevelAPI {
			return fmt.Errorf("bench: level %q: want %s or %s", l, LevelMesh, LevelAPI)
		}
	}
	return nil
}

func (o ChannelOptions) say(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// ChannelResult is one figure: a kind of measurement of one transport and
// message size at one level, beside the raw socket's, every round.
type ChannelResult struct {
	Transport string `json:"transport"`
	Size      int    `json:"size"`
	Kind      string `json:"kind"`
	Level     string `json:"level"`
	// Raw and IDC hold a figure per round: ns per round trip (KindCall,
	// KindMessage) or MB/s (KindStream); Raw the raw socket's, measured
	// just before IDC in the same round.
	Raw []float64 `json:"raw"`
	IDC []float64 `json:"idc"`
	// Allocs holds the allocations per message, every round: a round
	// trip carries two messages (request and response).
	Allocs []float64 `json:"allocs_per_msg"`
}

// Unit names the figures' unit.
func (r ChannelResult) Unit() string {
	if r.Kind == KindStream {
		return "MB/s"
	}
	return "ns/rtt"
}

// Ratio is the median idc figure over the median raw one.
func (r ChannelResult) Ratio() float64 { return MedianFloat(r.IDC) / MedianFloat(r.Raw) }

// Met reports whether the median figures meet the goals: GoalRTT or
// GoalThroughput, and GoalAllocs for the allocations as printed (to two
// decimals: the process's own background allocations, its timers and
// the collector's, add a few thousandths to every message).
func (r ChannelResult) Met() bool {
	if math.Round(MedianFloat(r.Allocs)*100)/100 > GoalAllocs {
		return false
	}
	if r.Kind == KindStream {
		return r.Ratio() >= GoalThroughput
	}
	return r.Ratio() <= GoalRTT
}

// MedianFloat returns the median of xs (0 if empty).
func MedianFloat(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// Channels measures channels beside raw sockets: level by level (the
// API level's store is started for it alone), in every round, for every
// transport, size and kind, a raw socket's figure and just after it idc's.
func Channels(ctx context.Context, o ChannelOptions) ([]ChannelResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	dir := o.DataDir
	if dir == "" {
		// Unix socket paths are short: keep the directory's name short.
		d, err := os.MkdirTemp("", "idcb")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	index := map[[4]string]*ChannelResult{}
	// Each level on its own, so that the store of the API level does not
	// run beside the channel driver's measurements.
	for _, level := range o.Levels {
		lo := o
		lo.Levels = []string{level}
		if err := channelRounds(ctx, dir, lo, index); err != nil {
			return nil, err
		}
	}
	// In the order of the options: transport, size, kind, level.
	var out []ChannelResult
	for _, tr := range o.Transports {
		for _, size := range o.Sizes {
			for _, kind := range o.Kinds {
				for _, level := range o.Levels {
					if r := index[[4]string{tr, fmt.Sprint(size), kind, level}]; r != nil {
						out = append(out, *r)
					}
				}
			}
		}
	}
	return out, nil
}

// channelRounds measures o.Levels[0] in every round, each figure just
// after the raw socket's, and adds the figures to index.
func channelRounds(ctx context.Context, dir string, o ChannelOptions, index map[[4]string]*ChannelResult) error {
	level := o.Levels[0]
	env, err := newChannelEnv(ctx, dir, o)
	if err != nil {
		return err
	}
	defer env.close()
	for round := range o.Rounds {
		o.say("%s: round %d of %d", level, round+1, o.Rounds)
		for _, tr := range o.Transports {
			for _, size := range o.Sizes {
				for _, kind := range o.Kinds {
					rawKind := KindCall // a raw round trip stands for both
					if kind == KindStream {
						rawKind = KindStream
					}
					raw, err := env.measure(ctx, tr, size, rawKind, "raw", o.Duration)
					if err != nil {
						return err
					}
					s, err := env.measure(ctx, tr, size, kind, level, o.Duration)
					if err != nil {
						return err
					}
					k := [4]string{tr, fmt.Sprint(size), kind, level}
					r := index[k]
					if r == nil {
						r = &ChannelResult{Transport: tr, Size: size, Kind: kind, Level: level}
						index[k] = r
					}
					r.Raw = append(r.Raw, raw.figure(kind, size))
					r.IDC = append(r.IDC, s.figure(kind, size))
					r.Allocs = append(r.Allocs, s.allocsPerMsg())
				}
			}
		}
	}
	return nil
}

// sample is one timed run: ops round trips or messages.
type sample struct {
	ops, msgsPerOp int
	elapsed        time.Duration
	mallocs        uint64
}

func (s sample) figure(kind string, size int) float64 {
	if kind == KindStream {
		return float64(s.ops) * float64(size) / s.elapsed.Seconds() / 1e6
	}
	return float64(s.elapsed.Nanoseconds()) / float64(s.ops)
}

func (s sample) allocsPerMsg() float64 {
	return float64(s.mallocs) / float64(s.ops*s.msgsPerOp)
}

// runner runs n round trips or n messages of one measurement; n is
// calibrated once.
type runner struct {
	run       func(ctx context.Context, n int) error
	msgsPerOp int
	n         int // calibrated: about the measurement's duration
}

// timed runs r for n operations and counts the allocations of the whole
// process meanwhile.
func (r *runner) timed(ctx context.Context, n int) (sample, error) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	err := r.run(ctx, n)
	el := time.Since(start)
	runtime.ReadMemStats(&after)
	return sample{ops: n, msgsPerOp: r.msgsPerOp, elapsed: el, mallocs: after.Mallocs - before.Mallocs}, err
}

// measure runs r for about d (calibrating it the first time).
func (r *runner) measure(ctx context.Context, d time.Duration) (sample, error) {
	if r.n == 0 {
		n := 8
		for {
			s, err := r.timed(ctx, n)
			if err != nil {
				return s, err
			}
			if s.elapsed >= d/8 || n >= 1<<24 {
				r.n = max(1, int(float64(n)*float64(d)/float64(max(s.elapsed, time.Microsecond))))
				break
			}
			n *= 4
		}
	}
	return r.timed(ctx, r.n)
}

// channelEnv holds the connections of every transport and level, set up
// once and reused by every round.
type channelEnv struct {
	runners map[string]*runner // by transport/size/kind/level
	closers []func()
	raw     map[string]*rawPair
	mesh    map[string]*meshPair
	api     map[string]*apiPair
}

func newChannelEnv(ctx context.Context, dir string, o ChannelOptions) (_ *channelEnv, err error) {
	env := &channelEnv{runners: map[string]*runner{}, raw: map[string]*rawPair{}, mesh: map[string]*meshPair{}, api: map[string]*apiPair{}}
	defer func() {
		if err != nil {
			env.close()
		}
	}()
	var st *apiStore
	for _, tr := range o.Transports {
		rp, err := newRawPair(tr, filepath.Join(dir, tr+"-raw.sock"))
		if err != nil {
			return nil, err
		}
		env.closers = append(env.closers, rp.close)
		env.raw[tr] = rp
		for _, level := range o.Levels {
			switch level {
			case LevelMesh:
				mp, err := newMeshPair(ctx, tr, dir, o)
				if err != nil {
					return nil, err
				}
				env.closers = append(env.closers, mp.close)
				env.mesh[tr] = mp
			case LevelAPI:
				if st == nil {
					o.say("starting an embedded store and a coordinator for the API level")
					if st, err = startAPIStore(ctx, filepath.Join(dir, "store")); err != nil {
						return nil, err
					}
					env.closers = append(env.closers, st.close)
				}
				ap, err := st.pair(ctx, tr, dir, o)
				if err != nil {
					return nil, err
				}
				env.closers = append(env.closers, ap.close)
				env.api[tr] = ap
			}
		}
	}
	return env, nil
}

func (env *channelEnv) close() {
	for i := len(env.closers) - 1; i >= 0; i-- {
		env.closers[i]()
	}
	env.closers = nil
}

// runner returns the runner of one measurement; level is "raw" for the
// raw socket.
func (env *channelEnv) runner(tr string, size int, kind, level string) *runner {
	key := fmt.Sprintf("%s/%d/%s/%s", tr, size, kind, level)
	r := env.runners[key]
	if r == nil {
		r = &runner{msgsPerOp: 2}
		if kind == KindStream {
			r.msgsPerOp = 1
		}
		switch level {
		case "raw":
			rp := env.raw[tr]
			if kind == KindStream {
				r.run = rp.stream(size)
			} else {
				r.run = rp.pingPong(size)
			}
		case LevelMesh:
			r.run = env.mesh[tr].runner(kind, size)
		case LevelAPI:
			r.run = env.api[tr].runner(kind, size)
		}
		env.runners[key] = r
	}
	return r
}

// measure runs one measurement for about d; level is "raw" for the raw
// socket.
func (env *channelEnv) measure(ctx context.Context, tr string, size int, kind, level string, d time.Duration) (sample, error) {
	s, err := env.runner(tr, size, kind, level).measure(ctx, d)
	if err != nil {
		return s, fmt.Errorf("bench: %s/%d/%s/%s: %w", tr, size, kind, level, err)
	}
	return s, nil
}

// listenAddr is where a listener of transport tr listens: sock for unix.
func listenAddr(tr, sock string) string {
	if tr == "unix" {
		return "unix://" + sock
	}
	return "tcp://127.0.0.1:0"
}

// rawPair is a plain connection of the transport: the baseline.
type rawPair struct {
	c, s net.Conn // the client's end and the server's
	sr   *bufio.Reader
}

func newRawPair(tr, sock string) (*rawPair, error) {
	network, addr := "tcp", "127.0.0.1:0"
	if tr == "unix" {
		network, addr = "unix", sock
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() { c, err := ln.Accept(); ch <- accepted{c, err} }()
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		return nil, err
	}
	a := <-ch
	if a.err != nil {
		c.Close()
		return nil, a.err
	}
	return &rawPair{c: c, s: a.c, sr: bufio.NewReader(a.c)}, nil
}

func (p *rawPair) close() { p.c.Close(); p.s.Close() }

// pingPong writes size bytes and reads size bytes back, in one goroutine;
// the other end echoes them.
func (p *rawPair) pingPong(size int) func(context.Context, int) error {
	cbuf, sbuf := make([]byte, size), make([]byte, size)
	return func(_ context.Context, n int) error {
		echo := spawn(func() error {
			for range n {
				if _, err := io.ReadFull(p.s, sbuf); err != nil {
					return err
				}
				if _, err := p.s.Write(sbuf); err != nil {
					return err
				}
			}
			return nil
		})
		for range n {
			if _, err := p.c.Write(cbuf); err != nil {
				return err
			}
			if _, err := io.ReadFull(p.c, cbuf); err != nil {
				return err
			}
		}
		return echo.join()
	}
}

// stream writes n messages, each a 4-byte length and its bytes in one
// write, from one goroutine; this one reads them.
func (p *rawPair) stream(size int) func(context.Context, int) error {
	msg := make([]byte, 4+size)
	binary.BigEndian.PutUint32(msg, uint32(size))
	buf := make([]byte, size)
	return func(_ context.Context, n int) error {
		sender := spawn(func() error {
			for range n {
				if _, err := p.c.Write(msg); err != nil {
					return err
				}
			}
			return nil
		})
		var hdr [4]byte
		for range n {
			if _, err := io.ReadFull(p.sr, hdr[:]); err != nil {
				return err
			}
			if _, err := io.ReadFull(p.sr, buf[:binary.BigEndian.Uint32(hdr[:])]); err != nil {
				return err
			}
		}
		return sender.join()
	}
}

// background is a goroutine beside a measurement's loop: the other end's
// echo, or a stream's sender.
type background struct{ errc chan error }

// spawn runs f in a goroutine.
func spawn(f func() error) background {
	bg := background{errc: make(chan error, 1)}
	go bg.run(f)
	return bg
}

func (bg background) run(f func() error) { bg.errc <- f() }

// join waits for the goroutine and returns its error.
func (bg background) join() error { return <-bg.errc }

// stop ends the goroutine after the loop beside it failed with err: it
// cancels their context, waits for the goroutine and returns err.
func (bg background) stop(cancel context.CancelFunc, err error) error {
	cancel()
	<-bg.errc
	return err
}

// pairEnd is one end of a pair measured at LevelMesh or LevelAPI, as the
// measurement loops drive it: call, send and stream address the pair's
// other end, and recv takes what it sent, in the pair's epoch.
type pairEnd interface {
	// call calls the other end with data and returns the response.
	call(ctx context.Context, data []byte) ([]byte, error)
	// send sends data and returns once the send completed.
	send(ctx context.Context, data []byte) error
	// stream sends data as one message of a stream: it may return before
	// the send completed, so that many are in flight.
	stream(ctx context.Context, data []byte) error
	// flush waits until every message streamed completed.
	flush(ctx context.Context) error
	// recv returns the next message from the other end; the caller
	// releases it once done (idc.Message.Release).
	recv(ctx context.Context) (idc.Message, error)
}

// pairRun returns the measurement of kind between the ends a and b, with
// messages of size bytes: n calls from a to b, n message round trips
// from a to b and back, or n messages streamed from a to b. A run fails
// after a minute rather than hang.
func pairRun(kind string, size int, a, b pairEnd) func(context.Context, int) error {
	data := make([]byte, size)
	return func(ctx context.Context, n int) error {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		switch kind {
		case KindCall:
			return runCalls(ctx, a, data, n)
		case KindMessage:
			return runMessages(ctx, cancel, a, b, data, n)
		default: // KindStream
			return runStream(ctx, cancel, a, b, data, n)
		}
	}
}

// runCalls makes n calls from a, each answered with its bytes.
func runCalls(ctx context.Context, a pairEnd, data []byte, n int) error {
	for range n {
		resp, err := a.call(ctx, data)
		if err == nil {
			err = wantLen("response", resp, len(data))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// runMessages makes n message round trips: a sends data to b, b (in a
// goroutine) sends the bytes back, a receives them. cancel cancels ctx.
func runMessages(ctx context.Context, cancel context.CancelFunc, a, b pairEnd, data []byte, n int) error {
	echo := spawn(func() error {
		for range n {
			msg, err := b.recv(ctx)
			if err == nil {
				err = b.send(ctx, msg.Data)
				msg.Release()
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	for range n {
		err := a.send(ctx, data)
		var msg idc.Message
		if err == nil {
			msg, err = a.recv(ctx)
		}
		if err == nil {
			err = wantLen("message", msg.Data, len(data))
			msg.Release()
		}
		if err != nil {
			return echo.stop(cancel, err)
		}
	}
	return echo.join()
}

// runStream streams n messages from a (in a goroutine) to b, which
// receives them, and waits until every one streamed completed. cancel
// cancels ctx.
func runStream(ctx context.Context, cancel context.CancelFunc, a, b pairEnd, data []byte, n int) error {
	sender := spawn(func() error {
		for range n {
			if err := a.stream(ctx, data); err != nil {
				return err
			}
		}
		return nil
	})
	for range n {
		msg, err := b.recv(ctx)
		if err == nil {
			err = wantLen("message", msg.Data, len(data))
			msg.Release()
		}
		if err != nil {
			return sender.stop(cancel, err)
		}
	}
	if err := sender.join(); err != nil {
		return err
	}
	return a.flush(ctx)
}

// wantLen checks that what, a response or a message, holds size bytes.
func wantLen(what string, b []byte, size int) error {
	if len(b) != size {
		return fmt.Errorf("%s of %d bytes, want %d", what, len(b), size)
	}
	return nil
}

// benchHost is a membership as a Mesh sees it, always connected in one
// epoch: Begin succeeds while that epoch is connected, End ends the
// operation, faults are recorded, and the context is never done.
type benchHost struct {
	mu        sync.Mutex
	epoch     uint64
	connected bool
	ops       int
	faults    []string
}

func (h *benchHost) Begin(e uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.connected || e != h.epoch {
		return fmt.Errorf("%w: epoch %d", proto.ErrEpochEnded, e)
	}
	h.ops++
	return nil
}

func (h *benchHost) End(uint64) {
	h.mu.Lock()
	h.ops--
	h.mu.Unlock()
}

func (h *benchHost) ReportFault(e uint64, peer string) {
	h.mu.Lock()
	h.faults = append(h.faults, fmt.Sprintf("%d/%s", e, peer))
	h.mu.Unlock()
}

func (h *benchHost) Context(uint64) context.Context { return context.Background() }

func (h *benchHost) fault() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.faults) > 0 {
		return fmt.Errorf("peers reported lost: %v", h.faults)
	}
	return nil
}

// meshInFlight is how many messages a mesh end streams at once.
const meshInFlight = 2 * idc.DefaultChannelWindow

// meshEnd is one side of a mesh pair; it implements pairEnd in epoch 1.
type meshEnd struct {
	m      *channel.Mesh
	host   *benchHost
	peer   string        // the other side's ID
	notify chan struct{} // a message waits
	w      *opWaiter     // the Op of call and send, one at a time
	// free holds the Ops of stream that are not in flight: each message
	// in flight needs its own Op until it completed.
	free chan *channel.Op
}

func newMeshEnd(peer string) *meshEnd {
	free := make(chan *channel.Op, meshInFlight)
	for range meshInFlight {
		op := &channel.Op{}
		op.Done = func(op *channel.Op) { free <- op }
		free <- op
	}
	return &meshEnd{host: &benchHost{epoch: 1, connected: true}, peer: peer, notify: make(chan struct{}, 1), w: newOpWaiter(), free: free}
}

func (x *meshEnd) call(ctx context.Context, data []byte) ([]byte, error) {
	x.m.Call(1, x.peer, data, &x.w.op)
	err := x.w.wait(ctx, x.m)
	return x.w.op.Resp, err
}

func (x *meshEnd) send(ctx context.Context, data []byte) error {
	x.m.Send(1, x.peer, data, &x.w.op)
	return x.w.wait(ctx, x.m)
}

// stream waits for a free Op and sends data with it, without waiting for
// the send; an Op that comes back failed fails the stream.
func (x *meshEnd) stream(ctx context.Context, data []byte) error {
	var op *channel.Op
	select {
	case op = <-x.free:
	case <-ctx.Done():
		return ctx.Err()
	}
	if op.Err != nil {
		return op.Err
	}
	x.m.Send(1, x.peer, data, op)
	return nil
}

// flush waits until every Op of stream is back, and checks them.
func (x *meshEnd) flush(ctx context.Context) error {
	ops := make([]*channel.Op, 0, meshInFlight)
	defer func() {
		for _, op := range ops {
			x.free <- op
		}
	}()
	for range meshInFlight {
		select {
		case op := <-x.free:
			ops = append(ops, op)
			if op.Err != nil {
				return op.Err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// recv waits for the next message of epoch 1.
func (x *meshEnd) recv(ctx context.Context) (idc.Message, error) {
	for {
		msg, ok, err := x.m.Recv(1)
		if err != nil || ok {
			return msg, err
		}
		select {
		case <-x.notify:
		case <-ctx.Done():
			if err := x.host.fault(); err != nil {
				return msg, err
			}
			return msg, ctx.Err()
		}
	}
}

// meshPair is two meshes connected in epoch 1 over one transport; b
// answers calls with their bytes.
type meshPair struct {
	a, b *meshEnd
}

func newMeshPair(ctx context.Context, tr, dir string, o ChannelOptions) (*meshPair, error) {
	quiet := slog.New(slog.DiscardHandler)
	start := func(id, peer string) (*meshEnd, error) {
		x := newMeshEnd(peer)
		cfg := channel.Config{
			Group: "bench", ID: id, Incarnation: 1,
			Network: network.OS{}, Clock: clock.System(), Logger: quiet,
			Listen:    listenAddr(tr, filepath.Join(dir, tr+"-mesh-"+id+".sock")),
			Heartbeat: o.Heartbeat, Misses: o.Misses,
			Window: idc.DefaultChannelWindow, MaxMessage: idc.DefaultMaxMessage,
			DialTimeout: time.Second, HandshakeTimeout: time.Second, SetupTimeout: idc.DefaultChannelSetupTimeout,
			Handler: func(r *channel.Request) { r.Reply(r.Data, nil) },
			OnMessage: func(uint64) {
				select {
				case x.notify <- struct{}{}:
				default:
				}
			},
		}
		m, err := channel.Start(cfg, x.host)
		x.m = m
		return x, err
	}
	a, err := start("a", "b")
	if err != nil {
		return nil, err
	}
	b, err := start("b", "a")
	if err != nil {
		a.m.Stop()
		return nil, err
	}
	p := &meshPair{a: a, b: b}
	members := []proto.Member{{ID: "a", Incarnation: 1, Addr: a.m.Addr()}, {ID: "b", Incarnation: 1, Addr: b.m.Addr()}}
	a.m.Connect(1, members)
	b.m.Connect(1, members)
	// The first call waits for the channel to open.
	if err := p.runner(KindCall, 1)(ctx, 1); err != nil {
		p.close()
		return nil, fmt.Errorf("bench: the mesh's channel did not open: %w", err)
	}
	return p, nil
}

func (p *meshPair) close() { p.a.m.Stop(); p.b.m.Stop() }

// opWaiter is an Op with a channel its completion is signalled on.
type opWaiter struct {
	op   channel.Op
	done chan struct{}
}

func newOpWaiter() *opWaiter {
	w := &opWaiter{done: make(chan struct{}, 1)}
	w.op.Done = func(*channel.Op) { w.done <- struct{}{} }
	return w
}

// wait waits for the op's completion and returns its error.
func (w *opWaiter) wait(ctx context.Context, m *channel.Mesh) error {
	select {
	case <-w.done:
	case <-ctx.Done():
		m.Cancel(&w.op, ctx.Err())
		<-w.done
	}
	return w.op.Err
}

func (p *meshPair) runner(kind string, size int) func(context.Context, int) error {
	return pairRun(kind, size, p.a, p.b)
}

// apiStore is an embedded store and a coordinator for memberships.
type apiStore struct {
	emb   *store.Embedded
	stop  context.CancelFunc
	done  chan struct{}
	close func()
}

func startAPIStore(ctx context.Context, dir string) (*apiStore, error) {
	quiet := slog.New(slog.DiscardHandler)
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Logger: quiet})
	if err != nil {
		return nil, err
	}
	cli, err := store.Dial(ctx, store.DialConfig{Endpoints: e.Endpoints, Logger: quiet})
	if err != nil {
		e.Close()
		return nil, err
	}
	cctx, stop := context.WithCancel(context.Background())
	s := &apiStore{emb: e, stop: stop, done: make(chan struct{})}
	ccfg := coordinator.DefaultConfig()
	ccfg.Client, ccfg.Logger = cli, quiet
	go func() { defer close(s.done); _ = coordinator.Run(cctx, ccfg) }()
	s.close = func() {
		stop()
		<-s.done
		cli.Close()
		e.Close()
	}
	return s, nil
}

// apiEnd is one side of an API pair; it implements pairEnd in the pair's
// epoch.
type apiEnd struct {
	d    *idc.Membership
	ep   *idc.Epoch // the epoch measured in, the same at both sides
	peer string     // the other side's ID
}

func (x *apiEnd) call(ctx context.Context, data []byte) ([]byte, error) {
	return x.ep.Call(ctx, x.peer, data)
}

func (x *apiEnd) send(ctx context.Context, data []byte) error {
	return x.ep.Send(ctx, x.peer, data)
}

// stream is send: Send returns once the message was handed to the
// connection, and waits only while the peer has not taken enough.
func (x *apiEnd) stream(ctx context.Context, data []byte) error {
	return x.ep.Send(ctx, x.peer, data)
}

func (x *apiEnd) flush(context.Context) error { return nil }

func (x *apiEnd) recv(ctx context.Context) (idc.Message, error) {
	return x.ep.Receive(ctx)
}

// apiPair is two memberships of one group connected over one transport;
// b's handler answers calls with their bytes.
type apiPair struct {
	a, b apiEnd
}

func (s *apiStore) pair(ctx context.Context, tr, dir string, o ChannelOptions) (p *apiPair, err error) {
	quiet := slog.New(slog.DiscardHandler)
	p = &apiPair{a: apiEnd{peer: "b"}, b: apiEnd{peer: "a"}}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	join := func(id string) (*idc.Membership, error) {
		cfg := idc.DefaultConfig()
		cfg.Group, cfg.ID, cfg.Endpoints, cfg.Logger = "bench-"+tr, id, s.emb.Endpoints, quiet
		cfg.Listen = listenAddr(tr, filepath.Join(dir, tr+"-api-"+id+".sock"))
		cfg.Heartbeat, cfg.HeartbeatMisses = o.Heartbeat, o.Misses
		cfg.Handler = idc.HandlerFunc(func(_ context.Context, r idc.Request) ([]byte, error) { return r.Data, nil })
		return idc.Join(ctx, cfg)
	}
	if p.a.d, err = join("a"); err != nil {
		return p, err
	}
	if p.b.d, err = join("b"); err != nil {
		return p, err
	}
	return p, p.connect(ctx)
}

// connect waits until both memberships hold the same connected epoch of
// both, and for its channel to open.
func (p *apiPair) connect(ctx context.Context) (err error) {
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	next := func(d *idc.Membership) (*idc.Epoch, error) {
		for {
			ep, err := d.Next(wctx)
			if err != nil {
				return nil, err
			}
			if len(ep.Members()) == 2 && ep.Context().Err() == nil {
				return ep, nil
			}
		}
	}
	if p.a.ep, err = next(p.a.d); err != nil {
		return err
	}
	if p.b.ep, err = next(p.b.d); err != nil {
		return err
	}
	for p.a.ep.Number() != p.b.ep.Number() { // the one behind catches up
		if p.a.ep.Number() < p.b.ep.Number() {
			p.a.ep, err = next(p.a.d)
		} else {
			p.b.ep, err = next(p.b.d)
		}
		if err != nil {
			return err
		}
	}
	// The first call waits for the channel to open.
	if _, err := p.a.ep.Call(wctx, "b", []byte("x")); err != nil {
		return fmt.Errorf("bench: the API's channel did not open: %w", err)
	}
	return nil
}

func (p *apiPair) close() {
	for _, d := range []*idc.Membership{p.a.d, p.b.d} {
		if d != nil {
			d.Close()
		}
	}
}

// check reports an error of a measurement, naming an epoch that ended
// meanwhile (the figures would be meaningless).
func (p *apiPair) check(err error) error {
	if err == nil {
		return nil
	}
	if epochEnded(err) {
		return fmt.Errorf("the epoch ended during the measurement: %w", err)
	}
	return err
}

// epochEnded reports whether err says the measurement's epoch ended (on a
// machine busy with other work, a starved member may be reported or lose
// its lease).
func epochEnded(err error) bool {
	return errors.Is(err, proto.ErrEpochEnded) || errors.Is(err, proto.ErrNotConnected) || errors.Is(err, proto.ErrPeerLost)
}

// runner returns the measurement; if the epoch ends during a run, the
// run is made again in the next epoch of both (a few times at most).
func (p *apiPair) runner(kind string, size int) func(context.Context, int) error {
	run := pairRun(kind, size, &p.a, &p.b)
	return func(ctx context.Context, n int) error {
		for try := 0; ; try++ {
			err := p.check(run(ctx, n))
			if err == nil || !epochEnded(err) || try == 3 {
				return err
			}
			if err := p.connect(ctx); err != nil {
				return fmt.Errorf("bench: after the epoch ended: %w", err)
			}
		}
	}
}
