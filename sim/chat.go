package sim

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/idc-dev/idc/internal/channel"
)

// The application's channel traffic, through the real channel driver
// (internal/channel) that each membership runs over the simulated
// network: in each connected epoch a domain now and then sends a message
// or makes a call to a random peer of the epoch. Messages are received a
// little later; requests are served by a handler that takes a while — an
// operation of the receiver's epoch, careless now and then — and a call is
// an operation of the caller's epoch until it completes. Every send and
// delivery is recorded (HSend, HDeliver) for the G2 check; handlers and
// calls are operations for G3.

const (
	chatGapMin, chatGap = 20 * time.Millisecond, 200 * time.Millisecond
	recvDelay           = 30 * time.Millisecond
	serveMin, serveMax  = time.Millisecond, 60 * time.Millisecond
	callP               = 0.5
	pingP               = 0.1
)

// channels is the membership's channel configuration.
func (ms *Membership) channels() *channel.Config {
	w := ms.d.w
	return &channel.Config{
		Network: nodeNet{w, ms.d.n.id}, Listen: fmt.Sprintf("%s#%d", ms.d.id, ms.inc),
		Heartbeat: w.cfg.Heartbeat, Misses: w.cfg.Misses, Window: 4, MaxMessage: 64,
		DialTimeout: w.cfg.OpTimeout, HandshakeTimeout: 300 * time.Millisecond, SetupTimeout: w.cfg.SetupTimeout,
		Handler: ms.serve, OnMessage: ms.onMessage,
	}
}

func msgBytes(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

// respID names the response to message id in the history.
func respID(id uint64) uint64 { return id | 1<<63 }

func msgID(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// chat sends a message or makes a call in epoch e, then schedules the
// next; it stops once e is no longer the epoch the application works in.
func (ms *Membership) chat(e uint64) {
	w := ms.d.w
	if ms.stopped || ms.d.dead || ms.connected != e {
		return
	}
	defer w.afterLocal(ms.d.n.id, w.uniform(chatGapMin, chatGap), "app chats", int64(e), 0, func() { ms.chat(e) })
	ep := ms.drv.Last()
	mesh := ms.drv.Mesh()
	if ep == nil || ep.Number() != e || mesh == nil {
		return
	}
	var peers []string
	for _, m := range ep.Members() {
		if m.ID != ms.d.id {
			peers = append(peers, m.ID)
		}
	}
	if len(peers) == 0 {
		return
	}
	peer := peers[w.rng.IntN(len(peers))]
	if w.chance(pingP) {
		// A ping: answered by the peer's driver, an operation here only.
		o := &op{id: w.id(), ms: ms, ep: ep, epoch: e, external: true}
		ms.d.ops = append(ms.d.ops, o)
		w.hist.add(Rec{Kind: HBegin, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: e, Op: o.id})
		mesh.Ping(e, peer, &channel.Op{Done: func(*channel.Op) { ms.end(o) }})
		return
	}
	id := w.id()
	w.sent++
	w.hist.add(Rec{Kind: HSend, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: e, Msg: id})
	if !w.chance(callP) {
		mesh.Send(e, peer, msgBytes(id), &channel.Op{})
		return
	}
	o := &op{id: w.id(), ms: ms, ep: ep, epoch: e, external: true}
	ms.d.ops = append(ms.d.ops, o)
	w.hist.add(Rec{Kind: HBegin, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: e, Op: o.id})
	mesh.Call(e, peer, msgBytes(id), &channel.Op{Done: func(c *channel.Op) {
		if c.Err == nil {
			// The response is a message too: delivered to the caller.
			w.delivered++
			w.hist.add(Rec{Kind: HDeliver, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: e, Msg: respID(msgID(c.Resp))})
			if got := msgID(c.Resp); got != id {
				w.fail("G2", fmt.Sprintf("%v's call %d to %s in epoch %d was answered with the response to message %d", ms.ref(), id, peer, e, got))
			}
		}
		ms.end(o)
	}})
}

// onMessage is the driver's OnMessage: the application receives a little
// later.
func (ms *Membership) onMessage(uint64) {
	w := ms.d.w
	if ms.recvPending {
		return
	}
	ms.recvPending = true
	w.afterLocal(ms.d.n.id, w.uniform(0, recvDelay), "app receives", 0, 0, func() {
		ms.recvPending = false
		ms.receive()
	})
}

// receive takes every message waiting in the epoch the application works
// in.
func (ms *Membership) receive() {
	w := ms.d.w
	mesh := ms.drv.Mesh()
	for !ms.stopped && !ms.d.dead && ms.connected != 0 {
		msg, ok, err := mesh.Recv(ms.connected)
		if err != nil || !ok {
			return
		}
		w.delivered++
		w.hist.add(Rec{Kind: HDeliver, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: msg.Epoch, Msg: msgID(msg.Data)})
	}
}

// serve is the driver's Handler: the request is an operation of its epoch
// (the driver began it) until the reply, a while later; a careless
// handler (only while faults run) ignores its epoch's end.
func (ms *Membership) serve(r *channel.Request) {
	w := ms.d.w
	w.delivered++
	w.hist.add(Rec{Kind: HDeliver, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: r.Epoch, Msg: msgID(r.Data)})
	ep := ms.drv.Last()
	if ep == nil || ep.Number() != r.Epoch {
		w.fail("sim", fmt.Sprintf("driver bug: %v's handler called in epoch %d, the membership's last is %v", ms.ref(), r.Epoch, ep))
		return
	}
	id := msgID(r.Data)
	o := &op{id: w.id(), ms: ms, ep: ep, epoch: r.Epoch, finish: func() {
		w.sent++
		w.hist.add(Rec{Kind: HSend, At: w.now, Ref: ms.ref(), Lease: ms.lease, Epoch: r.Epoch, Msg: respID(id)})
		r.Reply(msgBytes(id), nil)
	}}
	ms.run(o, serveMin, serveMax, "handler replies")
}
