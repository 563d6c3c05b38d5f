package demo

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/testenv"
)

// TestDemo runs the demo and checks its story: c is fenced after the fault
// report, epoch 3 connects only after b's slow operation ended (G3), c
// rejoins, b leaves, and the last epoch has a and c.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := Run(ctx, Options{Out: &out, Logger: testenv.Logger(t), DataDir: t.TempDir()}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)
	idx := func(re string) int {
		loc := regexp.MustCompile(re).FindStringIndex(s)
		if loc == nil {
			t.Fatalf("demo output lacks %q", re)
		}
		return loc[0]
	}
	slowEnd := idx(`b +slow operation in epoch 2 ended`)
	connect3 := idx(`store +epoch 3 connected +members \[a b\]`)
	if slowEnd > connect3 {
		t.Errorf("G3: epoch 3 connected before b's slow operation of epoch 2 ended")
	}
	idx(`c +FENCED: .*dropped from the group`)
	idx(`store +epoch 4 connected +members \[a b c\]`)
	idx(`store +epoch 5 connected +members \[a c\]`)
	if !strings.HasSuffix(strings.TrimSpace(s), "done") {
		t.Errorf("demo did not finish with done")
	}
}
