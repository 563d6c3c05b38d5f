package lease

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

const ms = time.Millisecond

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for valid
	}{
		{"typical", Config{TTL: 2 * time.Second, Rho: 0.01, Margin: 250 * ms}, ""},
		{"no drift no margin", Config{TTL: time.Second}, ""},
		{"rho just below half", Config{TTL: time.Second, Rho: 0.4999}, ""},
		{"smallest validity", Config{TTL: 2 * time.Second, Rho: 0.01, Margin: 1980*ms - 1}, ""},
		{"zero TTL", Config{}, "TTL 0s must be positive"},
		{"negative TTL", Config{TTL: -time.Second}, "TTL -1s must be positive"},
		{"negative rho", Config{TTL: time.Second, Rho: -0.01}, "drift bound ρ=-0.01"},
		{"rho half", Config{TTL: time.Second, Rho: 0.5}, "drift bound ρ=0.5"},
		{"rho one", Config{TTL: time.Second, Rho: 1}, "drift bound ρ=1"},
		{"negative margin", Config{TTL: time.Second, Margin: -1}, "margin -1ns must not be negative"},
		{"margin eats validity exactly", Config{TTL: 2 * time.Second, Rho: 0.01, Margin: 1980 * ms}, "leaves no validity"},
		{"margin above TTL", Config{TTL: time.Second, Margin: 2 * time.Second}, "leaves no validity"},
		{"rho NaN", Config{TTL: time.Second, Rho: math.NaN()}, "idc: invalid config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if tc.cfg.Valid() <= 0 {
					t.Fatalf("valid config with validity %v", tc.cfg.Valid())
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted %+v (validity %v)", tc.cfg, tc.cfg.Valid())
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("error %v does not wrap ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestValidWait(t *testing.T) {
	for _, tc := range []struct {
		cfg         Config
		valid, wait time.Duration
	}{
		{Config{TTL: 2 * time.Second, Rho: 0.01, Margin: 250 * ms}, 1730 * ms, 2270 * ms},
		{Config{TTL: 2 * time.Second}, 2 * time.Second, 2 * time.Second},
		{Config{TTL: 10 * time.Second, Rho: 0.1, Margin: time.Second}, 8 * time.Second, 12 * time.Second},
		// float64 arithmetic: 60s·1.001 comes out a hair short of
		// DESIGN's TTL·(1+ρ) = 60.06s; Wait rounds up, never below it.
		{Config{TTL: 60 * time.Second, Rho: 0.001}, 59940 * ms, 60060 * ms},
	} {
		if got := tc.cfg.Valid(); got != tc.valid {
			t.Errorf("%+v: Valid %v, want %v", tc.cfg, got, tc.valid)
		}
		if got := tc.cfg.Wait(); got != tc.wait {
			t.Errorf("%+v: Wait %v, want %v", tc.cfg, got, tc.wait)
		}
		// DESIGN §5: any renewal the member could have had answered was sent
		// before the coordinator saw the lease gone, so the coordinator's
		// wait must cover the member's whole validity.
		if tc.cfg.Wait() < tc.cfg.Valid() {
			t.Errorf("%+v: Wait %v shorter than Valid %v", tc.cfg, tc.cfg.Wait(), tc.cfg.Valid())
		}
	}
}

// step is one event or check on a Tracker.
type step struct {
	renewed  *time.Duration // Renewed(sentAt)
	deadline *time.Duration // Deadline() is (*deadline, true); nil with noDeadline: (_, false)
	none     bool           // Deadline() reports never answered
	expired  []at           // Expired checks
}

type at struct {
	now  time.Duration
	want bool
}

func d(v time.Duration) *time.Duration { return &v }

func TestTracker(t *testing.T) {
	cfg := Config{TTL: 2 * time.Second, Rho: 0.01, Margin: 250 * ms} // valid 1.73s
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"before any grant answered, expired whatever the time", []step{
			{none: true, expired: []at{{-time.Hour, true}, {0, true}, {1, true}, {time.Hour, true}}},
		}},
		{"first answer sets the deadline even below the zero value", []step{
			{renewed: d(-5 * time.Second), deadline: d(-3270 * ms),
				expired: []at{{-3270*ms - 1, false}, {-3270 * ms, true}, {0, true}}},
		}},
		{"first answer at zero", []step{
			{renewed: d(0), deadline: d(1730 * ms),
				expired: []at{{-time.Hour, false}, {0, false}, {1730*ms - 1, false}, {1730 * ms, true}, {1730*ms + 1, true}}},
		}},
		{"measured from send time, not answer time", []step{
			// Sent at 1s, answered (and checked) at 1.6s: the deadline
			// is 1s + 1.73s.
			{renewed: d(time.Second), deadline: d(2730 * ms),
				expired: []at{{1600 * ms, false}, {2730*ms - 1, false}, {2730 * ms, true}}},
		}},
		{"late answer to an old renewal does not shorten", []step{
			{renewed: d(time.Second), deadline: d(2730 * ms)},
			{renewed: d(500 * ms), deadline: d(2730 * ms),
				expired: []at{{2730*ms - 1, false}, {2730 * ms, true}}},
			{renewed: d(0), deadline: d(2730 * ms)},
			// The same renewal answered twice.
			{renewed: d(time.Second), deadline: d(2730 * ms)},
		}},
		{"newer renewals extend", []step{
			{renewed: d(0), deadline: d(1730 * ms)},
			{renewed: d(time.Second), deadline: d(2730 * ms)},
			{renewed: d(time.Second + 1), deadline: d(2730*ms + 1),
				expired: []at{{2730 * ms, false}, {2730*ms + 1, true}}},
		}},
		{"renewal after expiry revives the tracker (the member fences first)", []step{
			{renewed: d(0), expired: []at{{2 * time.Second, true}}},
			{renewed: d(3 * time.Second), deadline: d(4730 * ms),
				expired: []at{{4 * time.Second, false}}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(cfg)
			for i, s := range tc.steps {
				if s.renewed != nil {
					tr.Renewed(*s.renewed)
				}
				got, ok := tr.Deadline()
				switch {
				case s.none && ok:
					t.Errorf("step %d: Deadline (%v, true), want never answered", i, got)
				case s.deadline != nil && (!ok || got != *s.deadline):
					t.Errorf("step %d: Deadline (%v, %v), want (%v, true)", i, got, ok, *s.deadline)
				}
				for _, a := range s.expired {
					if e := tr.Expired(a.now); e != a.want {
						t.Errorf("step %d: Expired(%v) = %v, want %v (deadline %v, %v)", i, a.now, e, a.want, got, ok)
					}
				}
			}
		})
	}
}
