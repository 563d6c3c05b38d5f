package idc_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/store"
)

// Example joins a domain to a group on an embedded store, waits for its
// first epoch, does one operation in it and leaves.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// The store and the coordinator: what `idc store` runs.
	dir, _ := os.MkdirTemp("", "idc-example-")
	defer os.RemoveAll(dir)
	etcd, err := store.StartEmbedded(ctx, store.EmbedConfig{DataDir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer etcd.Close()
	cli, _ := store.Dial(ctx, store.DialConfig{Endpoints: etcd.Endpoints})
	defer cli.Close()
	cctx, stopCoordinator := context.WithCancel(ctx)
	defer stopCoordinator()
	ccfg := coordinator.DefaultConfig()
	ccfg.Client, ccfg.Logger = cli, quiet
	go coordinator.Run(cctx, ccfg)

	// A domain.
	cfg := idc.DefaultConfig()
	cfg.Group, cfg.ID, cfg.Endpoints, cfg.Logger = "storage", "driver-a", etcd.Endpoints, quiet
	d, err := idc.Join(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	ep, err := d.Next(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("connected in epoch", ep.Number(), "of", ep.Group())
	err = ep.Do(func(ctx context.Context) error {
		tok := ep.Token() // attach to every request to a guarded resource
		fmt.Printf("token: group %s, epoch %d, domain %s\n", tok.Group, tok.Epoch, tok.Domain)
		return nil
	})
	fmt.Println("operation:", err)
	fmt.Println("leave:", d.Leave(ctx)) // graceful: the group need not wait the lease out
	defer d.Close()
	_, err = d.Next(ctx)
	fmt.Println("after leaving:", err)
	// Output:
	// connected in epoch 1 of storage
	// token: group storage, epoch 1, domain driver-a
	// operation: <nil>
	// leave: <nil>
	// after leaving: idc: membership left the group
}
