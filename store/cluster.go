package store

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/idc-dev/idc/proto"
)

// Peer is one member of an etcd cluster as the others reach it: its name
// and its peer URL (raft traffic).
type Peer struct {
	// Name is the member's name, unique in the cluster (etcd's --name).
	Name string
	// URL is where the other members reach it: http(s)://host:port, a
	// fixed port on an address they can dial.
	URL string
}

// ClusterState says whether a member bootstraps a new cluster or joins a
// running one (etcd's --initial-cluster-state).
type ClusterState string

// Cluster states.
const (
	// ClusterNew: the members of EmbedConfig.Cluster start together and
	// form a new cluster once a majority of them is up.
	ClusterNew ClusterState = "new"
	// ClusterExisting: the member joins a running cluster that already
	// lists it (added with `etcdctl member add NAME --peer-urls URL`
	// before it starts).
	ClusterExisting ClusterState = "existing"
)

// ParseCluster parses an initial cluster as etcd's --initial-cluster
// gives it: name=peerURL pairs separated by commas, as in
// "s1=http://10.0.0.1:2380,s2=http://10.0.0.2:2380,s3=http://10.0.0.3:2380".
// Each name appears once, with one URL. Errors wrap proto.ErrConfig; the
// URLs are checked by EmbedConfig.Validate.
func ParseCluster(s string) ([]Peer, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: cluster %q is empty: want name=peerURL,name=peerURL,...", proto.ErrConfig, s)
	}
	var out []Peer
	for _, part := range strings.Split(s, ",") {
		name, u, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" || u == "" {
			return nil, fmt.Errorf("%w: cluster %q: %q is not name=peerURL", proto.ErrConfig, s, part)
		}
		out = append(out, Peer{Name: name, URL: u})
	}
	return out, nil
}

// FormatCluster gives peers in ParseCluster's form (and etcd's).
func FormatCluster(peers []Peer) string {
	parts := make([]string, len(peers))
	for i, p := range peers {
		parts[i] = p.Name + "=" + p.URL
	}
	return strings.Join(parts, ",")
}

// checkPeerURL checks that s is a URL other hosts can dial: http or
// https, a host that is not the unspecified address, a fixed port.
func checkPeerURL(what, s string) (url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return url.URL{}, fmt.Errorf("%s %q: %v", what, s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return url.URL{}, fmt.Errorf("%s %q: scheme %q (want http or https)", what, s, u.Scheme)
	}
	if u.Hostname() == "" || u.Port() == "" || u.Port() == "0" {
		return url.URL{}, fmt.Errorf("%s %q: want %s://host:port with a fixed port (the other members dial it)", what, s, u.Scheme)
	}
	if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsUnspecified() {
		return url.URL{}, fmt.Errorf("%s %q: %s is no address anyone can dial (listen there, advertise a real one)", what, s, u.Hostname())
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return url.URL{}, fmt.Errorf("%s %q: want %s://host:port, nothing more", what, s, u.Scheme)
	}
	u.Path = ""
	return *u, nil
}

// validateCluster checks c's cluster fields and returns this member's
// advertised peer URL. c has its defaults (Name) set.
func (c *EmbedConfig) validateCluster() (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: %w: "+format, append([]any{ErrEmbed, proto.ErrConfig}, args...)...)
	}
	switch c.ClusterState {
	case "", ClusterNew, ClusterExisting:
	default:
		return bad("cluster state %q: want %q or %q", c.ClusterState, ClusterNew, ClusterExisting)
	}
	if len(c.Cluster) == 0 {
		if c.ClusterState == ClusterExisting {
			return bad("cluster state %q needs the cluster's members", ClusterExisting)
		}
		if c.ClusterToken != "" {
			return bad("a cluster token needs the cluster's members")
		}
		return c.AdvertisePeerURL, nil
	}
	var own string
	names := map[string]bool{}
	urls := map[string]string{}
	for _, p := range c.Cluster {
		if p.Name == "" || strings.ContainsAny(p.Name, "=,") || strings.TrimSpace(p.Name) != p.Name {
			return bad("cluster member name %q: want a non-empty name without '=', ',' or surrounding spaces", p.Name)
		}
		if names[p.Name] {
			return bad("cluster member %q is given twice (one peer URL per member)", p.Name)
		}
		names[p.Name] = true
		u, err := checkPeerURL("cluster member "+p.Name+"'s peer URL", p.URL)
		if err != nil {
			return bad("%v", err)
		}
		if other, ok := urls[u.Host]; ok {
			return bad("cluster members %q and %q share the peer address %s", other, p.Name, u.Host)
		}
		urls[u.Host] = p.Name
		if p.Name == c.Name {
			own = u.String()
		}
	}
	if own == "" {
		return bad("this member's name %q is not in the cluster %s", c.Name, FormatCluster(c.Cluster))
	}
	if c.AdvertisePeerURL != "" {
		u, err := checkPeerURL("advertised peer URL", c.AdvertisePeerURL)
		if err != nil {
			return bad("%v", err)
		}
		if u.String() != own {
			return bad("advertised peer URL %s is not %s's URL in the cluster, %s", u.String(), c.Name, own)
		}
	}
	if c.ClientURL != "" {
		u, err := url.Parse(c.ClientURL)
		if err == nil && u.Port() == "0" && c.AdvertiseClientURL == "" {
			return bad("client URL %s: a cluster member's clients need a fixed port (or an advertised client URL)", c.ClientURL)
		}
	}
	return own, nil
}
