//go:build idc_mutation

package multipath

import (
	"testing"

	"github.com/idc-dev/idc/internal/mutation"
)

// TestBrokenVariantsAreCaught shows TestModel's checks can fail: each
// broken variant of the machine is caught within a bounded number of
// seeds. Run with -tags idc_mutation.
func TestBrokenVariantsAreCaught(t *testing.T) {
	for _, k := range []mutation.Kind{mutation.ResendAtOnce, mutation.NoReplayBarrier} {
		t.Run(k.String(), func(t *testing.T) {
			defer mutation.Set(k)()
			for s := range 3000 {
				if _, err := runModel(uint64(s), 400); err != nil {
					t.Logf("caught at seed %d: %v", s, err)
					return
				}
			}
			t.Fatal("the broken variant went unnoticed in 3000 seeds")
		})
	}
}
