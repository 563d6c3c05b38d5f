package nbd

import (
	"errors"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		uri                   string
		network, addr, export string
		err                   string // part of the error text; empty for success
	}{
		// The examples of the URI specification.
		{uri: "nbd://example.com:10809/export", network: "tcp", addr: "example.com:10809", export: "export"},
		{uri: "nbd+unix:///export?socket=nbd.sock", network: "unix", addr: "nbd.sock", export: "export"},
		{uri: "nbd://example.com/disk", network: "tcp", addr: "example.com:10809", export: "disk"},
		{uri: "nbd+unix:///disk?socket=sock", network: "unix", addr: "sock", export: "disk"},
		{uri: "nbd://example.com/", network: "tcp", addr: "example.com:10809", export: ""},
		{uri: "nbd://example.com", network: "tcp", addr: "example.com:10809", export: ""},
		{uri: "nbd://example.com//disk", network: "tcp", addr: "example.com:10809", export: "/disk"},
		{uri: "nbd://example.com/hello%20world", network: "tcp", addr: "example.com:10809", export: "hello world"},
		{uri: "nbd+unix:///?socket=%00/abstract", network: "unix", addr: "\x00/abstract", export: ""},

		{uri: "nbd://127.0.0.1:2000/disk", network: "tcp", addr: "127.0.0.1:2000", export: "disk"},
		{uri: "nbd://[::1]/disk", network: "tcp", addr: "[::1]:10809", export: "disk"},
		{uri: "nbd://[::1]:2000", network: "tcp", addr: "[::1]:2000", export: ""},
		{uri: "NBD://host/a/b", network: "tcp", addr: "host:10809", export: "a/b"},
		{uri: "nbd+unix:///?socket=/run/idc/disk+1.sock", network: "unix", addr: "/run/idc/disk+1.sock", export: ""},
		{uri: "nbd+unix:///disk?socket=/tmp/a%20b", network: "unix", addr: "/tmp/a b", export: "disk"},
		{uri: "nbd+unix:/disk?socket=/s", network: "unix", addr: "/s", export: "disk"},

		{uri: "nbd:///disk", err: "no host"},
		{uri: "nbd://host:0/disk", err: "port"},
		{uri: "nbd://host:99999/disk", err: "port"},
		{uri: "nbd://host:/disk", err: "empty port"},
		{uri: "nbd://host/disk?socket=/s", err: "socket parameter is for nbd+unix"},
		{uri: "nbd://host/disk?tls-type=x509", err: `"tls-type" is not supported`},
		{uri: "nbd://user@host/disk", err: "user information"},
		{uri: "nbd://host/disk#frag", err: "fragment"},
		{uri: "nbd+unix:///disk", err: "no socket"},
		{uri: "nbd+unix:///disk?socket=", err: "no socket"},
		{uri: "nbd+unix:///disk?socket=/a&socket=/b", err: "more than one socket"},
		{uri: "nbd+unix://host/disk?socket=/s", err: "has no host"},
		{uri: "nbd+unix:///disk?socket=/s&x-debug=1", err: `"x-debug" is not supported`},
		{uri: "nbds://host/disk", err: "TLS"},
		{uri: "nbds+unix:///disk?socket=/s", err: "TLS"},
		{uri: "nbd+vsock://1:10809/disk", err: `scheme "nbd+vsock"`},
		{uri: "http://host/disk", err: `scheme "http"`},
		{uri: "/tmp/sock", err: "no scheme"},
		{uri: "nbd:disk", err: "not of the form"},
		{uri: "nbd://host/a%00b", err: "NUL"},
		{uri: "nbd://host/" + strings.Repeat("x", maxStringLen+1), err: "longer than"},
		{uri: "nbd://host/%zz", err: "invalid URL escape"},
	}
	for _, tt := range tests {
		network, addr, export, err := ParseURI(tt.uri)
		if tt.err != "" {
			if !errors.Is(err, ErrBadURI) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseURI(%q): error %v, want ErrBadURI with %q", tt.uri, err, tt.err)
			}
			continue
		}
		if err != nil || network != tt.network || addr != tt.addr || export != tt.export {
			t.Errorf("ParseURI(%q) = %q, %q, %q, %v; want %q, %q, %q", tt.uri, network, addr, export, err, tt.network, tt.addr, tt.export)
		}
	}
}
