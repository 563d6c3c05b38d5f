package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol values only the client needs.
const (
	magicOldstyle   uint64 = 0x00420281861253
	magicStructRepl uint32 = 0x668e33ef

	repErrPolicy        uint32 = 1<<31 + 2
	repErrPlatform      uint32 = 1<<31 + 4
	repErrTLSReqd       uint32 = 1<<31 + 5
	repErrBlockSizeReqd uint32 = 1<<31 + 8

	errnoOverflow uint32 = 75
	errnoNotSup   uint32 = 95
)

const (
	// clientMaxRequest is the longest READ or WRITE the client sends: the
	// protocol's portable limit, used when the server advertises no
	// maximum block size or a larger one.
	clientMaxRequest = 32 << 20
	// maxOptReplyLen bounds the data of one option reply the client reads.
	maxOptReplyLen = 64 << 10
	// discTimeout bounds sending NBD_CMD_DISC and, after a drained Close,
	// the wait for the server to close the connection.
	discTimeout = time.Second
)

// DefaultCloseTimeout is the default of ClientConfig.CloseTimeout.
const DefaultCloseTimeout = 5 * time.Second

// Errors of the client. Errors of single requests also wrap the Backend
// errors ErrIO, ErrInvalid, ErrNoSpace, ErrPermission and ErrShutdown:
// see ReplyError.
var (
	// ErrHandshake reports a failed handshake: the server is not a fixed
	// newstyle NBD server, does not know the export, refused NBD_OPT_GO,
	// broke the protocol, or the connection failed during the handshake.
	// When the server lacks something the client needs (fixed newstyle,
	// NBD_OPT_GO, or a handshake without TLS), the error also wraps
	// errors.ErrUnsupported.
	ErrHandshake = errors.New("nbd: handshake failed")
	// ErrDisconnected reports that the connection is gone: it failed, the
	// server broke the protocol, the client was closed, or the client
	// disconnected after the server answered NBD_ESHUTDOWN (then the error
	// wraps ErrShutdown too). Every request in flight at that moment, and
	// every later one, fails with an error wrapping ErrDisconnected.
	ErrDisconnected = errors.New("nbd: disconnected")
)

var (
	errClientClosed = fmt.Errorf("%w: client closed", ErrDisconnected)
	errShutdownDisc = fmt.Errorf("%w: the server answered NBD_ESHUTDOWN and the client disconnected: %w", ErrDisconnected, ErrShutdown)
)

// ClientConfig configures a Client. The zero value opens the server's
// default export.
type ClientConfig struct {
	// Export is the name of the export to open; empty asks for the
	// server's default export. DialURI takes it from the URI instead.
	Export string
	// CloseTimeout bounds how long Close waits for the requests in flight
	// to be answered before it disconnects anyway; the default is
	// DefaultCloseTimeout.
	CloseTimeout time.Duration
}

// ExportInfo describes the export a Client opened, as the server
// advertised it in the handshake.
type ExportInfo struct {
	// Name is the export name the client asked for.
	Name string
	// Size is the size of the export in bytes.
	Size uint64
	// Flags holds the raw transmission flags (NBD_FLAG_HAS_FLAGS,
	// NBD_FLAG_READ_ONLY, ...); the booleans below decode the ones the
	// client uses.
	Flags uint16
	// ReadOnly: the export refuses writes, trims and zeroes
	// (NBD_FLAG_READ_ONLY).
	ReadOnly bool
	// CanFlush: the server accepts NBD_CMD_FLUSH (NBD_FLAG_SEND_FLUSH).
	CanFlush bool
	// CanFUA: the server accepts the FUA flag (NBD_FLAG_SEND_FUA).
	CanFUA bool
	// CanTrim: the server accepts NBD_CMD_TRIM (NBD_FLAG_SEND_TRIM).
	CanTrim bool
	// CanZero: the server accepts NBD_CMD_WRITE_ZEROES
	// (NBD_FLAG_SEND_WRITE_ZEROES).
	CanZero bool
	// CanMultiConn: a flush on one connection covers the writes answered
	// on every connection to the export (NBD_FLAG_CAN_MULTI_CONN).
	CanMultiConn bool
	// MinBlockSize, PreferredBlockSize and MaxBlockSize are the block
	// size constraints of NBD_INFO_BLOCK_SIZE, or zero when the server
	// did not send them (the client then assumes 1, 4096 and 32 MiB).
	MinBlockSize, PreferredBlockSize, MaxBlockSize uint32
}

