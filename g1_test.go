package idc_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/testenv"
)

// TestG1_RacingCoordinators runs three coordinators with no election, so
// every one of them acts on every change, and fires concurrent triggers:
// joins, fault reports, a graceful leave and a crash. Compare-and-swap
// alone must keep epoch numbers rising strictly, each decided once.
func TestG1_RacingCoordinators(t *testing.T) {
	e := newEnv(t)
	for i := range 3 {
		e.coordinator(coordinator.Config{NoElection: true, Name: fmt.Sprintf("c%d", i)})
	}
	ids := []string{"a", "b", "c", "d", "e", "f"}
	ds := map[string]*idc.Membership{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := e.join(id)
			mu.Lock()
			ds[id] = d
			mu.Unlock()
		}()
	}
	wg.Wait()
	e.connected(testenv.Mark{}, 10*time.Second, ids...)
	current(t, ds["a"], 5*time.Second, ids...)
	current(t, ds["b"], 5*time.Second, ids...)

	mark := e.mark()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wg.Add(4)
	go func() { defer wg.Done(); _ = ds["a"].ReportFault(ctx, "c") }()
	go func() { defer wg.Done(); _ = ds["b"].ReportFault(ctx, "d") }()
	go func() { defer wg.Done(); _ = ds["e"].Leave(ctx) }()
	go func() { defer wg.Done(); idc.Crash(ds["f"]) }()
	g := e.join("g")
	wg.Wait()
	e.connected(mark, 20*time.Second, "a", "b", "g")
	e.h.CheckG1(t, group)
	_ = g
	t.Logf("history:\n%s", fmtHistory(e))
}

// TestG1_ElectedCoordinatorsTakeTurns runs three elected candidates and
// stops the active one twice; the group keeps changing, numbers keep
// rising strictly.
func TestG1_ElectedCoordinatorsTakeTurns(t *testing.T) {
	e := newEnv(t)
	var stops []func()
	for i := range 3 {
		stops = append(stops, e.coordinator(coordinator.Config{Name: fmt.Sprintf("c%d", i), ElectionTTL: time.Second}))
	}
	a := e.join("a")
	e.connected(testenv.Mark{}, 10*time.Second, "a")
	mark := e.mark()
	for i, id := range []string{"b", "c"} {
		stops[i]() // graceful: resigns; another candidate takes over
		e.join(id)
	}
	e.connected(mark, 15*time.Second, "a", "b", "c")
	current(t, a, 5*time.Second, "a", "b", "c")
	e.h.CheckG1(t, group)
}

func fmtHistory(e *env) string { return testenv.Format(e.h.Records(group)) }
