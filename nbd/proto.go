package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic numbers of the handshake and the transmission phase.
const (
	magicInit       uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        uint64 = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply   uint64 = 0x0003e889045565a9
	magicRequest    uint32 = 0x25609513
	magicSimpleRepl uint32 = 0x67446698
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1

	clientFlagFixedNewstyle uint32 = 1 << 0
	clientFlagNoZeroes      uint32 = 1 << 1
)

// Transmission flags.
const (
	tflagHasFlags        uint16 = 1 << 0
	tflagReadOnly        uint16 = 1 << 1
	tflagSendFlush       uint16 = 1 << 2
	tflagSendFUA         uint16 = 1 << 3
	tflagSendTrim        uint16 = 1 << 5
	tflagSendWriteZeroes uint16 = 1 << 6
	tflagCanMultiConn    uint16 = 1 << 8
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
)

// Option reply types.
const (
	repAck        uint32 = 1
	repServer     uint32 = 2
	repInfo       uint32 = 3
	repErrUnsup   uint32 = 1<<31 + 1
	repErrInvalid uint32 = 1<<31 + 3
	repErrUnknown uint32 = 1<<31 + 6
	repErrShutdn  uint32 = 1<<31 + 7
)

// Information types of NBD_OPT_INFO and NBD_OPT_GO.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Commands.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdWriteZeroes uint16 = 6
)

// Command flags.
const (
	cmdFlagFUA    uint16 = 1 << 0
	cmdFlagNoHole uint16 = 1 << 1
)

// Error values sent in simple replies (the protocol's errno values).
const (
	errnoPerm     uint32 = 1
	errnoIO       uint32 = 5
	errnoNoMem    uint32 = 12
	errnoInval    uint32 = 22
	errnoNoSpc    uint32 = 28
	errnoShutdown uint32 = 108
)

const (
	requestHeaderLen = 28
	replyHeaderLen   = 16

	// maxStringLen is the protocol's bound on export names and other strings.
	maxStringLen = 4096

	// maxOptionLen bounds the data of one option. The longest option the
	// server parses is NBD_OPT_GO: a name of maxStringLen bytes and up to a
	// few hundred information requests; anything longer is treated as a
	// denial of service and ends the session.
	maxOptionLen = 16 << 10

	// maxOptions bounds the options of one handshake.
	maxOptions = 1024

	// dosWriteLen is the payload length below which the protocol says an
	// oversized write SHOULD NOT be treated as a denial of service (2^25).
	dosWriteLen = 32 << 20
)

// request is a parsed transmission request header.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
}

var errBadRequestMagic = errors.New("nbd: bad request magic")

// parseRequest decodes a request header. The only malformed header is one
// with a wrong magic number; every other field is checked when the request
// is executed, so that the client gets an error reply rather than a hard
// disconnect.
func parseRequest(b *[requestHeaderLen]byte) (request, error) {
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, fmt.Errorf("%w %#x", errBadRequestMagic, m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		cookie: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// infoRequest is the parsed data of NBD_OPT_INFO or NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

var errBadInfoRequest = errors.New("nbd: malformed NBD_OPT_INFO/NBD_OPT_GO data")

// parseInfoRequest decodes the data of NBD_OPT_INFO or NBD_OPT_GO: a 32-bit
// name length, the name, a 16-bit count and that many 16-bit information
// types. The lengths must account for the data exactly.
func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 6 {
		return infoRequest{}, fmt.Errorf("%w: %d bytes", errBadInfoRequest, len(data))
	}
	nameLen := uint64(binary.BigEndian.Uint32(data[0:4]))
	if nameLen > uint64(len(data)-6) {
		return infoRequest{}, fmt.Errorf("%w: name length %d in %d bytes", errBadInfoRequest, nameLen, len(data))
	}
	if nameLen > maxStringLen {
		return infoRequest{}, fmt.Errorf("%w: name length %d above %d", errBadInfoRequest, nameLen, maxStringLen)
	}
	rest := data[4+nameLen:]
	n := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*n {
		return infoRequest{}, fmt.Errorf("%w: %d information requests in %d bytes", errBadInfoRequest, n, len(rest))
	}
	req := infoRequest{name: string(data[4 : 4+nameLen]), infos: make([]uint16, n)}
	for i := range n {
		req.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return req, nil
}

// optionName names an option for logs.
func optionName(opt uint32) string {
	switch opt {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	}
	return fmt.Sprintf("option %d", opt)
}

// commandName names a command for logs.
func commandName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "NBD_CMD_READ"
	case cmdWrite:
		return "NBD_CMD_WRITE"
	case cmdDisc:
		return "NBD_CMD_DISC"
	case cmdFlush:
		return "NBD_CMD_FLUSH"
	case cmdTrim:
		return "NBD_CMD_TRIM"
	case cmdWriteZeroes:
		return "NBD_CMD_WRITE_ZEROES"
	}
	return fmt.Sprintf("command %d", typ)
}
