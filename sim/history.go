package sim

import (
	"fmt"
	"strings"
	"time"

	"github.com/idc-dev/idc/proto"
)

// Kind is the kind of a history record.
type Kind uint8

const (
	// HEpoch: the store committed an epoch record (Record, Rev).
	HEpoch Kind = iota + 1
	// HGrant: the store granted lease Lease with time to live TTL.
	HGrant
	// HKeepAlive: the store processed a keepalive of Lease (it now expires
	// TTL after At).
	HKeepAlive
	// HBegin: operation Op of Ref began in Epoch.
	HBegin
	// HEnd: operation Op ended (the machine was told).
	HEnd
	// HKill: operation Op vanished with its crashed process.
	HKill
	// HIO: Ref did an I/O of Epoch under Lease, inside operation Op.
	HIO
	// HConnect: Ref's machine delivered (Connect) Epoch.
	HConnect
	// HFence: Ref stopped (fenced or left).
	HFence
	// HDisconnect: Ref's membership disconnected Epoch.
	HDisconnect
	// HSend: Ref sent message or request Msg to a peer in Epoch.
	HSend
	// HDeliver: message or request Msg was delivered to Ref (received, or
	// handed to its handler) in Epoch, the receiver's epoch of delivery.
	HDeliver
	// HApply: resource Note began applying request Msg of Ref, whose token
	// names Epoch (the guard admitted it at the start of its apply).
	HApply
	// HApplied: resource Note finished applying request Msg.
	HApplied
	// HFenced: resource Note's fence of Epoch holds (the guard's OnFence;
	// the storage's apply log): nothing of an older epoch is applied there
	// after it.
	HFenced
	// HWritten: the storage (Note, or what is wrong with the block's
	// bytes) applied request Op of Ref, whose token names Epoch, and Block
	// now holds the client's write Msg (0: zeros).
	HWritten
	// HAcked: the disk acknowledged the client's write Msg to Block
	// (request Op).
	HAcked
	// HRead: the client's read of Block (request Op) returned write Msg;
	// Least is the write to Block acknowledged when the read was sent.
	// Note says what is wrong with the bytes read, if anything.
	HRead
)

var kindNames = [...]string{HEpoch: "epoch", HGrant: "grant", HKeepAlive: "keepalive", HBegin: "begin",
	HEnd: "end", HKill: "kill", HIO: "io", HConnect: "connect", HFence: "fence",
	HDisconnect: "disconnect", HSend: "send", HDeliver: "deliver", HApply: "apply", HApplied: "applied",
	HFenced: "fenced", HWritten: "written", HAcked: "acked", HRead: "read"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Rec is one history record: what happened, at which global time. Only the
// fields its Kind names are set.
type Rec struct {
	Kind   Kind
	At     time.Duration
	Ref    proto.Ref
	Lease  int64
	TTL    time.Duration
	Epoch  uint64
	Op     uint64
	Msg    uint64
	Record *proto.EpochRecord
	Rev    int64
	Note   string
	// Block and Least: the storage scenario's block and a read's least
	// write (HWritten, HAcked, HRead).
	Block int
	Least uint64
}

func (r Rec) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v %s", r.At, r.Kind)
	switch r.Kind {
	case HEpoch:
		fmt.Fprintf(&b, " rev=%d %s", r.Rev, fmtRecord(r.Record))
	case HGrant, HKeepAlive:
		fmt.Fprintf(&b, " lease=%d ttl=%v", r.Lease, r.TTL)
	case HSend, HDeliver, HApply, HApplied:
		fmt.Fprintf(&b, " %v epoch=%d msg=%d", r.Ref, r.Epoch, r.Msg)
	case HFenced:
		fmt.Fprintf(&b, " epoch=%d", r.Epoch)
	case HWritten:
		fmt.Fprintf(&b, " %v epoch=%d request=%#x block=%d write=%d", r.Ref, r.Epoch, r.Op, r.Block, r.Msg)
	case HAcked, HRead:
		fmt.Fprintf(&b, " request=%#x block=%d write=%d least=%d", r.Op, r.Block, r.Msg, r.Least)
	default:
		fmt.Fprintf(&b, " %v lease=%d epoch=%d op=%d", r.Ref, r.Lease, r.Epoch, r.Op)
	}
	if r.Note != "" {
		b.WriteString(" " + r.Note)
	}
	return b.String()
}

