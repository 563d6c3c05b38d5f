package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/idc-dev/idc/clock"
	"github.com/idc-dev/idc/core/lease"
	"github.com/idc-dev/idc/store"
)

// CandidateConfig configures a Candidate.
type CandidateConfig struct {
	// Leader is what the candidate runs while elected (its Clock, Keys,
	// Logger and Metrics are the candidate's too; Guard is set by the
	// candidate).
	Leader LeaderConfig
	// Store is what the candidate campaigns on and renews its election
	// lease over (nil: Leader.Store). Run gives it a store client of its
	// own (Config.ElectionClient), so that the renewals of the election
	// never queue behind the leader's requests and watch on one
	// connection: a leader busy with thousands of groups must not lose
	// its election for being busy.
	Store store.Store
	// Name is the candidate's name, the value of its election key.
	Name string
	// TTL is the election lease's time to live, whole seconds; a store
	// that grants another is refused (ErrConfig through Err).
	TTL time.Duration
	// Rho bounds how long the candidate counts itself elected after a
	// renewal was answered: TTL·(1−ρ)−TTL/10 from its send (the members'
	// rule, DESIGN §5, with a tenth of the TTL as margin), so a leader
	// that cannot renew steps down before its key can expire. Safety never
	// depends on it (every epoch write is a compare-and-swap guarded by the
	// key); it keeps two leaders from working at once.
	//
	// The candidate sends a renewal every TTL/RenewFraction, whether or
	// not the earlier ones were answered, and gives each until its term
	// would end: an answer that comes at any time before then still
	// extends the term. So the election holds through a store stall, or a
	// store latency, of up to TTL·(1−ρ)−TTL/10−TTL/RenewFraction (3.95 s
	// at Run's default 5 s TTL), not one renewal interval.
	Rho float64
}

// RenewFraction: a Candidate renews its election lease every
// TTL/RenewFraction.
const RenewFraction = 10

// Candidate campaigns for the coordinator role over a store.Store, in the
// manner of etcd's election recipe — a key under the election prefix
// attached to the candidate's lease; the lowest create revision leads —
// and runs a Leader while elected, each epoch write guarded by its key's
// create revision. It is event-driven like the other drivers, so the
// simulator runs it. It renews its lease with a request every
// TTL/RenewFraction, not waiting for the earlier ones (store.Etcd repeats
// a request on another connection when one is dead), each allowed the
// validity left, and counts its term from the send of the last answered
// renewal (CandidateConfig.Rho).
type Candidate struct {
	cfg CandidateConfig
	st  store.Store
	clk clock.Clock
	log *slog.Logger
	met *Metrics

	mu        sync.Mutex
	stopping  bool // halting: a step-down then is no loss
	stopped   bool
	err       error // a configuration error: the candidate gave up
	gen       uint64
	lease     store.LeaseID
	key       string
	createRev int64
	valid     *lease.Tracker
	start     time.Duration
	leader    *Leader
	watch     store.Watch
	done      chan struct{}
	// released is closed once a stopped candidate's election lease is
	// given back (or could not be): a successor need not wait it out.
	released chan struct{}
}

// StartCandidate starts campaigning.
func StartCandidate(cfg CandidateConfig) *Candidate {
	if cfg.Store == nil {
		cfg.Store = cfg.Leader.Store
	}
	if cfg.Leader.Metrics == nil {
		cfg.Leader.Metrics = newMetrics(nil)
	}
	c := &Candidate{cfg: cfg, st: cfg.Store, clk: cfg.Leader.Clock, log: cfg.Leader.Logger, met: cfg.Leader.Metrics,
		done: make(chan struct{}), released: make(chan struct{})}
	c.start = c.clk.Now()
	c.do(c.campaign)
	return c
}

// Done is closed when the candidate stopped: Stop, or a configuration
// error (Err).
func (c *Candidate) Done() <-chan struct{} { return c.done }

// Err returns the configuration error the candidate gave up on, if any.
func (c *Candidate) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Leading reports whether the candidate leads now.
func (c *Candidate) Leading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader != nil
}

// Stop steps down (giving the election lease back) and stops.
func (c *Candidate) Stop() {
	c.do(func() { c.halt(nil) })
}

