package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// conn is one client connection.
type conn struct {
	s      *Server
	nc     net.Conn
	log    *slog.Logger
	ctx    context.Context // cancelled when the connection is torn down
	cancel context.CancelFunc
	br     *bufio.Reader

	mu           sync.Mutex
	transmitting bool          // handshake done; guarded by mu
	draining     bool          // beginShutdown ran in transmission; guarded by mu
	slots        chan struct{} // one token per request running
	drainCh      chan struct{} // closed when draining begins

	rep     replier        // writes the replies
	running sync.WaitGroup // requests whose reply is not written yet

	fenced atomic.Bool // a backend call returned ErrShutdown

	// Set when the client selects an export.
	exp    *Export
	size   uint64
	feat   Features
	tflags uint16
}

func newConn(ctx context.Context, s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(ctx)
	return &conn{
		s:       s,
		nc:      nc,
		log:     s.log.With("remote", nc.RemoteAddr().String()),
		ctx:     ctx,
		cancel:  cancel,
		br:      bufio.NewReaderSize(nc, 64<<10),
		slots:   make(chan struct{}, s.cfg.MaxInFlight),
		drainCh: make(chan struct{}),
	}
}

// serve runs the connection to its end and closes it.
func (c *conn) serve() {
	defer c.cancel()
	defer c.nc.Close()
	// A cancelled context (Serve's ctx, or Shutdown running out of time)
	// is a hard disconnect.
	stop := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer stop()

	if c.s.cfg.HandshakeTimeout > 0 {
		c.nc.SetDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	}
	exp, err := c.handshake()
	if err != nil {
		if !errors.Is(err, errAborted) {
			c.log.Debug("nbd: handshake ended", "err", err)
		}
		return
	}
	c.nc.SetDeadline(time.Time{})
	c.selectExport(exp)
	c.mu.Lock()
	c.transmitting = true
	drain := c.s.isShutting()
	c.mu.Unlock()
	if drain {
		c.beginShutdown()
	}
	c.log.Debug("nbd: transmission", "export", exp.Name, "size", c.size, "flags", c.tflags)
	c.transmit()
}

// beginShutdown starts the server shutdown of this connection: closed now
// in the handshake; in transmission, closed once no request is running.
func (c *conn) beginShutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.transmitting {
		c.nc.Close()
		return
	}
	if c.draining {
		return
	}
	c.draining = true
	close(c.drainCh)
	go func() {
		for range cap(c.slots) {
			select {
			case c.slots <- struct{}{}:
			case <-c.ctx.Done():
				return
			}
		}
		c.nc.Close()
	}()
}

// abort tears the connection down at once.
func (c *conn) abort() {
	c.cancel()
	c.nc.Close()
}

func (c *conn) selectExport(e *Export) {
	c.exp = e
	c.size = e.Backend.Size()
	c.feat = e.Backend.Features()
	f := tflagHasFlags
	if c.feat.ReadOnly {
		f |= tflagReadOnly
	}
	if c.feat.Flush {
		f |= tflagSendFlush
	}
	if c.feat.FUA && !c.feat.ReadOnly {
		f |= tflagSendFUA
	}
	if c.feat.Trim && !c.feat.ReadOnly {
		f |= tflagSendTrim
	}
	if c.feat.Zero && !c.feat.ReadOnly {
		f |= tflagSendWriteZeroes
	}
	if c.feat.MultiConn {
		f |= tflagCanMultiConn
	}
	c.tflags = f
}

func (c *conn) lookup(name string) *Export {
	exps := c.s.cfg.Exports
	if name == "" {
		return &exps[0]
	}
	for i := range exps {
		if exps[i].Name == name {
			return &exps[i]
		}
	}
	return nil
}

var errAborted = errors.New("nbd: client sent NBD_OPT_ABORT")