// ReplyError is an error reply of the server to one request. It wraps
// the Backend error of its errno: ErrPermission (NBD_EPERM), ErrInvalid
// (NBD_EINVAL), ErrNoSpace (NBD_ENOSPC), ErrShutdown (NBD_ESHUTDOWN) and
// ErrIO (NBD_EIO and every other errno), so that errors.Is works on it;
// errors.As tells it from an error of the client or the connection.
type ReplyError struct {
	// Command names the request's command, such as "NBD_CMD_WRITE".
	Command string
	// Offset and Length are the request's.
	Offset, Length uint64
	// Errno is the error value of the reply.
	Errno uint32
}

// Error implements error.
func (e *ReplyError) Error() string {
	return fmt.Sprintf("nbd: %s of %d bytes at offset %d: server replied %s", e.Command, e.Length, e.Offset, errnoName(e.Errno))
}

// Unwrap returns the Backend error matching e.Errno.
func (e *ReplyError) Unwrap() error {
	switch e.Errno {
	case errnoPerm:
		return ErrPermission
	case errnoInval:
		return ErrInvalid
	case errnoNoSpc:
		return ErrNoSpace
	case errnoShutdown:
		return ErrShutdown
	}
	return ErrIO
}

// errnoName names an errno of the protocol for error texts.
func errnoName(e uint32) string {
	switch e {
	case errnoPerm:
		return "NBD_EPERM (1)"
	case errnoIO:
		return "NBD_EIO (5)"
	case errnoNoMem:
		return "NBD_ENOMEM (12)"
	case errnoInval:
		return "NBD_EINVAL (22)"
	case errnoNoSpc:
		return "NBD_ENOSPC (28)"
	case errnoOverflow:
		return "NBD_EOVERFLOW (75)"
	case errnoNotSup:
		return "NBD_ENOTSUP (95)"
	case errnoShutdown:
		return "NBD_ESHUTDOWN (108)"
	}
	return fmt.Sprintf("errno %d", e)
}

// Client is an NBD client connected to one export. It speaks the fixed
// newstyle handshake with NBD_OPT_GO and, in transmission, simple replies
// only (it does not negotiate structured replies).
//
// Its methods are safe for concurrent use, and requests are pipelined:
// each call sends its request at once (requests are written one at a
// time, whole) and waits for its own reply, while a single goroutine
// reads the replies, in whatever order the server sends them, and hands
// each to its request by cookie. Many calls may thus be in flight on the
// one connection. The reader receives a READ's data into a buffer of its
// own, kept for the next replies, and copies it to the caller's.
//
// Before sending, a request is checked against what the server
// advertised: a command or flag the server did not offer fails with an
// error wrapping errors.ErrUnsupported, a write, trim or zero on a
// read-only export with ErrPermission, a range beyond the export or not
// aligned to the minimum block size, or a read or write longer than
// MaxRequest, with ErrInvalid (callers split long requests). A request of
// length zero succeeds without being sent.
//
// Every blocking method takes a context. A context done while the call
// waits for its turn to send or for its reply makes the call return
// ctx.Err(); once sent, the request stays in flight: the server may
// still apply it, and its reply is read and discarded. A request being
// written is written whole.
//
// When the server answers NBD_ESHUTDOWN, the client stops sending new
// requests (they fail with an error wrapping ErrShutdown and
// ErrDisconnected) and, once the requests in flight are answered, sends
// NBD_CMD_DISC, as the protocol requires.
type Client struct {
	nc           net.Conn
	br           *bufio.Reader
	info         ExportInfo
	minBlock     uint32
	maxReq       uint32
	closeTimeout time.Duration

	wsem       chan struct{} // a token while a request is being written
	dead       chan struct{} // closed when err is set
	idle       chan struct{} // closed when nothing is in flight once Close or a shutdown began
	readerDone chan struct{} // closed when the reply reader ends

	mu         sync.Mutex
	next       uint64           // next cookie
	pending    map[uint64]*call // sent requests not yet answered, by cookie
	err        error            // the connection's failure: every later call returns it
	closing    bool             // Close began
	shutdown   bool             // the server answered NBD_ESHUTDOWN
	idleClosed bool
	discSent   bool // NBD_CMD_DISC was sent, or is being sent

	bg        sync.WaitGroup // shutdownDisconnect
	closeOnce sync.Once
	closeErr  error
}

