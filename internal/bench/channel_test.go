package bench

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkChannel measures channels beside raw sockets of the same run:
// level raw (a plain net.Conn), mesh (internal/channel.Mesh) and api
// (idc.Epoch on an embedded store); kinds call and message (ns/op is one
// round trip) and stream (MB/s); allocs/msg counts the whole process's
// allocations per message, a round trip carrying two.
// Run: go test -run - -bench Channel -benchtime 2s ./internal/bench
func BenchmarkChannel(b *testing.B) {
	ctx := context.Background()
	o := ChannelOptions{DataDir: b.TempDir(), Heartbeat: 200 * time.Millisecond, Misses: 10}
	if err := o.defaults(); err != nil {
		b.Fatal(err)
	}
	for _, level := range []string{"raw", LevelMesh, LevelAPI} {
		// Each level on its own: no store runs beside the others.
		lo := o
		lo.Levels = nil
		if level != "raw" {
			lo.Levels = []string{level}
		}
		env, err := newChannelEnv(ctx, b.TempDir(), lo)
		if err != nil {
			b.Fatal(err)
		}
		for _, tr := range o.Transports {
			for _, size := range o.Sizes {
				for _, kind := range o.Kinds {
					if level == "raw" && kind == KindMessage {
						continue // the raw round trip is "call"
					}
					b.Run(fmt.Sprintf("%s/%s/size=%d/%s", level, tr, size, kind), func(b *testing.B) {
						r := env.runner(tr, size, kind, level)
						if kind == KindStream {
							b.SetBytes(int64(size))
						}
						b.ReportAllocs()
						b.ResetTimer()
						s, err := r.timed(ctx, b.N)
						if err != nil {
							b.Fatal(err)
						}
						b.ReportMetric(s.allocsPerMsg(), "allocs/msg")
					})
				}
			}
		}
		env.close()
	}
}

// TestChannelsMeasure runs the whole measurement once with tiny counts:
// every figure is there and positive.
func TestChannelsMeasure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Channels(ctx, ChannelOptions{Sizes: []int{64, 4096}, Duration: 5 * time.Millisecond, Rounds: 2, DataDir: t.TempDir(),
		Heartbeat: time.Second}) // tolerant of a busy machine
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * 2 * 3 * 2; len(res) != want {
		t.Fatalf("%d results, want %d", len(res), want)
	}
	for _, r := range res {
		if len(r.Raw) != 2 || len(r.IDC) != 2 || len(r.Allocs) != 2 {
			t.Fatalf("%+v: want 2 rounds", r)
		}
		for i := range r.Raw {
			if r.Raw[i] <= 0 || r.IDC[i] <= 0 || r.Allocs[i] < 0 {
				t.Fatalf("%+v: a figure is not positive", r)
			}
		}
		t.Logf("%s %d %s %s: raw %.0f, idc %.0f %s, ratio %.2f, %.2f allocs/msg, met %v", r.Transport, r.Size, r.Kind, r.Level,
			MedianFloat(r.Raw), MedianFloat(r.IDC), r.Unit(), r.Ratio(), MedianFloat(r.Allocs), r.Met())
	}
}
