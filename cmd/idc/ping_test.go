package main

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/idc-dev/idc"
	"github.com/idc-dev/idc/inspect"
)

// TestPing: `idc ping g a --count 2` joins the group for a moment, prints
// two replies and a summary, leaves, and exits 0; the members stay, and
// the group is back to them. A PEER that is not a member is refused with
// a clear error before anything is joined, and so is an unknown group.
func TestPing(t *testing.T) {
	c := newCluster(t)
	c.join("a", 1)
	b := c.join("b", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var out syncBuffer
	if err := run(ctx, &out, "ping", "g", "a", "--count", "2", "--interval", "10ms", "--id", "pinger",
		"--log-level", "error", "--etcd-endpoints", c.endpoints); err != nil {
		t.Fatalf("idc ping: %v\n%s", err, out.String())
	}
	text := out.String()
	t.Log("\n" + text)
	replies := regexp.MustCompile(`(?m)^ping: reply from a \(epoch (\d+)\): \d+(\.\d+)?(µs|ms|s)$`).FindAllString(text, -1)
	if len(replies) != 2 {
		t.Errorf("%d reply lines, want 2", len(replies))
	}
	for _, want := range []string{"joined group g as pinger", "2 sent, 2 replies, 0 lost; round trip min/median/max = ", "left group g"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// It left: the group is back to a and b, in a later epoch.
	for {
		ep, err := b.Next(ctx)
		if err != nil {
			t.Fatalf("b: %v", err)
		}
		if len(ep.Members()) == 2 {
			break
		}
	}

	for _, tt := range []struct {
		args []string
		is   error
		want string
	}{
		{[]string{"ping", "g", "nosuch"}, idc.ErrNotMember, "nosuch is not a member of group g (members: a, b)"},
		{[]string{"ping", "nogroup", "a"}, inspect.ErrNoGroup, "no such group"},
		{[]string{"ping", "g", "a", "--count", "0"}, idc.ErrConfig, "--count 0 must be at least 1"},
	} {
		out = syncBuffer{}
		err := run(ctx, &out, append(tt.args, "--log-level", "error", "--etcd-endpoints", c.endpoints)...)
		if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("idc %v: err = %v, want %v saying %q", tt.args, err, tt.is, tt.want)
		}
		if strings.Contains(out.String(), "joined") {
			t.Errorf("idc %v joined the group before refusing:\n%s", tt.args, out.String())
		}
	}
}
