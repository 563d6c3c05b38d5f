package membership

import (
	"bytes"
	"slices"
	"sync"
	"time"

	"github.com/idc-dev/idc/internal/watchdog"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// rewatchDelay is how long the driver waits before watching again after a
// watch failed.
const rewatchDelay = 100 * time.Millisecond

// startWatch watches the epoch record; once the watch is created it reads
// the record, so no change falls between the two (a record seen twice is
// ignored by the machine). Watching from now rather than from the read's
// revision keeps the watch in etcd's synced set, which a watch from a past
// revision joins only after a catch-up loop. Called with d.mu held.
func (d *Driver) startWatch() {
	d.watchGen++
	gen := d.watchGen
	d.watchRead, d.early, d.heard = false, nil, true
	fresh := d.hung
	d.hung = false
	d.watch = d.st.Watch(store.WatchRequest{Key: d.keys.Epoch(d.cfg.Group), Fresh: fresh}, func(wr store.WatchResponse) {
		d.do(func() { d.onWatch(gen, wr) })
	})
}

func (d *Driver) onWatch(gen uint64, wr store.WatchResponse) {
	if d.stopped || gen != d.watchGen {
		return
	}
	d.heard = true
	switch {
	case wr.Err != nil:
		d.rewatch("epoch watch failed", wr.Err)
		return
	case wr.Created:
		d.readEpoch(gen)
	}
	if !d.watchRead {
		d.early = append(d.early, wr.Events...)
		return
	}
	d.observeEvents(wr.Events)
}

// readEpoch reads the epoch record after the watch was created.
func (d *Driver) readEpoch(gen uint64) {
	key := d.keys.Epoch(d.cfg.Group)
	d.st.Txn(store.Txn{Then: []store.Op{store.Get(key)}}, d.cfg.OpTimeout, func(resp store.TxnResponse, err error) {
		d.do(func() {
			if d.stopped || gen != d.watchGen {
				return
			}
			if err != nil {
				d.rewatch("epoch read failed", err)
				return
			}
			if len(resp.Gets) > 0 {
				for _, kv := range resp.Gets[0] {
					d.observe(kv)
				}
			}
			d.watchRead = true
			early := d.early
			d.early = nil
			d.observeEvents(early)
			if d.joining != nil && !d.stopped {
				d.joined()
			}
		})
	})
}

// rewatch replaces a failed or hung watch. A join in progress fails
// instead. Called with d.mu held.
func (d *Driver) rewatch(why string, err error) {
	if d.watch != nil {
		d.watch.Cancel()
		d.watch = nil
	}
	d.watchGen++
	if d.joining != nil {
		d.revoke(d.lease)
		d.failJoin(err)
		return
	}
	d.log.Warn(why+"; watching again", "err", err)
	gen := d.watchGen
	d.clk.AfterFunc(rewatchDelay, d.locked(func() {
		if !d.stopped && gen == d.watchGen {
			d.startWatch()
		}
	}))
}

// checkWatch is the watchdog of the epoch watch (see Config.WatchCheck
// and package watchdog).
func (d *Driver) checkWatch() {
	if d.stopped {
		return
	}
	if d.watch != nil { // else being replaced
		switch watchdog.Check(&d.heard) {
		case watchdog.Hung:
			d.met.watchHung.Inc()
			d.hung = true // watch again on a fresh stream
			d.rewatch("epoch watch silent", store.ErrUnavailable)
		case watchdog.AskProgress:
			d.watch.RequestProgress()
		}
	}
	d.checkTimer = d.clk.AfterFunc(d.cfg.WatchCheck, d.locked(d.checkWatch))
}

func (d *Driver) observeEvents(evs []store.Event) {
	for _, ev := range evs {
		if !ev.Delete && !d.stopped {
			d.observe(ev.KV)
		}
	}
}

// records holds the last epoch record decoded for each key in this
// process, with the bytes it was decoded from: the memberships of a
// process in one group receive the same record at every change, and at a
// thousand members decoding it is most of their work. Decoding is a pure
// function of the bytes, so a record is reused only for the same bytes,
// whichever store or client they came from; the memberships that ask
// while it is being decoded wait for it rather than decode it again.
var records = struct {
	sync.Mutex
	m map[string]*decoded
}{m: map[string]*decoded{}}

// decoded is an epoch record, or why it could not be decoded, and the
// bytes it came from; ready is closed once rec and err are set.
type decoded struct {
	val   []byte
	ready chan struct{}
	rec   *proto.EpochRecord
	err   error
	// seen are the first bytes of other slices found to hold val (each
	// store client's watch delivers its own copy), so that the
	// memberships on that client do not compare them again. Guarded by
	// records.
	seen []*byte
}

// maxSeen bounds decoded.seen: copies beyond it are compared each time.
const maxSeen = 64

// same reports whether b holds d's bytes: at once when b is a slice seen
// before (the subscribers of one shared watch share theirs), else by
// comparing them. Called with records locked.
func (d *decoded) same(b []byte) bool {
	a := d.val
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] || slices.Contains(d.seen, &b[0]) {
		return true
	}
	if !bytes.Equal(a, b) {
		return false
	}
	if len(d.seen) < maxSeen {
		d.seen = append(d.seen, &b[0])
	}
	return true
}

// decodeEpoch decodes kv's epoch record, or returns the one decoded from
// the same bytes before. The record is shared: nothing may change it.
func decodeEpoch(kv store.KV) *decoded {
	records.Lock()
	d := records.m[kv.Key]
	if d != nil && d.same(kv.Value) {
		records.Unlock()
		<-d.ready
		return d
	}
	d = &decoded{val: kv.Value, ready: make(chan struct{})}
	records.m[kv.Key] = d
	records.Unlock()
	rec, err := proto.DecodeEpoch(kv.Value)
	d.rec, d.err = &rec, err
	close(d.ready)
	return d
}

// observe feeds an epoch record to the machine; the record is shared with
// the process's other memberships (decodeEpoch). Called with d.mu held.
func (d *Driver) observe(kv store.KV) {
	r := decodeEpoch(kv)
	if r.err != nil {
		d.log.Warn("ignoring malformed epoch record", "err", r.err)
		return
	}
	d.m.Observe(r.rec)
	d.handle()
}
