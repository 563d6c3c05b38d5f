package demo

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/internal/testenv"
)

// TestDemo runs the demo and checks its story: the three domains connect,
// c is fenced after the fault report, the next epoch connects only after
// b's slow operation ended (G3) and c's lease ran out (G4), c rejoins, b
// leaves, and the last epoch has a and c.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := RunBasic(ctx, BasicOptions{Out: &out, Logger: testenv.Logger(t), DataDir: t.TempDir()}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)
	find := func(re string) (int, []string) {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatchIndex(s)
		if m == nil {
			t.Fatalf("demo output lacks %q", re)
		}
		var groups []string
		for i := 2; i < len(m); i += 2 {
			groups = append(groups, s[m[i]:m[i+1]])
		}
		return m[0], groups
	}
	// One join at a time: epochs 1, 2, 3 with a, a b, a b c.
	find(`store +epoch 3 connected +members \[a b c\]`)
	slowEnd, g := find(`b +slow operation in epoch (\d+) ended`)
	slowEpoch, _ := strconv.Atoi(g[0])
	fenced, _ := find(`c +FENCED: .*dropped from the group`)
	next := strconv.Itoa(slowEpoch + 1)
	connect, _ := find(`store +epoch ` + next + ` connected +members \[a b\]`)
	if slowEnd > connect {
		t.Errorf("G3: epoch %s connected before b's slow operation of epoch %d ended", next, slowEpoch)
	}
	if fenced > connect {
		t.Errorf("G4: epoch %s connected before c fenced itself", next)
	}
	find(`store +epoch ` + strconv.Itoa(slowEpoch+2) + ` connected +members \[a b c\]`)
	find(`store +epoch ` + strconv.Itoa(slowEpoch+3) + ` connected +members \[a c\]`)
	if !strings.HasSuffix(strings.TrimSpace(s), "done") {
		t.Errorf("demo did not finish with done")
	}
}