func (c *Candidate) do(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

func (c *Candidate) now() time.Duration { return c.clk.Now() - c.start }

// after runs f under the lock after d, unless the campaign (gen) ended
// meanwhile: a timer of an ended campaign fires into nothing.
func (c *Candidate) after(d time.Duration, gen uint64, f func()) {
	c.clk.AfterFunc(d, func() {
		c.do(func() {
			if !c.stopped && gen == c.gen {
				f()
			}
		})
	})
}

// halt stops for good. Called with c.mu held.
func (c *Candidate) halt(err error) {
	if c.stopped {
		return
	}
	c.stopping = true
	c.resign()
	c.stopped, c.err = true, err
	close(c.done)
}

// resign ends the current campaign or term: the leader stops, the lease
// is given back. Called with c.mu held.
func (c *Candidate) resign() {
	c.gen++
	if c.leader != nil {
		c.leader.Stop()
		c.leader = nil
		if c.stopping {
			c.log.Info("stepped down as coordinator: stopped")
		} else {
			c.log.Warn("stepped down as coordinator")
			c.met.stepDowns.Inc()
		}
	}
	if c.watch != nil {
		c.watch.Cancel()
		c.watch = nil
	}
	var done func(error)
	if c.stopping {
		done = func(error) { close(c.released) }
	}
	if c.lease != 0 {
		c.st.Revoke(c.lease, c.cfg.Leader.OpTimeout, done)
		c.lease = 0
	} else if done != nil {
		done(nil)
	}
}

// retry starts a new campaign a moment later. Called with c.mu held.
func (c *Candidate) retry(why string, err error) {
	c.log.Warn(why+"; campaigning again", "err", err)
	c.resign()
	gen := c.gen
	c.after(200*time.Millisecond, gen, c.campaign)
}

// campaign grants a lease and puts the candidate's key under it.
func (c *Candidate) campaign() {
	gen := c.gen
	sent := c.now()
	c.st.Grant(c.cfg.TTL, c.cfg.Leader.OpTimeout, func(l store.Lease, err error) {
		c.do(func() {
			if c.stopped || gen != c.gen {
				if err == nil {
					c.st.Revoke(l.ID, c.cfg.Leader.OpTimeout, nil)
				}
				return
			}
			if err != nil {
				c.retry("election lease not granted", err)
				return
			}
			c.lease = l.ID
			if l.TTL != c.cfg.TTL {
				c.halt(fmt.Errorf("%w: the store granted the election a %v lease for the %v asked (its minimum lease is longer); set the election TTL to at least %v", ErrConfig, l.TTL, c.cfg.TTL, l.TTL))
				return
			}
			c.valid = lease.NewTracker(lease.Config{TTL: l.TTL, Rho: c.cfg.Rho, Margin: l.TTL / 10})
			c.valid.Renewed(sent)
			c.armExpiry(gen)
			c.after(c.every(), gen, func() { c.renew(gen) })
			c.register(gen)
		})
	})
}

func (c *Candidate) register(gen uint64) {
	keys := c.cfg.Leader.Keys
	key := fmt.Sprintf("%s%016x", keys.Election(), int64(c.lease))
	txn := store.Txn{
		If:   []store.Cmp{{Key: key, Create: true, Rev: 0}},
		Then: []store.Op{store.Put(key, []byte(c.cfg.Name), c.lease), store.Get(key)},
	}
	c.st.Txn(txn, c.cfg.Leader.OpTimeout, func(resp store.TxnResponse, err error) {
		c.do(func() {
			switch {
			case c.stopped || gen != c.gen:
			case err != nil:
				c.retry("election key not written", err)
			case !resp.Succeeded || len(resp.Gets) == 0 || len(resp.Gets[0]) == 0:
				c.retry("election key not written", errors.New("key exists or vanished"))
			default:
				c.key, c.createRev = key, resp.Gets[0][0].CreateRev
				c.check(gen)
			}
		})
	})
}

// check reads the candidates: the lowest create revision leads. A
// candidate that does not lead watches the one just before it, and checks
// again when that one goes — or every WatchCheck, in case the watch hangs.
func (c *Candidate) check(gen uint64) {
	keys := c.cfg.Leader.Keys
	c.st.Txn(store.Txn{Then: []store.Op{store.GetPrefix(keys.Election())}}, c.cfg.Leader.OpTimeout, func(resp store.TxnResponse, err error) {
		c.do(func() {
			if c.stopped || gen != c.gen || c.leader != nil {
				return
			}
			if err != nil {
				c.after(c.cfg.Leader.WatchCheck, gen, func() { c.check(gen) })
				return
			}
			var before *store.KV
			mine := false
			if len(resp.Gets) > 0 {
				for i, kv := range resp.Gets[0] {
					switch {
					case kv.Key == c.key:
						mine = true
					case kv.CreateRev < c.createRev && (before == nil || kv.CreateRev > before.CreateRev):
						before = &resp.Gets[0][i]
					}
				}
			}
			switch {
			case !mine:
				c.retry("election key gone", store.ErrLeaseNotFound)
			case before == nil:
				c.lead(gen)
			default:
				if c.watch != nil {
					c.watch.Cancel()
				}
				c.watch = c.st.Watch(store.WatchRequest{Key: before.Key, Rev: resp.Revision + 1}, func(wr store.WatchResponse) {
					c.do(func() {
						if c.stopped || gen != c.gen || c.leader != nil {
							return
						}
						for _, ev := range wr.Events {
							if ev.Delete {
								c.check(gen)
								return
							}
						}
					})
				})
				c.after(c.cfg.Leader.WatchCheck, gen, func() { c.check(gen) })
			}
		})
	})
}

// lead starts the Leader, each epoch write guarded by this candidate's key.
func (c *Candidate) lead(gen uint64) {
	if c.watch != nil {
		c.watch.Cancel()
		c.watch = nil
	}
	c.log.Info("elected coordinator", "key", c.key, "rev", c.createRev)
	lc := c.cfg.Leader
	lc.Guard = []store.Cmp{{Key: c.key, Create: true, Rev: c.createRev}}
	c.leader = StartLeader(lc)
}

// every is the renewal interval, TTL/RenewFraction.
func (c *Candidate) every() time.Duration { return c.cfg.TTL / RenewFraction }

// renew sends a renewal of the election lease now and every every()
// after, whether or not the earlier ones were answered, each allowed until
// the term would end: validity counts from the send of the last answered
// renewal (CandidateConfig.Rho), so an answer that comes at any time
// before then still extends the term, and one slow or lost request holds
// no later one back. (A renewal given one interval, as before, was given
// up on at the first slow answer, and store.Etcd gives a request's first
// attempt half its timeout.) At most TTL/every() renewals are in flight.
func (c *Candidate) renew(gen uint64) {
	sent := c.now()
	dl, _ := c.valid.Deadline()
	if sent >= dl {
		return // the term is over: armExpiry steps down
	}
	c.after(c.every(), gen, func() { c.renew(gen) })
	c.st.KeepAlive(c.lease, dl-sent, func(_ time.Duration, err error) {
		c.do(func() {
			if c.stopped || gen != c.gen {
				return
			}
			switch {
			case err == nil:
				c.valid.Renewed(sent)
				c.armExpiry(gen)
			case errors.Is(err, store.ErrLeaseNotFound):
				c.retry("election lease gone", err)
			default:
				c.log.Debug("election lease renewal failed", "err", err)
			}
		})
	})
}

// armExpiry steps down when the lease may have lapsed by the local clock.
func (c *Candidate) armExpiry(gen uint64) {
	dl, _ := c.valid.Deadline()
	c.after(max(dl-c.now(), 0), gen, func() {
		if c.valid.Expired(c.now()) {
			c.retry("election lease may have lapsed", errors.New("no renewal answered in time"))
		}
	})
}

// Describe says where the candidate stands, for the simulator's reports.
func (c *Candidate) Describe(group string) string {
	c.mu.Lock()
	l := c.leader
	key := c.key
	c.mu.Unlock()
	if l == nil {
		return fmt.Sprintf("candidate (key %q), not leading", key)
	}
	return "leading: " + l.Describe(group)
}
