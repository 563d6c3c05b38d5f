// Command idc is the idc binary: the store and coordinator (idc store), a
// view of groups and epochs (idc status, idc watch) and a demo (idc demo).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "idc:", err)
		os.Exit(1)
	}
}
