package store

import (
	"errors"
	"time"
)

// Store is the store as idc's drivers see it: etcd's key-value, lease and
// watch API, asynchronous. Every call returns at once; its callback runs
// later — never within the call — on a goroutine of the implementation's
// (Etcd) or as an event of the calling node (the simulator's store, package
// sim). A driver serialises its callbacks itself (each driver holds one
// lock), so the same driver code runs on etcd and, deterministically from
// one seed, in the simulator.
//
// Timeouts are durations on the caller's clock; a call that does not
// complete in time fails with an error wrapping ErrUnavailable. Errors are
// classified so callers can act on them with errors.Is: ErrUnavailable
// (retry later), ErrLeaseNotFound, ErrCompacted, ErrTooManyOps and
// ErrTooLarge (the request must be split), ErrNoLeader (also
// ErrUnavailable).
type Store interface {
	// Grant grants a lease of ttl (whole seconds).
	Grant(ttl, timeout time.Duration, done func(Lease, error))
	// KeepAlive renews lease id once; done receives the TTL it now has.
	KeepAlive(id LeaseID, timeout time.Duration, done func(ttl time.Duration, err error))
	// Revoke revokes lease id, deleting every key attached to it.
	Revoke(id LeaseID, timeout time.Duration, done func(error))
	// Txn runs a transaction: if every compare of t holds, its Then
	// operations, else its Else operations, atomically, at one revision.
	Txn(t Txn, timeout time.Duration, done func(TxnResponse, error))
	// Watch watches the keys of r. The first response says the watch is
	// created (Created) or carries its error; then every change comes in
	// revision order, as do progress notifications (RequestProgress). A
	// response with Err ends the watch.
	Watch(r WatchRequest, fn func(WatchResponse)) Watch
}

// LeaseID names a lease.
type LeaseID int64

// Lease is a granted lease.
type Lease struct {
	ID  LeaseID
	TTL time.Duration
}

// Cmp is one compare of a transaction: the key's mod revision (or create
// revision, with Create) equals Rev; a missing key has revision 0.
type Cmp struct {
	Key    string
	Create bool
	Rev    int64
}

// OpType is the type of a transaction operation.
type OpType uint8

// Operation types.
const (
	// OpPut puts Value at Key, attached to Lease if not 0.
	OpPut OpType = iota + 1
	// OpDelete deletes Key, or every key in [Key, End) if End is set.
	OpDelete
	// OpGet reads Key, or every key in [Key, End) if End is set.
	OpGet
)

// Op is one operation of a transaction.
type Op struct {
	Type  OpType
	Key   string
	End   string
	Value []byte
	Lease LeaseID
}

// Put returns an OpPut.
func Put(key string, value []byte, lease LeaseID) Op {
	return Op{Type: OpPut, Key: key, Value: value, Lease: lease}
}

// Delete returns an OpDelete of one key.
func Delete(key string) Op { return Op{Type: OpDelete, Key: key} }

// DeleteRange returns an OpDelete of every key in [key, end).
func DeleteRange(key, end string) Op { return Op{Type: OpDelete, Key: key, End: end} }

// Get returns an OpGet of one key.
func Get(key string) Op { return Op{Type: OpGet, Key: key} }

// GetPrefix returns an OpGet of every key with the prefix.
func GetPrefix(prefix string) Op { return Op{Type: OpGet, Key: prefix, End: PrefixEnd(prefix)} }

// PrefixEnd returns the end of the key range of every key with prefix.
func PrefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00" // every key
}

// Txn is a transaction.
type Txn struct {
	If         []Cmp
	Then, Else []Op
}

// Ops returns the number of operations etcd counts against its
// --max-txn-ops limit: the larger branch.
func (t Txn) Ops() int { return max(len(t.Then), len(t.Else)) }

// KV is a key and its value at a revision.
type KV struct {
	Key               string
	Value             []byte
	CreateRev, ModRev int64
	Lease             LeaseID
}

// TxnResponse is a transaction's answer.
type TxnResponse struct {
	// Succeeded says whether the compares held (Then ran).
	Succeeded bool
	// Revision is the store's revision after the transaction.
	Revision int64
	// Gets holds what each OpGet of the branch taken read, in order.
	Gets [][]KV
}

// WatchRequest says what to watch.
type WatchRequest struct {
	// Key, and End for the range [Key, End) (empty: Key alone).
	Key, End string
	// Rev is the first revision to deliver (0: from now).
	Rev int64
	// Fresh asks for a new stream to the store rather than one shared
	// with other watches: set it when replacing a watch found hung, whose
	// stream (and the connection under it) may be dead.
	Fresh bool
}

// Event is one change of a key.
type Event struct {
	Delete bool
	KV     KV
}

// WatchResponse is one response of a watch.
type WatchResponse struct {
	// Created: the watch is in place (the first response).
	Created bool
	// Events are changes, in revision order.
	Events []Event
	// Progress: a progress notification; the watch has delivered every
	// change up to Revision.
	Progress bool
	// Revision is the store's revision when the response was sent.
	Revision int64
	// Err ends the watch: ErrCompacted (rewatch from a fresh read),
	// ErrNoLeader or ErrUnavailable.
	Err error
}

// Watch is a watch in place.
type Watch interface {
	// RequestProgress asks the store for a progress notification on this
	// watch (etcd answers once every change up to its revision has been
	// sent). A watch that answers neither with events nor with progress
	// is hung: cancel it and watch again.
	RequestProgress()
	// Cancel ends the watch. A response already on its way may still be
	// delivered: callers ignore responses of a watch they cancelled.
	Cancel()
}

// Errors a Store returns, for errors.Is.
var (
	// ErrLeaseNotFound: the store has no such lease (expired or revoked).
	ErrLeaseNotFound = errors.New("idc: store: lease not found")
	// ErrCompacted: a watch asked for a revision the store has compacted.
	ErrCompacted = errors.New("idc: store: revision compacted")
	// ErrNoLeader: the store has no leader; it wraps ErrUnavailable.
	ErrNoLeader error = &kindOf{"idc: store: no leader", ErrUnavailable}
	// ErrTooManyOps: a transaction has more operations than the store's
	// --max-txn-ops; split it.
	ErrTooManyOps = errors.New("idc: store: too many operations in a transaction")
	// ErrTooLarge: a request is larger than the store's
	// --max-request-bytes; split it.
	ErrTooLarge = errors.New("idc: store: request too large")
)

// kindOf is an error of its own that is also of a broader kind.
type kindOf struct {
	msg  string
	kind error
}

func (e *kindOf) Error() string { return e.msg }
func (e *kindOf) Unwrap() error { return e.kind }