// handshake runs the fixed newstyle negotiation and returns the export
// the client selected.
func (c *conn) handshake() (*Export, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicInit)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, err
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(clientFlagFixedNewstyle|clientFlagNoZeroes) != 0 {
		return nil, fmt.Errorf("nbd: unknown client flags %#x", clientFlags)
	}
	noZeroes := clientFlags&clientFlagNoZeroes != 0

	w := bufio.NewWriter(c.nc)
	for range maxOptions {
		var hdr [16]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return nil, err
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
			return nil, fmt.Errorf("nbd: bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		n := binary.BigEndian.Uint32(hdr[12:])
		if n > maxOptionLen {
			return nil, fmt.Errorf("nbd: %s with %d bytes of data, above %d", optionName(opt), n, maxOptionLen)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, err
		}
		exp, done, err := c.option(w, opt, data, noZeroes)
		if err != nil {
			return nil, err
		}
		if err := w.Flush(); err != nil {
			return nil, err
		}
		if done {
			return exp, nil
		}
	}
	return nil, fmt.Errorf("nbd: more than %d options", maxOptions)
}

// option answers one option. It returns the export when the client has
// selected one and transmission begins, and an error when the
// session must end.
func (c *conn) option(w *bufio.Writer, opt uint32, data []byte, noZeroes bool) (*Export, bool, error) {
	if c.s.isShutting() && opt != optAbort {
		if opt == optExportName {
			return nil, false, errors.New("nbd: NBD_OPT_EXPORT_NAME while shutting down")
		}
		writeOptReply(w, opt, repErrShutdn, []byte("server is shutting down"))
		return nil, false, nil
	}
	switch opt {
	case optExportName:
		if len(data) > maxStringLen {
			return nil, false, fmt.Errorf("nbd: export name of %d bytes", len(data))
		}
		exp := c.lookup(string(data))
		if exp == nil {
			// The option has no error reply: the protocol says to end the session.
			return nil, false, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME: unknown export %q", data)
		}
		c.selectExport(exp)
		b := make([]byte, 10, 134)
		binary.BigEndian.PutUint64(b[0:], c.size)
		binary.BigEndian.PutUint16(b[8:], c.tflags)
		if !noZeroes {
			b = b[:134]
		}
		_, err := w.Write(b)
		return exp, true, err

	case optAbort:
		writeOptReply(w, opt, repAck, nil)
		w.Flush()
		return nil, false, errAborted

	case optList:
		if len(data) != 0 {
			writeOptReply(w, opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
			return nil, false, nil
		}
		for _, e := range c.s.cfg.Exports {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
			b = append(b, e.Name...)
			b = append(b, e.Description...)
			writeOptReply(w, opt, repServer, b)
		}
		writeOptReply(w, opt, repAck, nil)
		return nil, false, nil

	case optInfo, optGo:
		req, err := parseInfoRequest(data)
		if err != nil {
			writeOptReply(w, opt, repErrInvalid, []byte(err.Error()))
			return nil, false, nil
		}
		exp := c.lookup(req.name)
		if exp == nil {
			writeOptReply(w, opt, repErrUnknown, fmt.Appendf(nil, "unknown export %q", req.name))
			return nil, false, nil
		}
		c.selectExport(exp)
		b := binary.BigEndian.AppendUint16(nil, infoExport)
		b = binary.BigEndian.AppendUint64(b, c.size)
		b = binary.BigEndian.AppendUint16(b, c.tflags)
		writeOptReply(w, opt, repInfo, b)
		// Block sizes are always sent: the protocol lets a server send
		// information that was not asked for.
		cfg := &c.s.cfg
		b = binary.BigEndian.AppendUint16(nil, infoBlockSize)
		b = binary.BigEndian.AppendUint32(b, cfg.MinBlockSize)
		b = binary.BigEndian.AppendUint32(b, cfg.PreferredBlockSize)
		b = binary.BigEndian.AppendUint32(b, cfg.MaxRequestSize)
		writeOptReply(w, opt, repInfo, b)
		sentName, sentDesc := false, false
		for _, t := range req.infos {
			switch {
			case t == infoName && !sentName:
				sentName = true
				b = binary.BigEndian.AppendUint16(nil, infoName)
				writeOptReply(w, opt, repInfo, append(b, exp.Name...))
			case t == infoDescription && !sentDesc && exp.Description != "":
				sentDesc = true
				b = binary.BigEndian.AppendUint16(nil, infoDescription)
				writeOptReply(w, opt, repInfo, append(b, exp.Description...))
			}
		}
		writeOptReply(w, opt, repAck, nil)
		return exp, opt == optGo, nil
	}
	// NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, the metadata and
	// extended-header options, and every unknown option.
	writeOptReply(w, opt, repErrUnsup, nil)
	return nil, false, nil
}

// writeOptReply appends one option reply to w; errors surface at Flush.
func writeOptReply(w *bufio.Writer, opt, typ uint32, data []byte) {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	w.Write(h[:])
	w.Write(data)
}

// transmit runs the transmission phase: it reads requests and runs each
// in its own goroutine — or, for the reads and writes of an AsyncBackend,
// starts it from this goroutine — at most MaxInFlight at once. A request
// holds its slot until its reply was written.
func (c *conn) transmit() {
	c.rep.init(c)
	clean := false // NBD_CMD_DISC: let running requests finish
	defer func() {
		if !clean {
			c.cancel()
		}
		c.running.Wait()
		c.rep.stop()
	}()
	async, _ := c.exp.Backend.(AsyncBackend)
	maxReq := c.s.cfg.MaxRequestSize
	for {
		var hdr [requestHeaderLen]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && !c.isDraining() {
				c.log.Debug("nbd: read request", "err", err)
			}
			return
		}
		req, err := parseRequest(&hdr)
		if err != nil {
			c.log.Warn("nbd: hard disconnect", "err", err)
			return
		}
		if req.typ == cmdDisc {
			clean = true
			return
		}
		if req.typ == cmdWrite && req.length > dosWriteLen {
			c.log.Warn("nbd: hard disconnect: write payload too large", "length", req.length, "max", maxReq)
			return
		}
		// Requests answered at once, without a slot: an oversized write,
		// and every request once the connection is shutting down.
		var code uint32
		switch {
		case c.fenced.Load() || c.isDraining():
			code = errnoShutdown
		case req.typ == cmdWrite && req.length > maxReq:
			c.log.Debug("nbd: request rejected", "cmd", commandName(req.typ), "length", req.length, "err", "longer than MaxRequestSize")
			code = errnoInval
		default:
			select {
			case c.slots <- struct{}{}:
			case <-c.drainCh:
				code = errnoShutdown
			}
		}
		if code != 0 {
			if req.typ == cmdWrite {
				if _, err := io.CopyN(io.Discard, c.br, int64(req.length)); err != nil {
					return
				}
			}
			if c.rep.replyNow(req.cookie, code) != nil {
				return
			}
			continue
		}
		var payload *[]byte
		if req.typ == cmdWrite {
			payload = getBuf(int(req.length))
			if _, err := io.ReadFull(c.br, *payload); err != nil {
				putBuf(payload)
				<-c.slots
				return
			}
		}
		c.running.Add(1)
		if async != nil && (req.typ == cmdRead || req.typ == cmdWrite) {
			c.start(async, req, payload)
			continue
		}
		go c.run(req, payload)
	}
}

