package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/store"
)

// TestStoreClusterFlags: bad cluster flags are refused before anything
// starts, with an error saying which flag and why.
func TestStoreClusterFlags(t *testing.T) {
	cluster := "s1=http://10.0.0.1:2380,s2=http://10.0.0.2:2380,s3=http://10.0.0.3:2380"
	for _, tc := range []struct {
		name  string
		args  []string
		err   string
		embed bool // also wraps store.ErrEmbed
	}{
		{"malformed cluster", []string{"--name", "s1", "--initial-cluster", "s1=http://10.0.0.1:2380,s2"}, `--initial-cluster: idc: invalid config: cluster "s1=http://10.0.0.1:2380,s2": "s2" is not name=peerURL`, false},
		{"empty member", []string{"--name", "s1", "--initial-cluster", cluster + ","}, `"" is not name=peerURL`, false},
		{"no name", []string{"--initial-cluster", cluster}, "--initial-cluster needs --name", false},
		{"own name missing", []string{"--name", "s4", "--initial-cluster", cluster}, `this member's name "s4" is not in the cluster`, true},
		{"name twice", []string{"--name", "s1", "--initial-cluster", cluster + ",s1=http://10.0.0.4:2380"}, `"s1" is given twice`, true},
		{"peer port 0", []string{"--name", "s1", "--initial-cluster", "s1=http://10.0.0.1:0"}, "fixed port", true},
		{"peer unspecified", []string{"--name", "s1", "--initial-cluster", "s1=http://0.0.0.0:2380"}, "no address anyone can dial", true},
		{"bad state", []string{"--name", "s1", "--initial-cluster", cluster, "--initial-cluster-state", "old"}, `cluster state "old"`, true},
		{"advertised peer elsewhere", []string{"--name", "s1", "--initial-cluster", cluster, "--advertise-peer", "http://10.0.0.2:2380"}, "is not s1's URL in the cluster", true},
		{"client everywhere", []string{"--name", "s1", "--initial-cluster", cluster, "--listen-client", "http://0.0.0.0:2379"}, "give an advertised client URL", true},
		{"token alone", []string{"--initial-cluster-token", "t"}, "--initial-cluster-token needs --initial-cluster", false},
		{"state alone", []string{"--initial-cluster-state", "existing"}, "--initial-cluster-state needs --initial-cluster", false},
		{"advertise peer alone", []string{"--advertise-peer", "http://10.0.0.1:2380"}, "--advertise-peer needs --initial-cluster", false},
		{"with endpoints", []string{"--name", "s1", "--initial-cluster", cluster, "--etcd-endpoints", "http://10.0.0.1:2379"}, "give one of them", false},
		{"election timeout", []string{"--election-timeout", "300ms"}, "at least 5 heartbeat intervals of 100 ms", true},
		{"heartbeat fraction", []string{"--heartbeat-interval", "1500us"}, "--heartbeat-interval 1.5ms: want whole milliseconds", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out syncBuffer
			args := append([]string{"store", "--data-dir", t.TempDir()}, tc.args...)
			err := run(ctx, &out, args...)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("idc %s: %v, want an error saying %q", strings.Join(args, " "), err, tc.err)
			}
			if !errors.Is(err, proto.ErrConfig) {
				t.Errorf("%v does not wrap proto.ErrConfig", err)
			}
			if errors.Is(err, store.ErrEmbed) != tc.embed {
				t.Errorf("errors.Is(%v, store.ErrEmbed) = %v, want %v", err, !tc.embed, tc.embed)
			}
			if out.String() != "" {
				t.Errorf("printed %q before refusing", out.String())
			}
		})
	}
}
