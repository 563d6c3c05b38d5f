package scenario

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/idc-dev/idc/storage"
)

// ApplyLog is what a storage's apply log shows.
type ApplyLog struct {
	Writes int // writes, trims and zeroes applied
	Fences int // fences that held
	// Stale lists the writes applied with an epoch older than a fence of
	// their group that held before them: each one is a violation of G5.
	Stale []storage.Applied
	// Overtaken lists the writes applied after a write of a later epoch
	// of their group: that epoch had connected (its token existed), so
	// these are stale whether or not a fence held — the check of a store
	// that logs no fences (an unguarded one).
	Overtaken []storage.Applied
	// Refused lists the requests the guard refused.
	Refused []storage.Applied
	// Epochs counts the writes applied per epoch.
	Epochs map[uint64]int
	// Fenced maps each fenced epoch to when its fence held (Unix ns).
	Fenced map[uint64]int64
}

// ReadApplyLog reads a storage's apply log (JSON lines, storage.Applied)
// and checks G5 on it: no write of an epoch is applied after the fence of
// a later epoch of its group held.
func ReadApplyLog(path string) (ApplyLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return ApplyLog{}, err
	}
	defer f.Close()
	out := ApplyLog{Epochs: map[uint64]int{}, Fenced: map[uint64]int64{}}
	floor := map[string]uint64{}
	newest := map[string]uint64{} // the latest epoch applied, per group
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var a storage.Applied
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return out, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if a.Op == "refused" {
			out.Refused = append(out.Refused, a)
			continue
		}
		if a.Op == "fence" {
			out.Fences++
			out.Fenced[a.Epoch] = a.At
			floor[a.Group] = max(floor[a.Group], a.Epoch)
			continue
		}
		out.Writes++
		out.Epochs[a.Epoch]++
		if a.Epoch < floor[a.Group] {
			out.Stale = append(out.Stale, a)
		}
		if a.Epoch < newest[a.Group] {
			out.Overtaken = append(out.Overtaken, a)
		}
		newest[a.Group] = max(newest[a.Group], a.Epoch)
	}
	return out, sc.Err()
}

// staleWrites counts the disk's writes refused for an ended epoch.
func (l ApplyLog) staleWrites() int {
	n := 0
	for _, r := range l.Refused {
		if r.Request == "write" && r.Domain == "disk" && (r.Reason == "stale" || r.Reason == "aborted") {
			n++
		}
	}
	return n
}