func (c *conn) isDraining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.draining
}

// run executes one request and queues its reply. payload, a write's, is
// put back once the backend returned.
func (c *conn) run(req request, payload *[]byte) {
	var bp *[]byte
	var buf, data []byte
	if req.typ == cmdRead && req.length <= c.s.cfg.MaxRequestSize {
		bp = getBuf(replyHeaderLen + int(req.length))
		buf = *bp
	}
	if payload != nil {
		data = *payload
	}
	code := c.exec(req, data, buf)
	if payload != nil {
		putBuf(payload) // the backend returned: it keeps nothing of it
	}
	c.done(req, code, bp)
}

// start starts a read or a write of an AsyncBackend; its completion
// queues the reply. It never blocks.
func (c *conn) start(b AsyncBackend, req request, payload *[]byte) {
	if code, ok := c.check(req); !ok {
		if payload != nil {
			putBuf(payload)
		}
		c.done(req, code, nil)
		return
	}
	a := asyncReqs.Get().(*asyncReq)
	a.c, a.req, a.payload = c, req, payload
	if req.typ == cmdRead {
		a.buf = getBuf(replyHeaderLen + int(req.length))
		b.StartReadAt(c.ctx, (*a.buf)[replyHeaderLen:], req.offset, a.fn)
		return
	}
	b.StartWriteAt(c.ctx, *payload, req.offset, req.flags&cmdFlagFUA != 0, a.fn)
}