// States of a call: the reply reader and a cancelled caller race to move
// it out of callWaiting; only the reader's winning move lets it write
// the caller's buffer.
const (
	callWaiting int32 = iota
	callDone
	callAbandoned
)

// call is one request in flight.
type call struct {
	cmd    uint16
	off    uint64
	length uint32
	buf    []byte // a READ's destination
	state  atomic.Int32
	done   chan struct{} // closed when err is set and buf filled
	err    error
}

// DialURI connects to the export an NBD URI names (see ParseURI); the
// URI's export name replaces cfg.Export.
func DialURI(ctx context.Context, uri string, cfg ClientConfig) (*Client, error) {
	network, addr, export, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	cfg.Export = export
	return Dial(ctx, network, addr, cfg)
}

// Dial connects to addr on network ("unix" or "tcp") and opens the
// export cfg.Export. ctx bounds the connection and the handshake.
func Dial(ctx context.Context, network, addr string, cfg ClientConfig) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	return NewClient(ctx, nc, cfg)
}

// NewClient runs the handshake on nc, an established connection to an
// NBD server, and returns a Client for the export cfg.Export. ctx bounds
// the handshake. On failure nc is closed. The Client owns nc.
func NewClient(ctx context.Context, nc net.Conn, cfg ClientConfig) (*Client, error) {
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	if len(cfg.Export) > maxStringLen || strings.IndexByte(cfg.Export, 0) >= 0 {
		nc.Close()
		return nil, fmt.Errorf("%w: export name longer than %d bytes or with a NUL byte", ErrInvalid, maxStringLen)
	}
	if cfg.CloseTimeout < 0 {
		nc.Close()
		return nil, fmt.Errorf("%w: negative CloseTimeout %v", ErrInvalid, cfg.CloseTimeout)
	}
	if err := ctx.Err(); err != nil {
		nc.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	info, err := handshake(nc, br, cfg.Export)
	if !stop() {
		nc.Close()
		return nil, fmt.Errorf("%w: %w", ErrHandshake, ctx.Err())
	}
	if err != nil {
		nc.Close()
		if _, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	nc.SetDeadline(time.Time{})
	c := &Client{
		nc:           nc,
		br:           br,
		info:         info,
		minBlock:     max(info.MinBlockSize, 1),
		maxReq:       clientMaxRequest,
		closeTimeout: cfg.CloseTimeout,
		wsem:         make(chan struct{}, 1),
		dead:         make(chan struct{}),
		idle:         make(chan struct{}),
		readerDone:   make(chan struct{}),
		next:         1,
		pending:      map[uint64]*call{},
	}
	if info.MaxBlockSize != 0 {
		c.maxReq = min(info.MaxBlockSize, clientMaxRequest)
	}
	go c.readReplies()
	return c, nil
}

// handshake runs the fixed newstyle handshake up to NBD_OPT_GO's ack.
func handshake(nc net.Conn, br *bufio.Reader, export string) (ExportInfo, error) {
	info := ExportInfo{Name: export}
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:16]); err != nil {
		return info, err
	}
	if m := binary.BigEndian.Uint64(hello[0:]); m != magicInit {
		return info, fmt.Errorf("not an NBD server (magic %#x)", m)
	}
	switch m := binary.BigEndian.Uint64(hello[8:]); m {
	case magicOpt:
	case magicOldstyle:
		return info, fmt.Errorf("the server uses the oldstyle handshake: %w", errors.ErrUnsupported)
	default:
		return info, fmt.Errorf("bad handshake magic %#x", m)
	}
	if _, err := io.ReadFull(br, hello[16:]); err != nil {
		return info, err
	}
	hflags := binary.BigEndian.Uint16(hello[16:])
	if hflags&flagFixedNewstyle == 0 {
		return info, fmt.Errorf("the server does not offer the fixed newstyle handshake: %w", errors.ErrUnsupported)
	}
	cflags := clientFlagFixedNewstyle
	if hflags&flagNoZeroes != 0 {
		cflags |= clientFlagNoZeroes
	}
	// The client flags and NBD_OPT_GO, asking for the block sizes.
	b := binary.BigEndian.AppendUint32(nil, cflags)
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(export)+2+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint16(b, 1)
	b = binary.BigEndian.AppendUint16(b, infoBlockSize)
	if _, err := nc.Write(b); err != nil {
		return info, err
	}

	haveExport := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return info, err
		}
		if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
			return info, fmt.Errorf("bad option reply magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(h[8:])
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if opt != optGo {
			return info, fmt.Errorf("reply to %s while waiting for NBD_OPT_GO's", optionName(opt))
		}
		if n > maxOptReplyLen {
			return info, fmt.Errorf("option reply of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(br, data); err != nil {
			return info, err
		}
		switch {
		case typ == repAck:
			if !haveExport {
				return info, errors.New("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return info, nil
		case typ == repInfo:
			if len(data) < 2 {
				return info, errors.New("NBD_REP_INFO without a type")
			}
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return info, fmt.Errorf("NBD_INFO_EXPORT of %d bytes", len(data))
				}
				info.Size = binary.BigEndian.Uint64(data[2:])
				setFlags(&info, binary.BigEndian.Uint16(data[10:]))
				haveExport = true
			case infoBlockSize:
				if len(data) != 14 {
					return info, fmt.Errorf("NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
				}
				lo, pref, hi := binary.BigEndian.Uint32(data[2:]), binary.BigEndian.Uint32(data[6:]), binary.BigEndian.Uint32(data[10:])
				if bits.OnesCount32(lo) != 1 || lo > 1<<16 || pref < lo || hi < lo || (hi%lo != 0 && hi != math.MaxUint32) {
					return info, fmt.Errorf("invalid block sizes: minimum %d, preferred %d, maximum %d", lo, pref, hi)
				}
				info.MinBlockSize, info.PreferredBlockSize, info.MaxBlockSize = lo, pref, hi
			}
		case typ&(1<<31) != 0:
			// The session is over: end it with a soft disconnect
			// (NBD_OPT_ABORT), without waiting for its reply.
			abort := binary.BigEndian.AppendUint64(nil, magicOpt)
			abort = binary.BigEndian.AppendUint32(abort, optAbort)
			abort = binary.BigEndian.AppendUint32(abort, 0)
			nc.Write(abort)
			return info, optError(typ, export, data)
		default:
			return info, fmt.Errorf("unexpected reply type %#x to NBD_OPT_GO", typ)
		}
	}
}

// optError describes an error reply to NBD_OPT_GO.
func optError(typ uint32, export string, msg []byte) error {
	var err error
	switch typ {
	case repErrUnsup:
		err = fmt.Errorf("the server does not support NBD_OPT_GO: %w", errors.ErrUnsupported)
	case repErrUnknown:
		err = fmt.Errorf("unknown export %q", export)
	case repErrShutdn:
		err = fmt.Errorf("the server is shutting down: %w", ErrShutdown)
	case repErrTLSReqd:
		err = fmt.Errorf("the server requires TLS: %w", errors.ErrUnsupported)
	case repErrPolicy:
		err = errors.New("the server's policy refuses the export (NBD_REP_ERR_POLICY)")
	case repErrInvalid:
		err = errors.New("the server found NBD_OPT_GO invalid (NBD_REP_ERR_INVALID)")
	case repErrPlatform:
		err = errors.New("the server's platform does not support it (NBD_REP_ERR_PLATFORM)")
	case repErrBlockSizeReqd:
		err = errors.New("the server requires block sizes (NBD_REP_ERR_BLOCK_SIZE_REQD)")
	default:
		err = fmt.Errorf("error reply %#x to NBD_OPT_GO", typ)
	}
	if len(msg) > 0 {
		err = fmt.Errorf("%w: %q", err, msg)
	}
	return err
}

// setFlags records the transmission flags in info.
func setFlags(info *ExportInfo, f uint16) {
	info.Flags = f
	if f&tflagHasFlags == 0 {
		return // no flag is meaningful
	}
	info.ReadOnly = f&tflagReadOnly != 0
	info.CanFlush = f&tflagSendFlush != 0
	info.CanFUA = f&tflagSendFUA != 0
	info.CanTrim = f&tflagSendTrim != 0
	info.CanZero = f&tflagSendWriteZeroes != 0
	info.CanMultiConn = f&tflagCanMultiConn != 0
}

// Info returns what the server advertised about the export.
func (c *Client) Info() ExportInfo { return c.info }

// Size returns the size of the export in bytes.
func (c *Client) Size() uint64 { return c.info.Size }

// MaxRequest returns the longest ReadAt or WriteAt the client sends: the
// server's maximum block size, at most 32 MiB (the protocol's portable
// limit, also used when the server advertises none). It is a multiple of
// the minimum block size.
func (c *Client) MaxRequest() uint32 { return c.maxReq }

// ReadAt reads len(p) bytes at off into p. p is written only if ReadAt
// returns nil.
func (c *Client) ReadAt(ctx context.Context, p []byte, off uint64) error {
	return c.do(ctx, cmdRead, 0, off, uint64(len(p)), nil, p)
}

// WriteAt writes p at off. With fua, the server replies only once the
// data is on stable storage (it requires Info().CanFUA). p is not
// retained after WriteAt returns.
func (c *Client) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	return c.do(ctx, cmdWrite, flags, off, uint64(len(p)), p, nil)
}

