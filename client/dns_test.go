package client

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/mux"
)

func TestDNSWithFacts(t *testing.T) {
	f := &mux.Facts{DNS: []string{"bogus", "10.43.0.10"}, ClusterDomain: "k3s.local", NodeDNS: []string{"192.168.1.1", "::1"}}
	got := dnsWithFacts(dnsproxy.Config{}, f)
	if got.ClusterDNS != netip.MustParseAddr("10.43.0.10") || got.ClusterDomain != "k3s.local" ||
		!slices.Equal(got.NodeDNS, []netip.Addr{netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("::1")}) {
		t.Errorf("dnsWithFacts filled %+v", got)
	}
	given := dnsproxy.Config{ClusterDNS: netip.MustParseAddr("10.96.0.53"), ClusterDomain: "cluster.local",
		NodeDNS: []netip.Addr{netip.MustParseAddr("10.200.0.1")}}
	if got := dnsWithFacts(given, f); got.ClusterDNS != given.ClusterDNS || got.ClusterDomain != given.ClusterDomain ||
		!slices.Equal(got.NodeDNS, given.NodeDNS) {
		t.Errorf("dnsWithFacts overrode what the user gave: %+v", got)
	}
	if got := dnsWithFacts(given, nil); got.ClusterDNS != given.ClusterDNS {
		t.Errorf("dnsWithFacts(nil) changed the config: %+v", got)
	}
}

// The CLI prints the hint of a HintError only: dnsproxy's hint must reach it.
func TestStartDNSHint(t *testing.T) {
	c := &Client{cfg: Config{DNS: &dnsproxy.Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}}}}
	p, err := c.startDNS(nil)
	if err == nil {
		p.Close()
		t.Fatal("no error without a cluster DNS IP")
	}
	var he *HintError
	if !errors.As(err, &he) || he.Hint == "" || !errors.Is(err, dnsproxy.ErrNoClusterDNS) {
		t.Errorf("err %v (%T), want a HintError with a hint wrapping ErrNoClusterDNS", err, err)
	}
	if plain := errors.New("x"); withHint(plain) != plain {
		t.Error("withHint changed an error without a hint")
	}
}
