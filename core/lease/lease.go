// Package lease is the arithmetic of idc's leases (DESIGN §5), pure: times
// are readings of a local monotonic clock passed in by the caller, as
// durations since an arbitrary origin.
//
// Two sides use it. The member measures how long its lease is certainly
// valid, from the moment it sent the renewal the store answered; the
// coordinator measures how long to wait before a departed member counts as
// stopped, from the moment it saw that member's lease gone.
package lease

import (
	"fmt"
	"github.com/idc-dev/idc/proto"
	"math"
	"time"
)

// Config is the timing of one lease.
type Config struct {
	// TTL is the lease's time to live as granted by the store.
	TTL time.Duration
	// Rho bounds the clock-rate drift between any two domains: a clock
	// measuring d may be off by up to Rho·d. 0 ≤ Rho < 0.5.
	Rho float64
	// Margin is a further safety allowance subtracted from the member's
	// validity and added to the coordinator's wait.
	Margin time.Duration
}

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = proto.ErrConfig

// Validate checks that the member has a positive validity window.
func (c Config) Validate() error {
	switch {
	case c.TTL <= 0:
		return fmt.Errorf("%w: TTL %v must be positive", ErrConfig, c.TTL)
	case !(c.Rho >= 0 && c.Rho < 0.5): // NaN too
		return fmt.Errorf("%w: drift bound ρ=%v must be in [0, 0.5)", ErrConfig, c.Rho)
	case c.Margin < 0:
		return fmt.Errorf("%w: margin %v must not be negative", ErrConfig, c.Margin)
	case c.Valid() <= 0:
		return fmt.Errorf("%w: TTL·(1−ρ) − margin = %v leaves no validity; raise TTL or lower margin", ErrConfig, c.Valid())
	}
	return nil
}

// Valid is how long after sending an answered renewal the member may still
// act: TTL·(1−ρ) − Margin, rounded down to the nanosecond.
func (c Config) Valid() time.Duration {
	return time.Duration(math.Floor(float64(c.TTL)*(1-c.Rho))) - c.Margin
}

// Wait is how long after seeing a lease gone the coordinator waits before
// counting its holder stopped: TTL·(1+ρ) + Margin, rounded up to the
// nanosecond (float64 arithmetic can fall a hair short: the wait must never
// be shorter than the formula).
func (c Config) Wait() time.Duration {
	return time.Duration(math.Ceil(float64(c.TTL)*(1+c.Rho))) + c.Margin
}

// Tracker follows one member's lease validity.
type Tracker struct {
	cfg      Config
	deadline time.Duration
	renewed  bool
}

// NewTracker returns a tracker whose lease is valid until granted is
// answered: call Renewed with the time the grant was sent.
func NewTracker(cfg Config) *Tracker { return &Tracker{cfg: cfg} }

// Renewed records that the store answered a grant or renewal that was sent
// at sentAt. Validity only ever moves forward: a late answer to an old
// renewal cannot shorten it, nor lengthen it beyond what its send time
// allows.
func (t *Tracker) Renewed(sentAt time.Duration) {
	d := sentAt + t.cfg.Valid()
	if !t.renewed || d > t.deadline {
		t.deadline = d
	}
	t.renewed = true
}

// Deadline returns the instant at which validity runs out, and false if the
// lease was never answered.
func (t *Tracker) Deadline() (time.Duration, bool) { return t.deadline, t.renewed }

// Expired reports whether, at now, the lease may have lapsed.
func (t *Tracker) Expired(now time.Duration) bool { return !t.renewed || now >= t.deadline }