// Flush makes every write the server has answered durable
// (NBD_CMD_FLUSH; it requires Info().CanFlush).
func (c *Client) Flush(ctx context.Context) error {
	return c.do(ctx, cmdFlush, 0, 0, 0, nil, nil)
}

// Trim tells the server that the range is no longer needed; reads of it
// may then return anything (NBD_CMD_TRIM; it requires Info().CanTrim).
func (c *Client) Trim(ctx context.Context, off, length uint64) error {
	return c.do(ctx, cmdTrim, 0, off, length, nil, nil)
}

// Zero makes the range read back as zeroes (NBD_CMD_WRITE_ZEROES,
// letting the server punch holes; it requires Info().CanZero).
func (c *Client) Zero(ctx context.Context, off, length uint64) error {
	return c.do(ctx, cmdWriteZeroes, 0, off, length, nil, nil)
}

// check refuses a request the server did not offer or must not get.
func (c *Client) check(cmd, flags uint16, off, length uint64) error {
	info := &c.info
	name := commandName(cmd)
	if info.ReadOnly && cmd != cmdRead && cmd != cmdFlush {
		return fmt.Errorf("%w: %s on a read-only export", ErrPermission, name)
	}
	switch {
	case cmd == cmdFlush && !info.CanFlush,
		cmd == cmdTrim && !info.CanTrim,
		cmd == cmdWriteZeroes && !info.CanZero:
		return fmt.Errorf("nbd: the server does not offer %s: %w", name, errors.ErrUnsupported)
	case flags&cmdFlagFUA != 0 && !info.CanFUA:
		return fmt.Errorf("nbd: the server does not offer FUA: %w", errors.ErrUnsupported)
	case cmd == cmdFlush:
		return nil
	case off > info.Size || length > info.Size-off:
		return fmt.Errorf("%w: %s of %d bytes at offset %d is beyond the end of the export (%d bytes)", ErrInvalid, name, length, off, info.Size)
	case (cmd == cmdRead || cmd == cmdWrite) && length > uint64(c.maxReq):
		return fmt.Errorf("%w: %s of %d bytes is longer than the server's maximum request of %d bytes: split it", ErrInvalid, name, length, c.maxReq)
	case length > math.MaxUint32:
		return fmt.Errorf("%w: %s of %d bytes does not fit a request: split it", ErrInvalid, name, length)
	case off%uint64(c.minBlock) != 0 || length%uint64(c.minBlock) != 0:
		return fmt.Errorf("%w: %s of %d bytes at offset %d is not aligned to the server's minimum block size %d", ErrInvalid, name, length, off, c.minBlock)
	}
	return nil
}