// asyncReq is a request an AsyncBackend runs; pooled, with its completion
// made once.
type asyncReq struct {
	c       *conn
	req     request
	payload *[]byte // a write's
	buf     *[]byte // a read's reply
	fn      func(error)
}

var asyncReqs sync.Pool

func init() {
	asyncReqs.New = func() any {
		a := &asyncReq{}
		a.fn = a.complete
		return a
	}
}

// complete is the backend's completion of a: the buffers are the
// connection's again.
func (a *asyncReq) complete(err error) {
	c, req, payload, buf := a.c, a.req, a.payload, a.buf
	*a = asyncReq{fn: a.fn}
	asyncReqs.Put(a)
	if payload != nil {
		putBuf(payload)
	}
	c.done(req, c.outcome(req, err), buf)
}

// done queues the reply of a request that held a slot: with the data in
// bp (its header's room first) if it is a READ that succeeded. The slot,
// the running count and bp are released once the reply was written.
func (c *conn) done(req request, code uint32, bp *[]byte) {
	if bp != nil && (code != 0 || req.typ != cmdRead) {
		putBuf(bp)
		bp = nil
	}
	c.rep.send(outReply{cookie: req.cookie, code: code, buf: bp, slot: true})
}

// bufPools keep requests' payloads and reads' replies once used, by
// power-of-two size class from 512 bytes to twice the largest request,
// so that a stream of requests allocates nothing per request. A backend
// must not keep the buffer ReadAt or WriteAt was given once it returned
// (as io.ReaderAt and io.WriterAt must not).
var bufPools [27]sync.Pool // up to 64 MiB: a read of dosWriteLen and its header

// getBuf returns a buffer of length n, a pooled one if there is one; its
// bytes are not cleared.
func getBuf(n int) *[]byte {
	k := max(9, bits.Len(uint(n-1)))
	if bp, ok := bufPools[k].Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, 1<<k)
	return &b
}

// putBuf pools a buffer getBuf returned. It must not be used afterwards.
func putBuf(bp *[]byte) {
	bufPools[bits.Len(uint(cap(*bp)-1))].Put(bp)
}

// exec checks a request and calls the backend. For a READ, buf has room
// for the reply header and the data.
func (c *conn) exec(req request, payload, buf []byte) uint32 {
	if code, ok := c.check(req); !ok {
		return code
	}
	off, n := req.offset, uint64(req.length)
	var err error
	switch req.typ {
	case cmdRead:
		err = c.exp.Backend.ReadAt(c.ctx, buf[replyHeaderLen:], off)
	case cmdWrite:
		err = c.exp.Backend.WriteAt(c.ctx, payload, off, req.flags&cmdFlagFUA != 0)
	case cmdFlush:
		err = c.exp.Backend.Flush(c.ctx)
	case cmdTrim:
		err = c.exp.Backend.Trim(c.ctx, off, n)
	case cmdWriteZeroes:
		err = c.exp.Backend.Zero(c.ctx, off, n, req.flags&cmdFlagNoHole != 0)
	}
	if err == nil && req.flags&cmdFlagFUA != 0 && (req.typ == cmdTrim || req.typ == cmdWriteZeroes) && c.feat.Flush {
		err = c.exp.Backend.Flush(c.ctx)
	}
	return c.outcome(req, err)
}

// outcome is the reply's error value for the backend's err, which it
// logs; ErrShutdown fences the connection.
func (c *conn) outcome(req request, err error) uint32 {
	if err == nil {
		return 0
	}
	code := errno(err)
	if code == errnoShutdown {
		c.fenced.Store(true)
	}
	c.log.Warn("nbd: backend error", "cmd", commandName(req.typ), "offset", req.offset, "length", req.length, "err", err, "errno", code)
	return code
}

