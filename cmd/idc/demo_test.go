package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/idc-dev/idc"
)

// TestDemoBadInput: idc demo refuses bad flags with an error wrapping
// ErrConfig that names the problem, before it starts or prints anything.
// (internal/demo runs the demo for real.)
func TestDemoBadInput(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"mode", []string{"--mode", "trust"}, `mode "trust"`},
		{"schedule", []string{"--schedule", "kill,explode"}, `unknown fault "explode"`},
		{"schedule duration", []string{"--schedule", "pause:active:soon"}, "duration"},
		{"steps", []string{"--steps", "0"}, "--steps 0"},
		{"schedules", []string{"--schedules", "-1"}, "--schedules -1"},
		{"data dir without basic", []string{"--data-dir", t.TempDir()}, "--data-dir is for --basic"},
	} {
		var out syncBuffer
		err := run(context.Background(), &out, append([]string{"demo"}, tt.args...)...)
		if !errors.Is(err, idc.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want ErrConfig saying %q", tt.name, err, tt.want)
		}
		if out.String() != "" {
			t.Errorf("%s: printed %q before refusing", tt.name, out.String())
		}
	}
}