// refusalLocked returns why the client takes no new request, or nil.
func (c *Client) refusalLocked() error {
	switch {
	case c.err != nil:
		return c.err
	case c.closing:
		return errClientClosed
	case c.shutdown:
		return errShutdownDisc
	}
	return nil
}

// do sends one request and waits for its reply.
func (c *Client) do(ctx context.Context, cmd, flags uint16, off, length uint64, payload, buf []byte) error {
	if err := c.check(cmd, flags, off, length); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if length == 0 && cmd != cmdFlush {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.refusalLocked()
	}
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.dead:
		return c.failure()
	}
	cl := &call{cmd: cmd, off: off, length: uint32(length), buf: buf, done: make(chan struct{})}
	c.mu.Lock()
	if err := c.refusalLocked(); err != nil {
		c.mu.Unlock()
		<-c.wsem
		return err
	}
	cookie := c.next
	c.next++
	c.pending[cookie] = cl
	c.mu.Unlock()

	var hdr [requestHeaderLen]byte
	binary.BigEndian.PutUint32(hdr[0:], magicRequest)
	binary.BigEndian.PutUint16(hdr[4:], flags)
	binary.BigEndian.PutUint16(hdr[6:], cmd)
	binary.BigEndian.PutUint64(hdr[8:], cookie)
	binary.BigEndian.PutUint64(hdr[16:], off)
	binary.BigEndian.PutUint32(hdr[24:], uint32(length))
	var err error
	if len(payload) > 0 {
		bufs := net.Buffers{hdr[:], payload}
		_, err = bufs.WriteTo(c.nc)
	} else {
		_, err = c.nc.Write(hdr[:])
	}
	<-c.wsem
	if err != nil {
		c.fail(fmt.Errorf("%w: sending %s: %w", ErrDisconnected, commandName(cmd), err))
	}

	select {
	case <-cl.done:
		return cl.err
	case <-ctx.Done():
		if cl.state.CompareAndSwap(callWaiting, callAbandoned) {
			return ctx.Err()
		}
		<-cl.done // the reply won the race
		return cl.err
	}
}

