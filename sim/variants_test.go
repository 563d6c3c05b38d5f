//go:build idc_mutation

package sim

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/idc-dev/idc/internal/mutation"
)

// variant is a deliberately broken build and the checks that must catch
// it, with the configuration its runs need.
type variant struct {
	kind   mutation.Kind
	cfg    func(seed int64) Config
	expect []string
}

func seedOnly(s int64) Config { return Config{Seed: s} }

// fenced is a run in fence mode with guarded resources.
func fenced(s int64) Config { return Config{Seed: s, Mode: "fence", Resources: 1 + int(s%2)} }

// storageRun is a run of the storage scenario.
func storageRun(s int64) Config { return Config{Seed: s, Storage: true} }

var variants = []variant{
	{mutation.ConnectEarly, seedOnly, []string{"G3"}},
	{mutation.NoCAS, func(s int64) Config { return Config{Seed: s, Coordinators: 2, Election: -1} }, []string{"G1"}},
	{mutation.TrustStoreExpiry, seedOnly, []string{"G4", "G6"}},
	{mutation.ValidityFromReceipt, seedOnly, []string{"G6", "G4"}},
	{mutation.CleanupInCAS, seedOnly, []string{"L1"}},
	{mutation.NoWatchdog, seedOnly, []string{"L1"}},
	{mutation.ContextNotGate, seedOnly, []string{"G6", "G4"}},
	{mutation.FenceNothing, func(s int64) Config { return Config{Seed: s, Mode: "fence", Resources: -1} }, []string{"G4", "G6"}},
	{mutation.KeepLeaveMarkers, seedOnly, []string{"bounded"}},
	{mutation.MonotonicClock, seedOnly, []string{"G6", "G4"}},
	{mutation.NoFrameEpochCheck, seedOnly, []string{"G2"}},
	{mutation.GuardChecksAtAdmission, fenced, []string{"G5"}},
	{mutation.FenceOnlyDepartures, fenced, []string{"G5"}},
	// The multipath disk's: in the storage scenario. Sending a failed
	// request through the other path at once lets the first copy land
	// after a newer write (no-stale-write); more often, while the epoch
	// ends, both paths fail the request at once and the disk sends it back
	// and forth without end (L1).
	{mutation.ResendAtOnce, storageRun, []string{"no-stale-write", "L1"}},
	{mutation.NoReplayBarrier, storageRun, []string{"no-stale-write"}},
}

// caughtElsewhere are the broken variants of parts the simulator does not
// run, and the test that catches each.
var caughtElsewhere = map[mutation.Kind]string{
	// One lease per simulated process: a renewal times out on a stream
	// that still answers (the case the variant breaks) far too rarely.
	mutation.ForgetTimedOutRenewal: "store: TestForgetTimedOutRenewalIsCaught",
}

// TestBrokenVariantsAreCaught shows the checks can fail: each broken
// variant (package internal/mutation) is caught, by a check meant to catch
// it, within a bounded number of seeds. A violation of another guarantee
// first is logged and the search goes on (connect-early, say, can also
// show up as G4: a survivor that has not yet seen the quiescing record
// still acts in the old epoch). Run with -tags idc_mutation.
func TestBrokenVariantsAreCaught(t *testing.T) {
	const maxSeeds = 500
	if len(variants)+len(caughtElsewhere) != len(mutation.Kinds()) {
		t.Fatalf("%d variants tested here and %d elsewhere, %d exist", len(variants), len(caughtElsewhere), len(mutation.Kinds()))
	}
	for _, v := range variants {
		t.Run(v.kind.String(), func(t *testing.T) {
			defer mutation.Set(v.kind)()
			for seed := int64(1); seed <= maxSeeds; seed++ {
				_, err := Run(v.cfg(seed))
				if err == nil {
					continue
				}
				var viol *Violation
				if !errors.As(err, &viol) || !errors.Is(err, ErrViolation) {
					t.Fatalf("seed %d: %v", seed, err)
				}
				if slices.Contains(v.expect, viol.Guarantee) {
					t.Logf("%s caught by %s at seed %d: %s", v.kind, viol.Guarantee, seed, strings.SplitN(viol.Detail, "\n", 2)[0])
					return
				}
				if viol.Guarantee == "sim" {
					t.Fatalf("%s: seed %d: %v", v.kind, seed, err)
				}
				t.Logf("%s: seed %d violated %s first (expected %v): %s", v.kind, seed, viol.Guarantee, v.expect, strings.SplitN(viol.Detail, "\n", 2)[0])
			}
			t.Fatalf("%s not caught by %v in %d seeds", v.kind, v.expect, maxSeeds)
		})
	}
}

// TestStorageAppliesNoAdmission: guard-checks-at-admission (caught by G5
// with the simulated resources, which admit a request when it arrives and
// apply it later) changes nothing at the storage: its server checks a
// request only when it serves it, in one step with the apply
// (Storage.Serve: Guard.BeginEncoded on a fresh ticket), so there is no
// admission whose check could be trusted later. Were the storage ever to
// admit requests on arrival, this test would fail, and the variant would
// have to be caught in the storage scenario too.
func TestStorageAppliesNoAdmission(t *testing.T) {
	defer mutation.Set(mutation.GuardChecksAtAdmission)()
	seeds := int64(200)
	if testing.Short() {
		seeds = 20
	}
	for seed := int64(1); seed <= seeds; seed++ {
		if _, err := Run(storageRun(seed)); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
}

// TestViolationError: a violation is an ErrViolation carrying its seed
// and trace.
func TestViolationError(t *testing.T) {
	defer mutation.Set(mutation.NoCAS)()
	_, err := Run(Config{Seed: 1, Coordinators: 2, Election: -1})
	var v *Violation
	if !errors.Is(err, ErrViolation) || !errors.As(err, &v) {
		t.Fatalf("want a violation, got %v", err)
	}
	if v.Seed != 1 || v.Trace == "" || !strings.Contains(err.Error(), "seed 1") {
		t.Fatalf("violation lacks seed or trace: %+v", v)
	}
}
