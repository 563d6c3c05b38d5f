package sim

import (
	"time"
)

// The nemesis. Everything is drawn from the seed: per run, the loss and
// slow-message rates (net.go) and the clock rates (World.drawClock); while
// faults run (the first cfg.Duration), a fault now and then:
//
//   - pause a domain (SIGSTOP), or suspend its host, for up to 2.5·TTL: it
//     processes nothing, then works off its backlog (a suspend also stops
//     CLOCK_MONOTONIC, which the MonotonicClock variant reads);
//   - partition a domain from the store for up to 2·TTL (requests and
//     answers lost, watch responses held until it heals); often a peer then
//     reports it lost, as a real peer whose channel broke would;
//   - a slow link: messages to a domain (and, half the time, from it) are
//     slow;
//   - crash a domain (for good; at most half of them; in the storage
//     scenario it restarts a while later);
//   - the store revokes a live lease early (etcd issues 12528, 15247);
//   - pause a coordinator, which then works off its backlog;
//   - crash a coordinator, which restarts (a fresh process) later;
//   - hang every watch and keep-alive stream of a domain or coordinator:
//     the stream silently delivers nothing more, events, progress
//     notifications and renewals alike;
//   - the store loses its leader for a while: requests fail with
//     ErrNoLeader and every watch and keep-alive stream ends with it;
//   - the store compacts its history: a watch from an older revision fails
//     with ErrCompacted;
//   - in the storage scenario (storage.go), pause, crash or cut off the
//     storage, or hold a driver's storage connection and release its
//     requests late; the disk's client reconnects now and then
//     (blockclient.go).
//
// Every fault ends by cfg.Duration; then the quiet period.

const (
	maxPauseTTL     = 2.5
	maxPartitionTTL = 2.0
)

func (w *World) startNemesis() {
	if w.cfg.NoFaults {
		return
	}
	mean := w.uniform(300*time.Millisecond, 3*time.Second)
	var next func()
	next = func() {
		if !w.faulty() {
			return
		}
		w.inject()
		w.after(worldNode, w.uniform(mean/4, mean*7/4), "nemesis", 0, 0, next)
	}
	w.after(worldNode, w.uniform(0, mean), "nemesis", 0, 0, next)
}

// until caps a fault's end at the end of the fault period.
func (w *World) until(d time.Duration) time.Duration { return min(w.now+d, w.cfg.Duration) }

func (w *World) inject() {
	if len(w.resources) > 0 && w.chance(resourceFault) {
		w.injectResource()
		return
	}
	if w.storage != nil && w.chance(storageFault) {
		w.injectStorage()
		return
	}
	d := w.domains[w.rng.IntN(len(w.domains))]
	ttl := w.cfg.TTL
	switch k := w.rng.IntN(16); {
	case k < 3: // pause
		if d.dead {
			return
		}
		until := w.until(w.uniform(10*time.Millisecond, time.Duration(maxPauseTTL*float64(ttl))))
		if w.chance(0.5) && d.n.pausedUntil <= w.now {
			// The host suspends: like a pause, and a clock that stops
			// during suspend falls behind by the time it lasted.
			w.faults.Suspends++
			w.note(d.n.id, "nemesis: host suspended for %v", until-w.now)
			d.n.suspended += d.n.clock.local(until) - d.n.clock.local(w.now)
		} else {
			w.faults.Pauses++
			w.note(d.n.id, "nemesis: pause for %v", until-w.now)
		}
		w.pause(d.n, until)
	case k < 6: // partition from the store
		until := w.until(w.uniform(50*time.Millisecond, time.Duration(maxPartitionTTL*float64(ttl))))
		if w.net.partitioned[d.n.id] > w.now {
			return
		}
		w.faults.Partitions++
		if w.chance(0.5) {
			// The link degrades first: answers slow, then cut.
			slow := w.uniform(100*time.Millisecond, ttl/2)
			w.net.slowUntil[d.n.id] = w.until(slow)
			w.net.slowOut[d.n.id] = false
			w.note(d.n.id, "nemesis: slow link for %v, then partitioned from the store for %v", slow, until-w.now)
			until += slow
			w.after(worldNode, slow, "nemesis", 0, 0, func() {
				if w.now < w.cfg.Duration {
					w.net.partitioned[d.n.id] = min(until, w.cfg.Duration)
				}
			})
		} else {
			w.note(d.n.id, "nemesis: partitioned from the store for %v", until-w.now)
			w.net.partitioned[d.n.id] = until
		}
		if w.chance(0.6) {
			// A peer notices it lost the domain.
			peer := w.domains[w.rng.IntN(len(w.domains))]
			w.afterLocal(peer.n.id, w.uniform(0, ttl/2), "peer lost", 0, 0, func() { peer.reportFault(d.id) })
		}
	case k < 8: // slow link
		w.faults.SlowLinks++
		until := w.until(w.uniform(100*time.Millisecond, 2*ttl))
		w.note(d.n.id, "nemesis: slow link for %v", until-w.now)
		w.net.slowUntil[d.n.id] = until
		w.net.slowOut[d.n.id] = w.chance(0.5)
	case k < 9: // crash a domain
		dead := 0
		for _, x := range w.domains {
			if x.dead {
				dead++
			}
		}
		if d.dead || dead+1 > len(w.domains)/2 {
			return
		}
		w.faults.Crashes++
		w.note(d.n.id, "nemesis: crash")
		d.crash()
	case k < 11: // the store revokes a lease early
		if d.ms == nil || d.ms.stopped || !w.store.leaseLive(d.ms.lease) {
			return
		}
		w.faults.EarlyRevocations++
		w.note(storeNode, "nemesis: store revokes %v's lease %d early", d.ms.ref(), d.ms.lease)
		w.store.Revoke(d.ms.lease)
	case k < 12: // pause a coordinator
		c := w.coords[w.rng.IntN(len(w.coords))]
		if c.n.down {
			return
		}
		until := w.until(w.uniform(10*time.Millisecond, time.Duration(maxPauseTTL*float64(ttl))))
		w.faults.Pauses++
		w.note(c.n.id, "nemesis: pause for %v", until-w.now)
		w.pause(c.n, until)
	case k == 13: // hang the watches of a node
		n := d.n
		if w.chance(0.5) {
			n = w.coords[w.rng.IntN(len(w.coords))].n
		}
		if n.down {
			return
		}
		watches, streams := w.store.hang(n.id), w.hangStreams(n.id)
		if watches+streams == 0 {
			return
		}
		w.faults.HungWatches++
		w.note(n.id, "nemesis: its watches (%d) and keep-alive streams (%d) hang", watches, streams)
	case k == 14: // the store loses its leader
		until := w.until(w.uniform(50*time.Millisecond, 1500*time.Millisecond))
		w.faults.NoLeader++
		w.note(storeNode, "nemesis: no leader for %v", until-w.now)
		w.store.loseLeader(until)
	case k == 15: // compaction
		w.faults.Compactions++
		w.note(storeNode, "nemesis: compaction at revision %d", w.store.rev)
		w.store.compact()
	default: // crash a coordinator
		c := w.coords[w.rng.IntN(len(w.coords))]
		if c.n.down {
			return
		}
		w.faults.CoordinatorCrashes++
		restart := w.until(w.uniform(50*time.Millisecond, 3*time.Second)) - w.now
		w.note(c.n.id, "nemesis: coordinator crash, restart in %v", restart)
		c.crash(restart)
	}
}