func fmtRecord(r *proto.EpochRecord) string {
	if r == nil {
		return "<nil>"
	}
	refs := func(ms []proto.Member) string {
		s := make([]string, len(ms))
		for i, m := range ms {
			s[i] = m.Ref().String()
		}
		return "[" + strings.Join(s, " ") + "]"
	}
	out := fmt.Sprintf("#%d %s members=%s", r.Number, r.State, refs(r.Members))
	if r.State == proto.Quiescing {
		out += fmt.Sprintf(" prev#%d=%s", r.PrevNumber, refs(r.Prev))
	}
	if len(r.Excluded) > 0 {
		out += " excluded=" + refs(r.Excluded)
	}
	return out
}

// History is what the simulator recorded, in order: what the checks read.
// Records are numbered from 0; once every check has read them after a
// step, the world forgets them (checks keep whatever state they need).
type History struct {
	recs []Rec // records base, base+1, …
	base int
	// Now is the global time of the step just taken.
	Now time.Duration
	// Mode is the group's mode (checks that only hold in lease mode look).
	Mode proto.Mode
	// Resources is the number of guarded resources simulated (each
	// registered in the group in fence and both modes).
	Resources int
}

func (h *History) add(r Rec) { h.recs = append(h.recs, r) }

// New returns the records after *seen (the number of records a check has
// read so far) and advances it.
func (h *History) New(seen *int) []Rec {
	if *seen < h.base {
		*seen = h.base
	}
	out := h.recs[*seen-h.base:]
	*seen = h.base + len(h.recs)
	return out
}

// forget drops the records every check has read.
func (h *History) forget() {
	h.base += len(h.recs)
	clear(h.recs)
	h.recs = h.recs[:0]
}

// trace keeps the last few steps for a violation report and a hash of all
// of them for the determinism test.
type trace struct {
	ring []traceEntry
	next int
	full bool
	hash uint64
}

type traceEntry struct {
	at   time.Duration
	node string
	what string
	a, b int64
}

const fnvOffset, fnvPrime = 14695981039346656037, 1099511628211

func newTrace(n int) *trace { return &trace{ring: make([]traceEntry, n), hash: fnvOffset} }

// mix folds v into the hash: a multiply and an xor-shift per word.
func (t *trace) mix(v uint64) {
	t.hash = (t.hash ^ v) * fnvPrime
	t.hash ^= t.hash >> 29
}

// mixString folds s into the hash eight bytes at a time.
func (t *trace) mixString(s string) {
	for len(s) >= 8 {
		t.mix(uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
			uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56)
		s = s[8:]
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		v |= uint64(s[i]) << (8 * i)
	}
	t.mix(v ^ uint64(len(s))<<60)
}

func (t *trace) add(at time.Duration, node, what string, a, b int64) {
	t.mix(uint64(at))
	t.mixString(node)
	t.mixString(what)
	t.mix(uint64(a))
	t.mix(uint64(b))
	if len(t.ring) == 0 {
		return
	}
	t.ring[t.next] = traceEntry{at, node, what, a, b}
	t.next++
	if t.next == len(t.ring) {
		t.next, t.full = 0, true
	}
}

// String returns the kept steps, oldest first.
func (t *trace) String() string {
	var b strings.Builder
	n := t.next
	start := 0
	if t.full {
		n, start = len(t.ring), t.next
	}
	for i := 0; i < n; i++ {
		e := t.ring[(start+i)%len(t.ring)]
		fmt.Fprintf(&b, "  %14v %-5s %s", e.at, e.node, e.what)
		if e.a != 0 || e.b != 0 {
			fmt.Fprintf(&b, " (%d, %d)", e.a, e.b)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
