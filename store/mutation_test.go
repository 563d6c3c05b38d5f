//go:build idc_mutation

package store

import (
	"testing"

	"github.com/idc-dev/idc/internal/mutation"
)

// TestForgetTimedOutRenewalIsCaught shows that the check of
// TestRenewerLateAnswerIsNotTheNext fails for the broken variant whose
// renewer forgets a renewal that timed out: the late answer is taken for
// the next renewal's. (The simulator renews one lease per process, whose
// stream is replaced when it goes silent, so it does not reach this case
// often enough to be the check.) Run with -tags idc_mutation.
func TestForgetTimedOutRenewalIsCaught(t *testing.T) {
	defer mutation.Set(mutation.ForgetTimedOutRenewal)()
	if err := lateAnswer(newRenewerTest(t)); err == nil {
		t.Fatal("the broken variant went unnoticed")
	} else {
		t.Logf("caught: %v", err)
	}
}
