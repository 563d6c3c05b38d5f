package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/idc-dev/idc/coordinator"
	"github.com/idc-dev/idc/internal/scenario"
)

// DiskOptions configure Disk.
type DiskOptions struct {
	// Binary is the idc binary that runs the scenario's processes;
	// required (the command passes itself).
	Binary string
	// Dir holds the scenario's and the baseline's files; default a
	// temporary directory, removed at the end.
	Dir string
	// Size is the disk's size (and the baseline file's); default 256M.
	Size string
	// Runtime is how long fio runs each job (default 5s); Rounds how many
	// times each job runs on each server, in turn (default 3).
	Runtime time.Duration
	Rounds  int
	// IODepth is fio's iodepth (default 16).
	IODepth int
	// Failovers is how many failovers of each kind to measure (default 5;
	// 0 with NoFailover).
	Failovers  int
	NoFailover bool
	// LeaseFailovers is how many failovers of a killed driver to measure
	// in lease mode (default 3, 0 with NoFailover).
	LeaseFailovers int
	// Progress receives a line per measurement (may be nil).
	Progress io.Writer
}

func (o *DiskOptions) defaults() {
	if o.Size == "" {
		o.Size = "256M"
	}
	if o.Runtime <= 0 {
		o.Runtime = 5 * time.Second
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.IODepth <= 0 {
		o.IODepth = 16
	}
	if o.Failovers <= 0 {
		o.Failovers = 5
	}
	if o.LeaseFailovers < 0 {
		o.LeaseFailovers = 0
	}
}

func (o DiskOptions) say(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// The jobs of Disk.
var diskJobs = []struct{ Name, RW, BS string }{
	{"randwrite-4k", "randwrite", "4k"},
	{"read-64k", "read", "64k"},
}

// DiskResult is one figure of Disk: a fio job on qemu-nbd serving a
// plain file (the baseline) and on the idc disk, every round; or the
// failovers of one fault.
type DiskResult struct {
	Kind string `json:"kind"`
	// For a fio job: IOPS and mean completion latency (µs), every round.
	BaselineIOPS []float64 `json:"baseline_iops,omitempty"`
	DiskIOPS     []float64 `json:"disk_iops,omitempty"`
	BaselineLat  []float64 `json:"baseline_lat_us,omitempty"`
	DiskLat      []float64 `json:"disk_lat_us,omitempty"`
	// For failovers: every one's figures.
	Failovers []scenario.Failover `json:"failovers,omitempty"`
}

// Ratio is the disk's median IOPS over the baseline's.
func (r DiskResult) Ratio() float64 {
	return MedianFloat(r.DiskIOPS) / MedianFloat(r.BaselineIOPS)
}

// GoalDiskRatio is the throughput goal: the idc disk at least this
// fraction of qemu-nbd's.
const GoalDiskRatio = 0.7

// Disk measures the multipath disk with fio's nbd engine beside qemu-nbd
// serving a plain file of the same size, in turn, in the same run; then
// failovers of each fault (scenario.RunFailover).
func Disk(ctx context.Context, o DiskOptions) ([]DiskResult, error) {
	o.defaults()
	for _, tool := range []string{"fio", "qemu-nbd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("bench disk needs %s (Debian: fio, qemu-utils)", tool)
		}
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "idc-bench-disk-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	var out []DiskResult
	res, err := diskThroughput(ctx, o)
	out = append(out, res...)
	if err != nil || o.NoFailover {
		return out, err
	}
	type run struct {
		fault scenario.Fault
		mode  string
		n     int
	}
	runs := []run{}
	for _, f := range scenario.Faults() {
		runs = append(runs, run{f, "fence", o.Failovers})
	}
	runs = append(runs, run{scenario.Kill, "lease", o.LeaseFailovers})
	for _, ru := range runs {
		kind := "failover-" + string(ru.fault)
		if ru.mode != "fence" {
			kind += "-" + ru.mode
		}
		r := DiskResult{Kind: kind}
		for i := range ru.n {
			dir := filepath.Join(o.Dir, fmt.Sprintf("%s-%d", kind, i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return out, err
			}
			fo, err := scenario.RunFailover(ctx, scenario.Config{Binary: o.Binary, Dir: dir, Size: "64M", Mode: ru.mode}, ru.fault, 200)
			if err != nil {
				return append(out, r), fmt.Errorf("%s %d: %w", kind, i, err)
			}
			o.say("%s %d/%d: service gap %v, time to fence %v, %d held writes refused", kind, i+1, ru.n,
				fo.Gap.Round(time.Microsecond), fo.ToFence.Round(time.Microsecond), fo.Refused)
			r.Failovers = append(r.Failovers, fo)
			os.RemoveAll(dir)
		}
		if len(r.Failovers) > 0 {
			out = append(out, r)
		}
	}
	return out, nil
}

// LeaseBound is what a failover of a killed driver may take in lease mode
// with the scenario's defaults: detection (heartbeat 10 ms × 5 misses)
// plus the coordinator's wait for the departed member's lease, TTL·(1+ρ)
// plus its margin (coordinator.DefaultRho, DefaultLeaseMargin), plus a
// few store rounds (50 ms).
func LeaseBound() time.Duration {
	const ttl = 2 * time.Second
	return 50*time.Millisecond + time.Duration(float64(ttl)*(1+coordinator.DefaultRho)) + coordinator.DefaultLeaseMargin + 50*time.Millisecond
}

// diskThroughput runs the fio jobs on both servers.
func diskThroughput(ctx context.Context, o DiskOptions) ([]DiskResult, error) {
	dir := filepath.Join(o.Dir, "throughput")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s, err := scenario.Start(ctx, scenario.Config{Binary: o.Binary, Dir: dir, Size: o.Size})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	base, stop, err := qemuNBD(ctx, dir, o.Size)
	if err != nil {
		return nil, err
	}
	defer stop()
	// Fill both disks first, so that reads are of written blocks on both:
	// qemu-nbd answers a never-written range with a hole (no data at all),
	// and the storage reads one as zeroed pages, so a read figure of a
	// sparse disk measures how much the writes before it filled.
	for _, srv := range []struct{ name, uri string }{{"qemu-nbd", base}, {"idc disk", s.NBD}} {
		o.say("filling %s (%s) with sequential 1 MiB writes", srv.name, o.Size)
		if err := fillFio(ctx, srv.uri); err != nil {
			return nil, fmt.Errorf("fio filling %s: %w", srv.name, err)
		}
	}
	var out []DiskResult
	for _, job := range diskJobs {
		r := DiskResult{Kind: job.Name}
		for round := range o.Rounds {
			for _, srv := range []struct {
				name string
				uri  string
				iops *[]float64
				lat  *[]float64
			}{{"qemu-nbd", base, &r.BaselineIOPS, &r.BaselineLat}, {"idc disk", s.NBD, &r.DiskIOPS, &r.DiskLat}} {
				iops, lat, err := runFio(ctx, srv.uri, job.RW, job.BS, o)
				if err != nil {
					return out, fmt.Errorf("fio %s on %s: %w", job.Name, srv.name, err)
				}
				*srv.iops, *srv.lat = append(*srv.iops, iops), append(*srv.lat, lat)
				o.say("%s round %d/%d on %s: %.0f IOPS, %.0f µs", job.Name, round+1, o.Rounds, srv.name, iops, lat)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// qemuNBD serves a new (sparse) raw file of size with qemu-nbd on a unix
// socket and returns its URI.
func qemuNBD(ctx context.Context, dir, size string) (string, func(), error) {
	file, sock := filepath.Join(dir, "baseline.img"), filepath.Join(dir, "baseline.sock")
	if out, err := exec.CommandContext(ctx, "truncate", "-s", size, file).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("truncate: %v: %s", err, out)
	}
	cmd := exec.Command("qemu-nbd", "-f", "raw", "-x", "bench", "--socket="+sock, "--persistent", "--shared=8", file)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("qemu-nbd did not listen on %s", sock)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "nbd+unix:///bench?socket=" + sock, stop, nil
}

// fillFio writes the whole disk at uri once, sequentially.
func fillFio(ctx context.Context, uri string) error {
	out, err := exec.CommandContext(ctx, "fio", "--name=fill", "--ioengine=nbd", "--uri="+uri, "--rw=write",
		"--bs=1M", "--iodepth=4", "--output-format=terse").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// runFio runs one fio job against uri and returns its IOPS and mean
// completion latency in µs.
func runFio(ctx context.Context, uri, rw, bs string, o DiskOptions) (float64, float64, error) {
	args := []string{"--name=bench", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + bs,
		"--iodepth=" + strconv.Itoa(o.IODepth), "--time_based", "--runtime=" + strconv.Itoa(int(o.Runtime.Seconds())),
		"--ramp_time=1", "--output-format=json"}
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("%v: %s", err, out)
	}
	var rep struct {
		Jobs []struct {
			Read, Write struct {
				IOPS  float64 `json:"iops"`
				ClatN struct {
					Mean float64 `json:"mean"`
				} `json:"clat_ns"`
			}
		} `json:"jobs"`
	}
	// fio may print notes before the JSON.
	if i := slices.Index(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Jobs) == 0 {
		return 0, 0, fmt.Errorf("fio's output: %v", err)
	}
	j := rep.Jobs[0]
	if rw == "read" {
		return j.Read.IOPS, j.Read.ClatN.Mean / 1e3, nil
	}
	return j.Write.IOPS, j.Write.ClatN.Mean / 1e3, nil
}
