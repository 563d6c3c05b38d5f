package channel

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/idc-dev/idc/internal/scripttest"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/wire"
)

// TestScripts runs the interaction scripts in testdata/*.txt. Each file
// tells one story; its header comment says which rule or guarantee it
// shows. Regenerate expectations with
//
//	go test ./core/channel/ -run TestScripts -rewrite
//
// and read the diff: every line is the code's real output.
//
// Commands:
//
//	local [group=g] id=b inc=2 epoch=N [connected] [stopping]
//	hello [group=g] epoch=N from=a/1 to=b/2 [frame-epoch=N]
//	bind epoch=N from=a/1 [member=INC] [awaiting]      (after local; member absent: not a member)
//	welcome sent=a/1>b/2@N got=b/2>a/1@N [group=g]
//	refused code=behind|ahead|closing|not-member|wrong-peer|duplicate|version
//	backoff [n=10]                                       (the delays of n redials)
//	dials id=a peer=b
//	answers type=T [ping]                                (whether an answer of type T fits a call, or a ping)
//	channel epoch=N window=N max=N                       (a new channel, not open)
//	open peer-window=N [at=DUR]
//	frame type=T epoch=N seq=N [len=N] [arg=N]           (prints the action, and the error of a break)
//	send type=T                                          (takes a credit for message and request)
//	consume [n=1]                                        (prints the credits granted, if any)
//	overflow queued=N [send-window=64]
//	detector heartbeat=DUR misses=N
//	armed at=DUR
//	tick at=DUR                                          (checks the channel if it is open)
//	overdue setup-by=DUR at=DUR [stalled]
//
// Channel commands end with a status line "> send=N recv=N credits=N
// outstanding=N unreported=N". Besides comparing output, the driver checks
// after every frame that no frame of another epoch was delivered or
// answered (G2), and that the credits never exceed the peer's window and
// the frames held never exceed this side's.
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		d := &driver{}
		datadriven.RunTest(t, path, d.run)
	})
}

type driver struct {
	local  Local
	ch     *Channel
	open   bool
	det    Detector
	window int
}

func (d *driver) run(t *testing.T, td *datadriven.TestData) string {
	switch td.Cmd {
	case "local":
		d.local = Local{
			Group: str(td, "group", "g"), ID: str(td, "id", "b"), Incarnation: uintArg(t, td, "inc", 2),
			Epoch: uintArg(t, td, "epoch", 0), Connected: td.HasArg("connected"), Stopping: td.HasArg("stopping"),
		}
		return "ok\n"
	case "hello":
		hs := d.handshake(t, td)
		a := d.local.Hello(hs, uintArg(t, td, "frame-epoch", hs.Epoch))
		return fmtAdmission(a)
	case "bind":
		hs := d.handshake(t, td)
		p := Peer{Awaiting: td.HasArg("awaiting")}
		if td.HasArg("member") {
			p.Member, p.Incarnation = true, scripttest.Uint(t, td, "member")
		}
		return fmtAdmission(d.local.Bind(hs, p))
	case "welcome":
		sent, got := link(t, td, "sent"), link(t, td, "got")
		got.Group = str(td, "group", sent.Group)
		if err := Welcome(sent, got); err != nil {
			if !errors.Is(err, ErrWelcome) {
				t.Fatalf("Welcome's error %v does not wrap ErrWelcome", err)
			}
			return fmt.Sprintf("err: %v\n", err)
		}
		return "ok\n"
	case "refused":
		name := str(td, "code", "")
		for c := wire.RefuseBehind; c <= wire.RefuseClosing; c++ {
			if c.String() == name {
				return Refused(c).String() + "\n"
			}
		}
		t.Fatalf("unknown refuse code %q", name)
	case "backoff":
		var b strings.Builder
		prev := time.Duration(0)
		for range uintArg(t, td, "n", 10) {
			prev = Backoff(prev)
			fmt.Fprintf(&b, "%v ", prev)
		}
		return strings.TrimSpace(b.String()) + "\n"
	case "dials":
		return fmt.Sprintf("%v\n", Dials(str(td, "id", ""), str(td, "peer", "")))
	case "answers":
		if err := Answers(frameType(t, str(td, "type", "")), td.HasArg("ping")); err != nil {
			return fmt.Sprintf("err: %v\n", err)
		}
		return "ok\n"
	case "channel":
		d.ch, d.open = &Channel{}, false
		d.window = int(scripttest.Uint(t, td, "window"))
		d.ch.Init(scripttest.Uint(t, td, "epoch"), d.window, int(scripttest.Uint(t, td, "max")))
		return d.status()
	case "open":
		d.ch.Open(int(scripttest.Uint(t, td, "peer-window")), scripttest.Dur(t, td, "at", 0))
		d.open = true
		return d.status()
	case "frame":
		return d.frame(t, td)
	case "send":
		typ := frameType(t, str(td, "type", ""))
		var b strings.Builder
		if typ == wire.Message || typ == wire.Request {
			if d.ch.Credits() == 0 {
				return "no credit: waits\n" + d.status()
			}
			d.ch.Spend()
		}
		fmt.Fprintf(&b, "%s seq=%d\n", typ, d.ch.Seq(typ))
		return b.String() + d.status()
	case "consume":
		var b strings.Builder
		for range uintArg(t, td, "n", 1) {
			if n := d.ch.Consumed(); n > 0 {
				fmt.Fprintf(&b, "grant %d\n", n)
			}
		}
		return b.String() + d.status()
	case "overflow":
		return fmt.Sprintf("%v\n", d.ch.Overflow(int(scripttest.Uint(t, td, "queued")), int(uintArg(t, td, "send-window", 64))))
	case "detector":
		d.det = Detector{Heartbeat: scripttest.Dur(t, td, "heartbeat", 0), Misses: int(scripttest.Uint(t, td, "misses"))}
		return fmt.Sprintf("silence %v\n", d.det.Silence())
	case "armed":
		d.det.Armed(scripttest.Dur(t, td, "at", 0))
		return "ok\n"
	case "tick":
		now := scripttest.Dur(t, td, "at", 0)
		stalled := d.det.Tick(now)
		var b strings.Builder
		if stalled {
			b.WriteString("stalled: nobody suspected\n")
		}
		if d.ch != nil && d.open {
			switch hb, err := d.det.Check(d.ch, now, stalled); {
			case err != nil:
				fmt.Fprintf(&b, "suspect: %v\n", err)
			case hb:
				b.WriteString("heartbeat\n")
			default:
				b.WriteString("quiet\n")
			}
		}
		return b.String()
	case "overdue":
		return fmt.Sprintf("%v\n", d.det.Overdue(scripttest.Dur(t, td, "setup-by", 0), scripttest.Dur(t, td, "at", 0), td.HasArg("stalled")))
	default:
		t.Fatalf("unknown command %q", td.Cmd)
	}
	return ""
}

