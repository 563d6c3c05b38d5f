package testenv

import (
	"net"
	"net/url"
	"strings"
	"testing"

	"go.etcd.io/etcd/pkg/v3/proxy"
	"go.uber.org/zap"
)

// Proxy starts an in-process TCP proxy (etcd's own fault-injection proxy)
// in front of the etcd client endpoint target, and returns it with the
// endpoint to dial through it. Blackhole, delay or pause it to cut a
// client off from the store.
func Proxy(t testing.TB, target string) (proxy.Server, string) {
	t.Helper()
	to, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	from := ln.Addr().String()
	ln.Close()
	p := proxy.NewServer(proxy.ServerConfig{
		Logger: zap.NewNop(),
		From:   url.URL{Scheme: "tcp", Host: from},
		To:     url.URL{Scheme: "tcp", Host: strings.TrimPrefix(to.Host, "//")},
	})
	select {
	case <-p.Ready():
	case err := <-p.Error():
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, "http://" + from
}