// check decides what it can of a request without the backend: ok is false
// if the request is answered at once, with code (0 for a request of no
// length), true if the backend is to run it.
func (c *conn) check(req request) (code uint32, ok bool) {
	if c.fenced.Load() || c.isDraining() {
		return errnoShutdown, false
	}
	f := c.feat
	allowed := uint16(0)
	if c.tflags&tflagSendFUA != 0 {
		allowed |= cmdFlagFUA // valid on every command once advertised
	}
	if req.typ == cmdWriteZeroes {
		allowed |= cmdFlagNoHole
	}
	reject := func(code uint32, why string) (uint32, bool) {
		c.log.Debug("nbd: request rejected", "cmd", commandName(req.typ), "offset", req.offset, "length", req.length, "flags", req.flags, "err", why)
		return code, false
	}
	if req.flags&^allowed != 0 {
		return reject(errnoInval, "flags not valid for this command")
	}
	off, n := req.offset, uint64(req.length)
	inBounds := off <= c.size && n <= c.size-off
	aligned := off%uint64(c.s.cfg.MinBlockSize) == 0 && n%uint64(c.s.cfg.MinBlockSize) == 0
	switch req.typ {
	case cmdRead:
		switch {
		case req.length > c.s.cfg.MaxRequestSize:
			return reject(errnoInval, "longer than MaxRequestSize")
		case !inBounds:
			return reject(errnoInval, "beyond the end of the export")
		case !aligned:
			return reject(errnoInval, "not aligned to MinBlockSize")
		case n == 0:
			return 0, false
		}
	case cmdWrite:
		switch {
		case f.ReadOnly:
			return reject(errnoPerm, "read-only export")
		case !inBounds:
			return reject(errnoNoSpc, "beyond the end of the export")
		case !aligned:
			return reject(errnoInval, "not aligned to MinBlockSize")
		case n == 0:
			return 0, false
		}
	case cmdFlush:
		if !f.Flush {
			return reject(errnoInval, "flush not supported")
		}
	case cmdTrim, cmdWriteZeroes:
		trim := req.typ == cmdTrim
		switch {
		case trim && !f.Trim, !trim && !f.Zero:
			return reject(errnoInval, "command not supported")
		case f.ReadOnly:
			return reject(errnoPerm, "read-only export")
		case !inBounds && trim:
			return reject(errnoInval, "beyond the end of the export")
		case !inBounds:
			return reject(errnoNoSpc, "beyond the end of the export")
		case !aligned:
			return reject(errnoInval, "not aligned to MinBlockSize")
		case n == 0:
			return 0, false
		}
	default:
		return reject(errnoInval, "unknown command")
	}
	return 0, true
}

// maxDirect is the largest reply written at once by the goroutine that
// has it: copying a larger one into the socket costs that goroutine
// (another component's, for an AsyncBackend) more than handing it to the
// writer goroutine, which writes it while the completions go on.
const maxDirect = 16 << 10

// outReply is a simple reply waiting to be written.
type outReply struct {
	cookie uint64
	code   uint32
	// buf, if not nil, holds the reply of a READ: the header's room, then
	// the data. It is put back once written.
	buf *[]byte
	hdr [replyHeaderLen]byte // the header, when buf is nil
	off int                  // bytes of the reply already written
	// slot: the reply's request holds a slot and a running count, which
	// are released once it was written. Otherwise written, if not nil,
	// receives the outcome of the write.
	slot    bool
	written chan error
}

// bytes returns the reply's bytes, its header filled in.
func (r *outReply) bytes() []byte {
	b := r.hdr[:]
	if r.buf != nil {
		b = *r.buf
	}
	binary.BigEndian.PutUint32(b[0:], magicSimpleRepl)
	binary.BigEndian.PutUint32(b[4:], r.code)
	binary.BigEndian.PutUint64(b[8:], r.cookie)
	return b
}

