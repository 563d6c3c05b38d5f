// Package nbd is a server for the Network Block Device protocol, as
// specified in "The NBD protocol" (doc/proto.md of the
// NetworkBlockDevice/nbd project). It serves one or more exports, each
// stored by a Backend, to stock clients: qemu (qemu-io, qemu-img), libnbd
// (nbdinfo, nbdcopy, nbdsh, fio's nbd engine) and the Linux nbd client.
//
// What the server implements:
//
//   - The fixed newstyle handshake, with the handshake flags
//     NBD_FLAG_FIXED_NEWSTYLE and NBD_FLAG_NO_ZEROES. Options:
//     NBD_OPT_EXPORT_NAME, NBD_OPT_INFO and NBD_OPT_GO (with
//     NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION and
//     NBD_INFO_BLOCK_SIZE), NBD_OPT_LIST and NBD_OPT_ABORT. Every other
//     option is answered NBD_REP_ERR_UNSUP and the handshake goes on. An
//     unknown export gets NBD_REP_ERR_UNKNOWN (or, for
//     NBD_OPT_EXPORT_NAME, which has no error reply, the end of the
//     session); malformed option data gets NBD_REP_ERR_INVALID. Option
//     data longer than 16 KiB, more than 1024 options, a wrong magic
//     number or unknown client flags end the session.
//   - The transmission phase with simple replies: NBD_CMD_READ,
//     NBD_CMD_WRITE (with NBD_CMD_FLAG_FUA), NBD_CMD_DISC, NBD_CMD_FLUSH,
//     NBD_CMD_TRIM and NBD_CMD_WRITE_ZEROES (with NBD_CMD_FLAG_NO_HOLE).
//     The transmission flags advertise only what the Backend's Features
//     offer, including NBD_FLAG_CAN_MULTI_CONN.
//   - Pipelining: a connection keeps reading requests while earlier ones
//     run, runs up to Config.MaxInFlight of them at once (then stops
//     reading: backpressure), and replies in completion order, each reply
//     carrying its request's cookie.
//   - The protocol's "Block size constraints": requests beyond the export,
//     unaligned to Config.MinBlockSize, or longer than
//     Config.MaxRequestSize fail with NBD_EINVAL (NBD_ENOSPC for writes
//     beyond the end), without reaching the backend.
//   - Shutdown as in "Terminating the transmission phase": running
//     requests finish, later ones get NBD_ESHUTDOWN, then the connection
//     closes. A backend returning ErrShutdown (the disk was fenced) puts
//     its connection in the same state.
//
// What it does not implement: structured replies
// (NBD_OPT_STRUCTURED_REPLY), metadata querying (NBD_CMD_BLOCK_STATUS),
// extended headers, TLS (NBD_OPT_STARTTLS), NBD_CMD_CACHE, NBD_CMD_RESIZE,
// fast zeroes, and the oldstyle handshake.
//
// The package also has a client, for tests, workloads and measurements:
// Dial, DialURI (nbd:// and nbd+unix:// URIs, see ParseURI) and NewClient
// open an export with NBD_OPT_GO, and a Client pipelines READ, WRITE
// (with FUA), FLUSH, TRIM and WRITE_ZEROES requests from many goroutines
// over one connection, with simple replies only.
package nbd