// failure returns the connection's failure.
func (c *Client) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// readReplies reads the replies and completes their calls, until the
// connection ends.
func (c *Client) readReplies() {
	defer close(c.readerDone)
	var hdr [replyHeaderLen]byte
	var scratch []byte // a READ's data, copied to the caller's buffer
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			c.fail(c.readError(err))
			return
		}
		switch m := binary.BigEndian.Uint32(hdr[0:]); m {
		case magicSimpleRepl:
		case magicStructRepl:
			c.fail(fmt.Errorf("%w: protocol error: structured reply, not negotiated", ErrDisconnected))
			return
		default:
			c.fail(fmt.Errorf("%w: protocol error: reply magic %#x", ErrDisconnected, m))
			return
		}
		code := binary.BigEndian.Uint32(hdr[4:])
		cookie := binary.BigEndian.Uint64(hdr[8:])
		c.mu.Lock()
		cl := c.pending[cookie]
		c.mu.Unlock()
		if cl == nil {
			c.fail(fmt.Errorf("%w: protocol error: reply with unknown cookie %d", ErrDisconnected, cookie))
			return
		}
		var data []byte
		if cl.cmd == cmdRead && code == 0 {
			n := int(cl.length)
			if cap(scratch) < n {
				scratch = make([]byte, n)
			}
			data = scratch[:n]
			if _, err := io.ReadFull(c.br, data); err != nil {
				c.fail(c.readError(err))
				return
			}
		}
		c.mu.Lock()
		delete(c.pending, cookie)
		if code == errnoShutdown {
			c.shutdown = true
		}
		disc := c.idleLocked()
		c.mu.Unlock()
		if cl.state.CompareAndSwap(callWaiting, callDone) {
			if code != 0 {
				cl.err = &ReplyError{Command: commandName(cl.cmd), Offset: cl.off, Length: uint64(cl.length), Errno: code}
			} else {
				copy(cl.buf, data)
			}
			close(cl.done)
		}
		if disc {
			c.bg.Go(c.shutdownDisconnect)
		}
	}
}

// readError is the failure of the connection when reading a reply failed.
func (c *Client) readError(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return c.err
	case c.discSent && c.closing:
		return errClientClosed
	case c.discSent:
		return errShutdownDisc
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, err)
}

