package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// coordinate runs a coordinator on cli, and a watch on the embedded store
// e, in bg until run ends; either failing stops run with the reason.
func coordinate(run context.Context, stop context.CancelCauseFunc, bg *sync.WaitGroup, e *store.Embedded, cli *clientv3.Client, log *slog.Logger) {
	ccfg := coordinator.DefaultConfig()
	ccfg.Client, ccfg.Logger = cli, log
	bg.Go(func() {
		if err := coordinator.Run(run, ccfg); run.Err() == nil {
			stop(fmt.Errorf("bench: coordinator stopped: %w", err))
		}
	})
	bg.Go(func() {
		select {
		case err := <-e.Err():
			stop(fmt.Errorf("bench: store failed: %w", err))
		case <-run.Done():
		}
	})
}
