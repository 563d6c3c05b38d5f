//go:build idc_mutation

package watchdog

import (
	"testing"

	"github.com/idc-dev/idc/internal/mutation"
)

func TestCheckNoWatchdog(t *testing.T) {
	defer mutation.Set(mutation.NoWatchdog)()
	for _, heard := range []bool{true, false} {
		h := heard
		if got := Check(&h); got != Off || h != heard {
			t.Errorf("heard %v: Check = %v, heard then %v; want %v, heard unchanged", heard, got, h, Off)
		}
	}
}