// idleLocked closes idle once nothing is in flight after Close or a
// shutdown began. It reports whether the caller must send NBD_CMD_DISC
// for a shutdown (Close sends its own).
func (c *Client) idleLocked() bool {
	if len(c.pending) != 0 || !c.closing && !c.shutdown {
		return false
	}
	if !c.idleClosed {
		c.idleClosed = true
		close(c.idle)
	}
	if c.shutdown && !c.closing && !c.discSent && c.err == nil {
		c.discSent = true
		return true
	}
	return false
}

// fail records the connection's failure (the first one counts), closes
// the connection and fails every request in flight.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.dead)
	}
	err = c.err
	calls := c.pending
	c.pending = map[uint64]*call{}
	c.idleLocked()
	c.mu.Unlock()
	c.nc.Close()
	for _, cl := range calls {
		if cl.state.CompareAndSwap(callWaiting, callDone) {
			cl.err = err
			close(cl.done)
		}
	}
}

// writeDisc sends NBD_CMD_DISC, waiting at most d for the write lock and
// for the write.
func (c *Client) writeDisc(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case c.wsem <- struct{}{}:
	case <-c.dead:
		return nil
	case <-t.C:
		return fmt.Errorf("nbd: NBD_CMD_DISC not sent: a request has been being written for %v", d)
	}
	defer func() { <-c.wsem }()
	var hdr [requestHeaderLen]byte
	binary.BigEndian.PutUint32(hdr[0:], magicRequest)
	binary.BigEndian.PutUint16(hdr[6:], cmdDisc)
	c.nc.SetWriteDeadline(time.Now().Add(d))
	if _, err := c.nc.Write(hdr[:]); err != nil {
		return fmt.Errorf("nbd: sending NBD_CMD_DISC: %w", err)
	}
	return nil
}

// shutdownDisconnect ends the connection after the server answered
// NBD_ESHUTDOWN and the requests in flight were answered: NBD_CMD_DISC,
// then the server closes the connection.
func (c *Client) shutdownDisconnect() {
	if err := c.writeDisc(discTimeout); err != nil {
		c.fail(errShutdownDisc)
		return
	}
	t := time.NewTimer(discTimeout)
	defer t.Stop()
	select {
	case <-c.readerDone:
	case <-t.C:
		c.fail(errShutdownDisc)
	}
}

// Close disconnects: it stops taking requests (later calls fail with an
// error wrapping ErrDisconnected), waits up to ClientConfig.CloseTimeout
// for the requests in flight to be answered, sends NBD_CMD_DISC (the
// protocol's soft disconnect), waits briefly for the server to close the
// connection, and closes it. Requests still in flight then fail with an
// error wrapping ErrDisconnected, and Close reports that they were cut
// off. Close on a connection that has already failed only releases it
// and returns nil. Close may be called more than once; later calls
// return the first one's result.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Client) close() error {
	start := time.Now()
	c.mu.Lock()
	c.closing = true
	failed := c.err != nil
	c.idleLocked()
	c.mu.Unlock()
	if failed {
		c.nc.Close()
		<-c.readerDone
		c.bg.Wait()
		return nil
	}

	var err error
	t := time.NewTimer(c.closeTimeout)
	defer t.Stop()
	select {
	case <-c.idle:
	case <-t.C:
		c.mu.Lock()
		n := len(c.pending)
		c.mu.Unlock()
		err = fmt.Errorf("nbd: Close: %d requests still in flight after %v were cut off", n, c.closeTimeout)
	}

	c.mu.Lock()
	send := !c.discSent && c.err == nil
	c.discSent = true
	c.mu.Unlock()
	if send {
		if derr := c.writeDisc(discTimeout); derr != nil && err == nil {
			err = derr
		}
	}
	if err == nil {
		// The server closes the connection once it has read the
		// NBD_CMD_DISC.
		t.Reset(max(c.closeTimeout-time.Since(start), discTimeout))
		select {
		case <-c.readerDone:
		case <-t.C:
		}
	}
	c.nc.Close()
	<-c.readerDone
	c.bg.Wait()
	c.fail(errClientClosed)
	return err
}
