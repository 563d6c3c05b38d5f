package channel

import (
	"fmt"
	"time"

	"github.com/idc-dev/idc/internal/mutation"
	"github.com/idc-dev/idc/wire"
)

// Channel is the protocol state of one channel: its epoch, the sequence
// numbers of both directions, the credits both ways and the peer's
// liveness. The zero value is a channel not open yet; Open opens it.
type Channel struct {
	epoch      uint64
	window     int // frames this side accepts before it grants more
	peerWindow int // frames the peer accepts before it grants more
	maxMessage int

	sendSeq, recvSeq uint64
	credits          int // Message and Request frames the peer will still accept
	outstanding      int // Message and Request frames received, not consumed yet
	unreported       int // consumed, not granted back yet

	// lastHeard is when the peer was last heard, as noted at the ticks;
	// heard and sent say whether a frame arrived and whether one was sent
	// since the previous tick.
	lastHeard   time.Duration
	heard, sent bool
}

// Init sets the channel's epoch and limits: window is how many Message and
// Request frames this side accepts before it grants more (its handshake
// says so), maxMessage the largest payload of one.
func (c *Channel) Init(epoch uint64, window, maxMessage int) {
	*c = Channel{epoch: epoch, window: window, maxMessage: maxMessage}
}

// Open opens the channel at now, with the peer's window from its
// handshake: that many Message and Request frames may be sent before the
// peer grants more.
func (c *Channel) Open(peerWindow int, now time.Duration) {
	c.peerWindow, c.credits = peerWindow, peerWindow
	c.lastHeard = now
}

// Epoch is the channel's epoch.
func (c *Channel) Epoch() uint64 { return c.epoch }

// Seq returns the sequence number of the next frame this side sends, of
// type t: 0 for the handshake's frames, else the next of the direction.
func (c *Channel) Seq(t wire.Type) uint64 {
	c.sent = true
	if t == wire.Hello || t == wire.Welcome || t == wire.Refuse {
		return 0
	}
	c.sendSeq++
	return c.sendSeq
}

// Credits returns how many Message and Request frames may be sent now.
func (c *Channel) Credits() int { return c.credits }

// Spend takes one credit, for a Message or a Request about to be sent;
// the caller checked Credits first.
func (c *Channel) Spend() {
	if c.credits <= 0 {
		panic("idc: channel: a message sent without credit")
	}
	c.credits--
}

// Consumed notes that the application took a Message or Request frame
// (received it, or its handler replied). It returns the credits to grant
// the peer now in a Credit frame, or 0: credits are granted back in
// batches of half the window, so a stream costs a Credit frame per half
// window, not per message.
func (c *Channel) Consumed() uint64 {
	c.outstanding--
	c.unreported++
	if c.unreported < max(1, c.window/2) {
		return 0
	}
	n := c.unreported
	c.unreported = 0
	return uint64(n)
}

// Overflow reports whether queued frames waiting to be written exceed what
// the protocol lets wait: Message and Request frames are bounded by the
// peer's window, the answers to the peer's by this side's window, the rest
// (heartbeats, credits, pongs) by time, plus what the connection itself
// holds (sendWindow). A peer that reads nothing makes the queue pass the
// bound: it is lost, not buffered for.
func (c *Channel) Overflow(queued, sendWindow int) bool {
	return queued > c.peerWindow+c.window+sendWindow
}

// Action is what becomes of a frame received on an open channel.
type Action uint8

const (
	// DropEpoch: the frame's epoch is not the channel's; drop and count it
	// (G2: nothing of another epoch is delivered).
	DropEpoch Action = iota + 1
	// DropDuplicate: a sequence number already received; drop and count it.
	DropDuplicate
	// Break: the frame broke the protocol (Frame.Err says how); close the
	// channel and report the peer.
	Break
	// Deliver: a Message or Request, holding one place of the window until
	// Consumed; deliver it through the membership's gate.
	Deliver
	// Answer: a Response, Error or Pong; it completes the call Arg names.
	Answer
	// Grant: a Credit; more Message and Request frames may be sent.
	Grant
	// Pong: a Ping; answer it at once with a Pong of the same Arg.
	Pong
	// Closed: the peer closed the channel; Arg is its wire.CloseCode.
	Closed
	// Heard: a Heartbeat; nothing else to do.
	Heard
)

var actionNames = [...]string{DropEpoch: "drop-epoch", DropDuplicate: "drop-duplicate", Break: "break", Deliver: "deliver",
	Answer: "answer", Grant: "grant", Pong: "pong", Closed: "closed", Heard: "heard"}

func (a Action) String() string {
	if a >= DropEpoch && a <= Heard {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Receive decides on a frame received on the open channel, its header h
// parsed (wire.Parse checked its form). It checks, in order: the epoch
// (a frame of another epoch is dropped), the sequence number (one already
// received is dropped, a gap breaks the channel: frames were lost), then
// the rules of the type (a Message or Request within the maximum size and
// this side's window; a Credit that does not raise the credits above the
// peer's window, which is all it ever grants). The caller does what the
// Action says; Receive has already counted what the frame takes or gives
// (a place in the window, credits).
func (c *Channel) Receive(h wire.Header) (Action, error) {
	if h.Epoch != c.epoch && !mutation.On(mutation.NoFrameEpochCheck) {
		return DropEpoch, nil
	}
	if h.Seq <= c.recvSeq {
		return DropDuplicate, nil
	}
	if h.Seq != c.recvSeq+1 {
		return Break, fmt.Errorf("frame %d after %d: frames were lost", h.Seq, c.recvSeq)
	}
	c.recvSeq = h.Seq
	c.heard = true
	switch h.Type {
	case wire.Message, wire.Request:
		if int64(h.Length) > int64(c.maxMessage) {
			return Break, fmt.Errorf("%s of %d bytes, above the maximum %d", h.Type, h.Length, c.maxMessage)
		}
		if c.outstanding >= c.window {
			return Break, fmt.Errorf("%s beyond the window of %d", h.Type, c.window)
		}
		c.outstanding++
		return Deliver, nil
	case wire.Response, wire.Error, wire.Pong:
		return Answer, nil
	case wire.Credit:
		// The peer grants back only what this side sent it: the credits
		// never exceed its window.
		if h.Arg > uint64(c.peerWindow-c.credits) {
			return Break, fmt.Errorf("credit of %d with %d left, above the window of %d", h.Arg, c.credits, c.peerWindow)
		}
		c.credits += int(h.Arg)
		return Grant, nil
	case wire.Heartbeat:
		return Heard, nil
	case wire.Ping:
		return Pong, nil
	case wire.Close:
		return Closed, nil
	}
	return Break, fmt.Errorf("%s on an open channel", h.Type)
}

// Answers checks that an answer of type t fits the call it names: a Pong
// answers a ping, a Response or an Error a call.
func Answers(t wire.Type, ping bool) error {
	if ping == (t == wire.Pong) {
		return nil
	}
	what := "call"
	if ping {
		what = "ping"
	}
	return fmt.Errorf("%s answers a %s", t, what)
}
