//go:build idc_mutation

package channel

import (
	"testing"

	"github.com/idc-dev/idc/internal/mutation"
	"github.com/idc-dev/idc/wire"
)

// TestNoFrameEpochCheckIsCaught shows that the scripts' G2 check fails for
// the broken variant whose receiver skips the frame's epoch check: a
// message of the previous epoch is delivered. Run with -tags idc_mutation.
func TestNoFrameEpochCheckIsCaught(t *testing.T) {
	defer mutation.Set(mutation.NoFrameEpochCheck)()
	var c Channel
	c.Init(3, 4, 100)
	c.Open(4, 0)
	h := wire.Header{Version: wire.Version, Type: wire.Message, Epoch: 2, Seq: 1, Length: 10}
	a, err := c.Receive(h)
	if err := invariants(&c, h, a, err); err == nil {
		t.Fatalf("the broken variant went unnoticed: %s", a)
	} else {
		t.Logf("caught: %v", err)
	}
}
