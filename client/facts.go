package client

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"golang.org/x/net/publicsuffix"

	"github.com/k8stunnel/k8stunnel/tui"
)

// What the helper reports about the node is untrusted input: a broken or
// hostile node must not be able to make the laptop send it traffic or
// queries that are not the cluster's.

// reservedPrefixes are never a cluster's pod or service range.
var reservedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// checkNodeCIDR says why p, found on the node, must not be forwarded, or
// nil. local are the laptop's own addresses with their networks.
func checkNodeCIDR(p netip.Prefix, local []netip.Prefix) error {
	p = p.Masked()
	switch {
	case p.Addr().Is4() && p.Bits() < 8, p.Addr().Is6() && p.Bits() < 32:
		return fmt.Errorf("%v is wider than any cluster range (and would capture the default route)", p)
	}
	for _, r := range reservedPrefixes {
		if r.Overlaps(p) {
			return fmt.Errorf("%v overlaps %v (loopback, link-local, multicast or broadcast)", p, r)
		}
	}
	for _, l := range local {
		if l.Overlaps(p) {
			return fmt.Errorf("%v overlaps this machine's own network %v", p, l.Masked())
		}
	}
	return nil
}

// checkNodeDomain says why a cluster domain found on the node must not be
// used, or nil: a single label or a public suffix would send the laptop's
// queries for the outside world through the tunnel.
func checkNodeDomain(domain string) error {
	d := strings.TrimSuffix(strings.ToLower(domain), ".")
	if !strings.Contains(d, ".") {
		return fmt.Errorf("cluster domain %q is a single label", domain)
	}
	if suffix, _ := publicsuffix.PublicSuffix(d); suffix == d {
		return fmt.Errorf("cluster domain %q is a public suffix", domain)
	}
	return nil
}

// untrustedFact is the error for a fact the node sent that we refuse.
func untrustedFact(err error, hint string) error {
	return &tui.HintError{Err: fmt.Errorf("refusing what the node reported: %w", err), Hint: hint}
}

// localPrefixes are the laptop's addresses with their networks.
func localPrefixes() []netip.Prefix {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var ps []netip.Prefix
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			addr, ok := netip.AddrFromSlice(n.IP)
			if !ok {
				continue
			}
			bits, _ := n.Mask.Size()
			ps = append(ps, netip.PrefixFrom(addr.Unmap(), bits))
		}
	}
	return ps
}

// laptopNets are the networks a CIDR from the node must not overlap.
func (c *Client) laptopNets() []netip.Prefix {
	if c.localNets != nil {
		return c.localNets()
	}
	return localPrefixes()
}
