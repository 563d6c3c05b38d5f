package nbd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// DefaultPort is the NBD port assigned by IANA, used when an nbd:// URI
// names no port.
const DefaultPort = 10809

// ErrBadURI reports an NBD URI that ParseURI cannot use.
var ErrBadURI = errors.New("nbd: bad NBD URI")

// ParseURI parses an NBD URI, as in "The NBD Uniform Resource Indicator
// (URI) format" (doc/uri.md of the NetworkBlockDevice/nbd project), into
// the network and address to dial and the export name. Two forms are
// accepted:
//
//	nbd://HOST[:PORT]/EXPORT            network "tcp", addr "HOST:PORT" (port 10809 by default)
//	nbd+unix:///EXPORT?socket=PATH      network "unix", addr PATH
//
// The export name is the URI's path without its leading "/", percent
// decoded; it may be empty (nbd://HOST and nbd://HOST/ name the default
// export). An IPv6 host is written in brackets: nbd://[::1]:10809/disk.
//
// Errors wrap ErrBadURI. They are given for the TLS schemes (nbds,
// nbds+unix) and any other scheme, an nbd:// URI without a host or with a
// socket parameter, an nbd+unix URI with a host or without a socket
// parameter, user information, a fragment, and any query parameter other
// than socket: the URI specification asks clients to diagnose parameters
// they do not understand, and this client understands no TLS parameter.
func ParseURI(uri string) (network, addr, export string, err error) {
	bad := func(format string, args ...any) (string, string, string, error) {
		return "", "", "", fmt.Errorf("%w %q: %s", ErrBadURI, uri, fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(uri)
	if err != nil {
		return bad("%v", err)
	}
	if u.Opaque != "" {
		return bad("not of the form SCHEME://AUTHORITY/EXPORT")
	}
	if u.User != nil {
		return bad("user information is for TLS, which this client does not support")
	}
	if u.Fragment != "" || strings.HasSuffix(uri, "#") {
		return bad("a fragment has no meaning in an NBD URI")
	}
	// The query is decoded as RFC 3986 says, without url.ParseQuery's
	// form rule that makes "+" a space: socket paths may contain "+".
	sock, hasSocket := "", false
	if u.RawQuery != "" || u.ForceQuery {
		for kv := range strings.SplitSeq(u.RawQuery, "&") {
			k, v, _ := strings.Cut(kv, "=")
			if k, err = url.PathUnescape(k); err != nil {
				return bad("query: %v", err)
			}
			if k != "socket" {
				return bad("query parameter %q is not supported", k)
			}
			if hasSocket {
				return bad("more than one socket parameter")
			}
			if sock, err = url.PathUnescape(v); err != nil {
				return bad("socket parameter: %v", err)
			}
			hasSocket = true
		}
	}
	export = strings.TrimPrefix(u.Path, "/")
	if len(export) > maxStringLen || strings.IndexByte(export, 0) >= 0 {
		return bad("export name longer than %d bytes or with a NUL byte", maxStringLen)
	}
	switch strings.ToLower(u.Scheme) {
	case "nbd":
		if hasSocket {
			return bad("the socket parameter is for nbd+unix URIs")
		}
		host := u.Hostname()
		if host == "" {
			return bad("no host")
		}
		port := u.Port()
		if port == "" {
			if strings.HasSuffix(u.Host, ":") {
				return bad("empty port")
			}
			port = strconv.Itoa(DefaultPort)
		} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return bad("port %q is not a number from 1 to 65535", port)
		}
		return "tcp", net.JoinHostPort(host, port), export, nil
	case "nbd+unix":
		if u.Host != "" {
			return bad("an nbd+unix URI has no host (write nbd+unix:///EXPORT?socket=PATH)")
		}
		if sock == "" {
			return bad("no socket parameter")
		}
		return "unix", sock, export, nil
	case "nbds", "nbds+unix":
		return bad("TLS is not supported")
	case "":
		return bad("no scheme")
	}
	return bad("scheme %q is not nbd or nbd+unix", u.Scheme)
}