// frame feeds one frame and checks the invariants.
func (d *driver) frame(t *testing.T, td *datadriven.TestData) string {
	h := wire.Header{
		Version: wire.Version, Type: frameType(t, str(td, "type", "")), Epoch: scripttest.Uint(t, td, "epoch"),
		Seq: scripttest.Uint(t, td, "seq"), Length: uint32(uintArg(t, td, "len", 0)), Arg: uintArg(t, td, "arg", 0),
	}
	a, err := d.ch.Receive(h)
	if err := invariants(d.ch, h, a, err); err != nil {
		t.Fatal(err)
	}
	out := a.String()
	if err != nil {
		out += ": " + err.Error()
	}
	return out + "\n" + d.status()
}

// invariants checks what must hold after the channel c took the frame h
// with the outcome a, err.
func invariants(c *Channel, h wire.Header, a Action, err error) error {
	switch {
	case (a == Break) != (err != nil):
		return fmt.Errorf("action %s with error %v", a, err)
	case (a == Deliver || a == Answer || a == Grant || a == Pong || a == Closed) && h.Epoch != c.Epoch():
		return fmt.Errorf("G2 violated: %s of a frame of epoch %d on a channel of epoch %d", a, h.Epoch, c.Epoch())
	case c.credits > c.peerWindow:
		return fmt.Errorf("credits %d above the peer's window %d", c.credits, c.peerWindow)
	case c.outstanding > c.window:
		return fmt.Errorf("%d frames held, above the window %d", c.outstanding, c.window)
	}
	return nil
}

func (d *driver) status() string {
	c := d.ch
	return fmt.Sprintf("> send=%d recv=%d credits=%d outstanding=%d unreported=%d\n", c.sendSeq, c.recvSeq, c.credits, c.outstanding, c.unreported)
}

// handshake is the Hello of the command's from, to, epoch and group.
func (d *driver) handshake(t *testing.T, td *datadriven.TestData) wire.Handshake {
	from := scripttest.Ref(t, td, str(td, "from", ""))
	to := proto.Ref{ID: d.local.ID, Incarnation: d.local.Incarnation}
	if td.HasArg("to") {
		to = scripttest.Ref(t, td, str(td, "to", ""))
	}
	return wire.Handshake{
		Group: str(td, "group", "g"), Epoch: scripttest.Uint(t, td, "epoch"),
		FromID: from.ID, FromIncarnation: from.Incarnation, ToID: to.ID, ToIncarnation: to.Incarnation,
		Window: 64, HeartbeatMillis: 20,
	}
}

// link parses "a/1>b/2@3" into a handshake from a/1 to b/2 in epoch 3 of
// group g.
func link(t *testing.T, td *datadriven.TestData, key string) wire.Handshake {
	s := str(td, key, "")
	ends, epoch, ok := strings.Cut(s, "@")
	from, to, ok2 := strings.Cut(ends, ">")
	if !ok || !ok2 {
		t.Fatalf("%s=%q: want a/1>b/2@3", key, s)
	}
	f, o := scripttest.Ref(t, td, from), scripttest.Ref(t, td, to)
	var e uint64
	if _, err := fmt.Sscan(epoch, &e); err != nil {
		t.Fatalf("%s=%q: %v", key, s, err)
	}
	return wire.Handshake{Group: "g", Epoch: e, FromID: f.ID, FromIncarnation: f.Incarnation, ToID: o.ID, ToIncarnation: o.Incarnation}
}

func frameType(t *testing.T, name string) wire.Type {
	for typ := wire.Hello; typ <= wire.Pong; typ++ {
		if typ.String() == name {
			return typ
		}
	}
	t.Fatalf("unknown frame type %q", name)
	return 0
}

func str(td *datadriven.TestData, key, def string) string {
	for _, a := range td.CmdArgs {
		if a.Key == key && len(a.Vals) > 0 {
			return a.Vals[0]
		}
	}
	return def
}

func uintArg(t *testing.T, td *datadriven.TestData, key string, def uint64) uint64 {
	if !td.HasArg(key) {
		return def
	}
	return scripttest.Uint(t, td, key)
}

func fmtAdmission(a Admission) string {
	switch a.Verdict {
	case Refuse:
		return fmt.Sprintf("refuse %s: %s\n", a.Code, a.Reason)
	case Reject:
		return fmt.Sprintf("reject: %s\n", a.Reason)
	}
	return a.Verdict.String() + "\n"
}
