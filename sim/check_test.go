package sim

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/block"
	"github.com/idc-dev/idc/proto"
)

// Hand-made histories that violate each guarantee, and near misses that do
// not: a check that cannot fail is a defect.

func mem(id string, inc uint64) proto.Member {
	return proto.Member{ID: id, Incarnation: inc, TTL: 2 * time.Second}
}

func ref(id string, inc uint64) proto.Ref { return proto.Ref{ID: id, Incarnation: inc} }

func epoch(at time.Duration, n uint64, st proto.State, members []proto.Member, prev []proto.Member) Rec {
	r := &proto.EpochRecord{Group: group, Number: n, State: st, Mode: proto.ModeLease, Members: members}
	if st == proto.Quiescing {
		r.Prev, r.PrevNumber = prev, n-1
	}
	return Rec{Kind: HEpoch, At: at, Record: r, Rev: int64(n)*2 + 1}
}

// observe feeds recs one at a time, as the simulator does after each step.
func observe(c Check, mode proto.Mode, recs ...Rec) error {
	h := &History{Mode: mode}
	for _, r := range recs {
		h.add(r)
		h.Now = r.At
		if err := c.Observe(h); err != nil {
			return err
		}
	}
	return nil
}

func TestChecksFire(t *testing.T) {
	a, b := mem("a", 1), mem("b", 1)
	ab := []proto.Member{a, b}
	s := time.Second
	cases := []struct {
		name  string
		check func() Check
		mode  proto.Mode
		recs  []Rec
		want  string // "" for no violation, else a substring of it
	}{
		{"G1 ok", func() Check { return &G1{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			epoch(2*s, 2, proto.Quiescing, ab, []proto.Member{a}),
			epoch(3*s, 2, proto.Connected, ab, nil),
			epoch(4*s, 3, proto.Quiescing, []proto.Member{a}, ab),
			epoch(5*s, 4, proto.Quiescing, []proto.Member{b}, ab),
			epoch(6*s, 4, proto.Connected, []proto.Member{b}, nil),
		}, ""},
		{"G1 decided twice", func() Check { return &G1{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			epoch(2*s, 2, proto.Quiescing, ab, []proto.Member{a}),
			epoch(2*s, 2, proto.Quiescing, []proto.Member{b}, []proto.Member{a}),
		}, "rise strictly"},
		{"G1 same record twice", func() Check { return &G1{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
		}, "rise strictly"},
		{"G1 goes back", func() Check { return &G1{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			epoch(2*s, 2, proto.Quiescing, ab, []proto.Member{a}),
			epoch(2*s, 2, proto.Connected, ab, nil),
			epoch(3*s, 1, proto.Connected, ab, nil),
		}, "rise strictly"},
		{"G1 connected other members", func() Check { return &G1{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			epoch(2*s, 2, proto.Quiescing, ab, []proto.Member{a}),
			epoch(3*s, 2, proto.Connected, []proto.Member{b}, nil),
		}, "decided quiescing as"},
		{"G1 connected without quiescing", func() Check { return &G1{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			epoch(2*s, 2, proto.Connected, ab, nil),
		}, "without having been quiescing"},

		{"G3 ok: op ended before connect, joiner's op irrelevant", func() Check { return &G3{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			{Kind: HBegin, At: 1 * s, Ref: a.Ref(), Epoch: 1, Op: 7},
			epoch(2*s, 2, proto.Quiescing, ab, []proto.Member{a}),
			{Kind: HEnd, At: 2 * s, Ref: a.Ref(), Epoch: 1, Op: 7},
			{Kind: HBegin, At: 2 * s, Ref: ref("b", 0), Epoch: 1, Op: 8}, // another incarnation
			epoch(3*s, 2, proto.Connected, ab, nil),
			{Kind: HBegin, At: 4 * s, Ref: a.Ref(), Epoch: 2, Op: 9},
			{Kind: HKill, At: 5 * s, Ref: a.Ref(), Epoch: 2, Op: 9},
			epoch(6*s, 3, proto.Quiescing, ab, ab),
			epoch(6*s, 3, proto.Connected, ab, nil),
		}, ""},
		{"G3 op in progress", func() Check { return &G3{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, []proto.Member{a}, nil),
			{Kind: HBegin, At: 1 * s, Ref: a.Ref(), Epoch: 1, Op: 7},
			epoch(2*s, 2, proto.Quiescing, ab, []proto.Member{a}),
			epoch(3*s, 2, proto.Connected, ab, nil),
		}, "operation 7 of epoch 1 in progress"},

		{"G4 ok", func() Check { return &G4{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, ab, nil),
			{Kind: HIO, At: 1 * s, Ref: b.Ref(), Epoch: 1, Op: 1},
			epoch(2*s, 2, proto.Quiescing, []proto.Member{a}, ab),
			{Kind: HIO, At: 2 * s, Ref: b.Ref(), Epoch: 1, Op: 1},
			epoch(3*s, 2, proto.Connected, []proto.Member{a}, nil),
			{Kind: HIO, At: 4 * s, Ref: a.Ref(), Epoch: 2, Op: 2},
		}, ""},
		{"G4 departed member acts", func() Check { return &G4{} }, proto.ModeLease, []Rec{
			epoch(1*s, 1, proto.Connected, ab, nil),
			epoch(2*s, 2, proto.Quiescing, []proto.Member{a}, ab),
			epoch(3*s, 2, proto.Connected, []proto.Member{a}, nil),
			{Kind: HIO, At: 3*s + 1, Ref: b.Ref(), Epoch: 1, Op: 1},
		}, "b/1 did I/O of epoch 1"},
		{"G4 in fence mode with no resource", func() Check { return &G4{} }, proto.ModeFence, []Rec{
			epoch(1*s, 1, proto.Connected, ab, nil),
			epoch(2*s, 2, proto.Quiescing, []proto.Member{a}, ab),
			epoch(3*s, 2, proto.Connected, []proto.Member{a}, nil),
			{Kind: HIO, At: 3*s + 1, Ref: b.Ref(), Epoch: 1, Op: 1},
		}, "after epoch 2 connected"},

		{"G5 ok: fenced after the older apply ended", func() Check { return &G5{} }, proto.ModeFence, []Rec{
			{Kind: HApply, At: 1 * s, Ref: a.Ref(), Epoch: 1, Msg: 7, Note: "storage"},
			{Kind: HApplied, At: 1 * s, Ref: a.Ref(), Epoch: 1, Msg: 7, Note: "storage"},
			{Kind: HFenced, At: 2 * s, Epoch: 2, Note: "storage"},
			{Kind: HApply, At: 3 * s, Ref: a.Ref(), Epoch: 1, Msg: 8, Note: "r1"}, // another resource
			{Kind: HApply, At: 3 * s, Ref: a.Ref(), Epoch: 2, Msg: 9, Note: "storage"},
			{Kind: HFenced, At: 4 * s, Epoch: 1, Note: "storage"}, // a restarted guard's older fence: the floor stays
			{Kind: HApply, At: 5 * s, Ref: a.Ref(), Epoch: 2, Msg: 10, Note: "storage"},
		}, ""},
		{"G5 apply after the fence held", func() Check { return &G5{} }, proto.ModeFence, []Rec{
			{Kind: HFenced, At: 2 * s, Epoch: 2, Note: "storage"},
			{Kind: HApply, At: 3 * s, Ref: a.Ref(), Epoch: 1, Msg: 7, Note: "storage"},
		}, "after its fence of epoch 2 held"},
		{"G5 apply under way when the fence held", func() Check { return &G5{} }, proto.ModeFence, []Rec{
			{Kind: HApply, At: 1 * s, Ref: a.Ref(), Epoch: 1, Msg: 7, Note: "r1"},
			{Kind: HFenced, At: 2 * s, Epoch: 2, Note: "r1"},
			{Kind: HApplied, At: 3 * s, Ref: a.Ref(), Epoch: 1, Msg: 7, Note: "r1"},
		}, "was still applying write 7"},
		{"G5 apply after a later epoch connected", func() Check { return &G5{} }, proto.ModeBoth, []Rec{
			epoch(1*s, 1, proto.Connected, ab, nil),
			epoch(2*s, 2, proto.Quiescing, []proto.Member{a}, ab),
			epoch(3*s, 2, proto.Connected, []proto.Member{a}, nil),
			{Kind: HApply, At: 4 * s, Ref: b.Ref(), Epoch: 1, Msg: 7, Note: "r1"},
		}, "after epoch 2 connected"},

		{"no-stale-write ok", func() Check { return &NoStaleWrite{} }, proto.ModeFence, []Rec{
			{Kind: HWritten, At: 1 * s, Block: 0, Msg: 1, Note: "storage"},
			{Kind: HAcked, At: 2 * s, Block: 0, Msg: 1},
			{Kind: HWritten, At: 3 * s, Block: 0, Msg: 1, Note: "storage"}, // an abandoned copy of the same write
			{Kind: HWritten, At: 3 * s, Block: 1, Msg: 0, Note: "storage"}, // another block
			{Kind: HRead, At: 4 * s, Block: 0, Msg: 1, Least: 1},
			{Kind: HWritten, At: 5 * s, Block: 0, Msg: 4, Note: "storage"},
			{Kind: HRead, At: 6 * s, Block: 0, Msg: 4, Least: 1},
			{Kind: HAcked, At: 7 * s, Block: 0, Msg: 4},
		}, ""},
		{"no-stale-write older write lands", func() Check { return &NoStaleWrite{} }, proto.ModeFence, []Rec{
			{Kind: HWritten, At: 1 * s, Block: 2, Msg: 5, Note: "storage"},
			{Kind: HAcked, At: 2 * s, Block: 2, Msg: 5},
			{Kind: HWritten, At: 3 * s, Ref: a.Ref(), Epoch: 3, Op: 0x11, Block: 2, Msg: 3, Note: "storage"},
		}, "putting write 3 in block 2, after write 5 to it was acknowledged"},
		{"no-stale-write acknowledged out of order", func() Check { return &NoStaleWrite{} }, proto.ModeFence, []Rec{
			{Kind: HAcked, At: 2 * s, Block: 2, Msg: 5},
			{Kind: HAcked, At: 3 * s, Block: 2, Msg: 3},
		}, "write 3 to block 2 acknowledged"},
		{"no-stale-write stale read", func() Check { return &NoStaleWrite{} }, proto.ModeFence, []Rec{
			{Kind: HRead, At: 3 * s, Op: 9, Block: 2, Msg: 3, Least: 5},
		}, "stale read"},
		{"no-stale-write garbled block", func() Check { return &NoStaleWrite{} }, proto.ModeFence, []Rec{
			{Kind: HWritten, At: 3 * s, Block: 2, Msg: 3, Note: "block 2 holds a torn write"},
		}, "torn write"},
		{"no-stale-write garbled read", func() Check { return &NoStaleWrite{} }, proto.ModeFence, []Rec{
			{Kind: HRead, At: 3 * s, Block: 2, Msg: 3, Note: "write 3 was never sent to block 2"},
		}, "never sent"},

		{"G6 ok", func() Check { return &G6{} }, proto.ModeLease, []Rec{
			{Kind: HGrant, At: 0, Lease: 5, TTL: 2 * s},
			{Kind: HKeepAlive, At: 0, Lease: 5, TTL: 2 * s},
			{Kind: HKeepAlive, At: 1 * s, Lease: 5, TTL: 2 * s},
			{Kind: HIO, At: 3*s - 1, Ref: a.Ref(), Lease: 5, Epoch: 1, Op: 1},
		}, ""},
		{"G6 after nominal expiry", func() Check { return &G6{} }, proto.ModeLease, []Rec{
			{Kind: HGrant, At: 0, Lease: 5, TTL: 2 * s},
			{Kind: HKeepAlive, At: 1 * s, Lease: 5, TTL: 2 * s},
			{Kind: HIO, At: 3 * s, Ref: a.Ref(), Lease: 5, Epoch: 1, Op: 1},
		}, "nominally expired at 3s"},
		{"G6 unknown lease", func() Check { return &G6{} }, proto.ModeLease, []Rec{
			{Kind: HIO, At: 3 * s, Ref: a.Ref(), Lease: 6, Epoch: 1, Op: 1},
		}, "never granted"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := observe(tc.check(), tc.mode, tc.recs...)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("false alarm: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("violation not reported")
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("got %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestL1Fires: L1 fails when there is no connected epoch with every live
// domain at the end — before anything ran, and after a quiet period far
// too short for the group to settle.
func TestL1Fires(t *testing.T) {
	w := newWorld(Config{Seed: 1}.WithDefaults())
	if err := w.checkL1(); err == nil || !strings.Contains(err.Error(), "no epoch record") {
		t.Fatalf("L1 on an empty store: %v", err)
	}
	for seed := int64(1); seed <= 50; seed++ {
		_, err := Run(Config{Seed: seed, Quiet: time.Millisecond})
		var v *Violation
		if errors.As(err, &v) && v.Guarantee == "L1" {
			t.Logf("seed %d: L1 fails with a 1 ms quiet period: %s", seed, strings.SplitN(v.Detail, "\n", 2)[0])
			return
		}
	}
	t.Fatal("L1 never failed with a 1 ms quiet period")
}

// TestPayload: a write's bytes name the write and its block; bytes of
// another block, a torn write and stray bytes are told apart from zeros
// (no write yet).
func TestPayload(t *testing.T) {
	if seq, err := decodePayload(3, payload(3, 77)); seq != 77 || err != nil {
		t.Fatalf("write 77 to block 3 decodes as %d, %v", seq, err)
	}
	if seq, err := decodePayload(3, make([]byte, blockSize)); seq != 0 || err != nil {
		t.Fatalf("zeros decode as %d, %v", seq, err)
	}
	if _, err := decodePayload(2, payload(3, 77)); err == nil {
		t.Fatal("block 3's write accepted in block 2")
	}
	torn := payload(3, 77)
	copy(torn[blockSize/2:], payload(3, 78))
	if _, err := decodePayload(3, torn); err == nil {
		t.Fatal("a torn write accepted")
	}
}

// TestConfigErrors: a bad configuration is an ErrConfig.
func TestConfigErrors(t *testing.T) {
	if _, err := Run(Config{Domains: -1}); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad config: %v", err)
	}
	if _, err := Run(Config{Mode: "fencing"}); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad mode: %v", err)
	}
	if _, err := Run(Config{Storage: true, Mode: proto.ModeLease}); !errors.Is(err, ErrConfig) {
		t.Fatalf("the storage scenario in lease mode: %v", err)
	}
}

// TestStorageEndChecksFire: at the end of a storage scenario's run, a
// block that does not hold its last acknowledged write fails the blocks
// check, and a request of the client without an outcome fails L1.
func TestStorageEndChecksFire(t *testing.T) {
	w := newWorld(Config{Seed: 1, Storage: true}.WithDefaults())
	if err := w.checkBlocks(); err != nil {
		t.Fatalf("nothing written, nothing acknowledged: %v", err)
	}
	w.client.acked[2] = 5
	if err := w.checkBlocks(); err == nil || !strings.Contains(err.Error(), "block 2 holds write 0, the last acknowledged is 5") {
		t.Fatalf("an acknowledged write lost: %v", err)
	}
	w.storage.mem.WriteAt(payload(2, 3), 2*blockSize)
	if err := w.checkBlocks(); err == nil || !strings.Contains(err.Error(), "block 2 holds write 3") {
		t.Fatalf("an older write over the acknowledged one: %v", err)
	}
	w.storage.mem.WriteAt(payload(2, 5), 2*blockSize)
	if err := w.checkBlocks(); err != nil {
		t.Fatalf("every block holds its last acknowledged write: %v", err)
	}
	w.client.reqs = append(w.client.reqs, &clientReq{op: block.OpWrite, blk: 1, seq: 9})
	if err := w.checkL1(); err == nil || !strings.Contains(err.Error(), "1 of the client's requests have no outcome: write of block 1 (write 9") {
		t.Fatalf("a request without an outcome: %v", err)
	}
}
