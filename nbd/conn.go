package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
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

	wmu sync.Mutex // serialises replies

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
// in its own goroutine, at most MaxInFlight at once.
func (c *conn) transmit() {
	var running sync.WaitGroup
	clean := false // NBD_CMD_DISC: let running requests finish
	defer func() {
		if !clean {
			c.cancel()
		}
		running.Wait()
	}()
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
			if c.reply(req.cookie, code, nil) != nil {
				return
			}
			continue
		}
		var payload []byte
		if req.typ == cmdWrite {
			payload = make([]byte, req.length)
			if _, err := io.ReadFull(c.br, payload); err != nil {
				<-c.slots
				return
			}
		}
		running.Add(1)
		go func() {
			defer running.Done()
			defer func() { <-c.slots }()
			c.run(req, payload)
		}()
	}
}

func (c *conn) isDraining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.draining
}

// run executes one request and sends its reply.
func (c *conn) run(req request, payload []byte) {
	var buf []byte
	if req.typ == cmdRead && req.length <= c.s.cfg.MaxRequestSize {
		buf = make([]byte, replyHeaderLen+int(req.length))
	}
	code := c.exec(req, payload, buf)
	if code != 0 || req.typ != cmdRead {
		buf = nil
	}
	c.reply(req.cookie, code, buf)
}

// exec checks a request and calls the backend. For a READ, buf has room
// for the reply header and the data.
func (c *conn) exec(req request, payload, buf []byte) uint32 {
	if c.fenced.Load() || c.isDraining() {
		return errnoShutdown
	}
	f := c.feat
	fua := req.flags&cmdFlagFUA != 0
	allowed := uint16(0)
	if c.tflags&tflagSendFUA != 0 {
		allowed |= cmdFlagFUA // valid on every command once advertised
	}
	if req.typ == cmdWriteZeroes {
		allowed |= cmdFlagNoHole
	}
	reject := func(code uint32, why string) uint32 {
		c.log.Debug("nbd: request rejected", "cmd", commandName(req.typ), "offset", req.offset, "length", req.length, "flags", req.flags, "err", why)
		return code
	}
	if req.flags&^allowed != 0 {
		return reject(errnoInval, "flags not valid for this command")
	}
	off, n := req.offset, uint64(req.length)
	inBounds := off <= c.size && n <= c.size-off
	aligned := off%uint64(c.s.cfg.MinBlockSize) == 0 && n%uint64(c.s.cfg.MinBlockSize) == 0
	var err error
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
			return 0
		}
		err = c.exp.Backend.ReadAt(c.ctx, buf[replyHeaderLen:], off)
	case cmdWrite:
		switch {
		case f.ReadOnly:
			return reject(errnoPerm, "read-only export")
		case !inBounds:
			return reject(errnoNoSpc, "beyond the end of the export")
		case !aligned:
			return reject(errnoInval, "not aligned to MinBlockSize")
		case n == 0:
			return 0
		}
		err = c.exp.Backend.WriteAt(c.ctx, payload, off, fua)
	case cmdFlush:
		if !f.Flush {
			return reject(errnoInval, "flush not supported")
		}
		err = c.exp.Backend.Flush(c.ctx)
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
			return 0
		}
		if trim {
			err = c.exp.Backend.Trim(c.ctx, off, n)
		} else {
			err = c.exp.Backend.Zero(c.ctx, off, n, req.flags&cmdFlagNoHole != 0)
		}
		if err == nil && fua && f.Flush {
			err = c.exp.Backend.Flush(c.ctx)
		}
	default:
		return reject(errnoInval, "unknown command")
	}
	if err != nil {
		code := errno(err)
		if code == errnoShutdown {
			c.fenced.Store(true)
		}
		c.log.Warn("nbd: backend error", "cmd", commandName(req.typ), "offset", off, "length", n, "err", err, "errno", code)
		return code
	}
	return 0
}

// reply sends a simple reply. buf is nil, or holds replyHeaderLen bytes of
// room followed by the data of a READ; the whole reply goes out in one
// write, under the write lock.
func (c *conn) reply(cookie uint64, code uint32, buf []byte) error {
	if buf == nil {
		buf = make([]byte, replyHeaderLen)
	}
	binary.BigEndian.PutUint32(buf[0:], magicSimpleRepl)
	binary.BigEndian.PutUint32(buf[4:], code)
	binary.BigEndian.PutUint64(buf[8:], cookie)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.nc.Write(buf); err != nil {
		c.log.Debug("nbd: write reply", "err", err)
		c.abort()
		return err
	}
	return nil
}