// replier writes a connection's replies, in the order they are ready. A
// small reply ready while nothing waits to be written is written at once
// by the goroutine that has it, with one non-blocking write, so that a
// request completed on another component's goroutine (an AsyncBackend's)
// never blocks that goroutine; what the socket does not take at once, the
// replies that come meanwhile, and the large ones (maxDirect), go to the
// writer goroutine, which writes all that has gathered with one writev. A reply holds its
// request's slot until it was written, so a client that reads no replies
// holds its connection at MaxInFlight requests.
type replier struct {
	c   *conn
	raw syscall.RawConn // nil: every reply goes through the writer goroutine

	mu      sync.Mutex
	queue   []outReply // waiting for the writer goroutine, in order
	writing bool       // the writer goroutine writes a batch
	stopped bool
	err     error // a write failed: nothing more is written
	wake    chan struct{}
	// A direct write: its bytes, and what the write returned.
	direct  []byte
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

// init prepares r for c's transmission phase and starts its writer
// goroutine.
func (r *replier) init(c *conn) {
	r.c = c
	r.wake = make(chan struct{}, 1)
	if sc, ok := c.nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			r.raw = raw
			r.writeFn = func(fd uintptr) bool {
				r.wn, r.werr = unix.Write(int(fd), r.direct)
				return true // one attempt: never wait for the socket
			}
		}
	}
	go r.writer()
}

// stop ends the writer goroutine once every reply was written or
// dropped: call it after the last reply was sent.
func (r *replier) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.signal()
}

func (r *replier) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// send writes rep, or queues it for the writer goroutine. It never
// blocks.
func (r *replier) send(rep outReply) {
	r.mu.Lock()
	if err := r.err; err != nil || r.stopped {
		r.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		r.finish(&rep, err)
		return
	}
	if !r.writing && len(r.queue) == 0 && r.raw != nil && (rep.buf == nil || len(*rep.buf) <= maxDirect) {
		b := rep.bytes()
		r.direct = b
		err := r.raw.Write(r.writeFn)
		r.direct = nil
		n, werr := max(r.wn, 0), r.werr
		r.werr = nil
		if err == nil && werr != nil && werr != unix.EAGAIN && werr != unix.EINTR {
			err = werr
		}
		switch {
		case err != nil:
			r.err = err
			r.mu.Unlock()
			r.c.log.Debug("nbd: write reply", "err", err)
			r.c.abort()
			r.finish(&rep, err)
			return
		case n == len(b):
			r.mu.Unlock()
			r.finish(&rep, nil)
			return
		}
		rep.off = n // the writer goroutine writes the rest
	}
	r.queue = append(r.queue, rep)
	r.mu.Unlock()
	r.signal()
}

// replyNow sends a reply of a request that holds no slot (the reading
// goroutine's own) and waits until it was written.
func (r *replier) replyNow(cookie uint64, code uint32) error {
	ch := make(chan error, 1)
	r.send(outReply{cookie: cookie, code: code, written: ch})
	return <-ch
}

// finish releases what a reply held once it was written, or dropped
// with err.
func (r *replier) finish(rep *outReply, err error) {
	if rep.buf != nil {
		putBuf(rep.buf)
		rep.buf = nil
	}
	if rep.slot {
		<-r.c.slots
		r.c.running.Done()
	}
	if rep.written != nil {
		rep.written <- err
	}
}

// writer writes the replies that gather while another is being written,
// each batch with one writev.
func (r *replier) writer() {
	var (
		batch []outReply
		bufs  net.Buffers
		iovs  [][]byte
	)
	for range r.wake {
		r.mu.Lock()
		batch, r.queue = r.queue, batch[:0]
		r.writing = len(batch) > 0
		err, stopped := r.err, r.stopped
		r.mu.Unlock()
		if len(batch) > 0 {
			if err == nil {
				bufs = iovs[:0]
				for i := range batch {
					bufs = append(bufs, batch[i].bytes()[batch[i].off:])
				}
				iovs = bufs[:0]
				if _, err = bufs.WriteTo(r.c.nc); err != nil {
					r.c.log.Debug("nbd: write reply", "err", err)
					r.c.abort()
				}
				clear(iovs[:cap(iovs)])
			}
			r.mu.Lock()
			if err != nil && r.err == nil {
				r.err = err
			}
			r.writing = false
			if len(r.queue) > 0 || r.stopped {
				r.signal()
			}
			r.mu.Unlock()
			for i := range batch {
				r.finish(&batch[i], err)
				batch[i] = outReply{}
			}
			continue
		}
		if stopped {
			return
		}
	}
}
