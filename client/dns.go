package client

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/tui"
)

// startDNS makes the DNS proxy once the helper has said what it found on the
// node; it is created here, not earlier, so it reads the laptop's resolvers
// as they are when the tunnel starts. fw marks the sockets of its queries to
// the laptop's resolvers, so the DNS rules do not capture them again.
func (c *Client) startDNS(facts *mux.Facts, fw Firewall) (*dnsproxy.Proxy, error) {
	cfg, err := dnsWithFacts(*c.cfg.DNS, facts)
	if err != nil {
		return nil, err
	}
	cfg.Dial = c.dialDNS
	cfg.MarkSocket = fw.MarkSocket
	p, err := dnsproxy.New(cfg)
	if err != nil {
		return nil, withHint(err)
	}
	return p, nil
}

// withHint turns an error that carries a hint (dnsproxy's) into a HintError,
// which the CLI prints.
func withHint(err error) error {
	var h interface{ Hint() string }
	if errors.As(err, &h) {
		return &tui.HintError{Err: err, Hint: h.Hint()}
	}
	return err
}

// dnsWithFacts returns cfg with what the user left unset filled in from what
// the helper found on the node: cluster DNS IP and domain, and node resolvers.
func dnsWithFacts(cfg dnsproxy.Config, f *mux.Facts) (dnsproxy.Config, error) {
	if f == nil {
		return cfg, nil
	}
	if cfg.ClusterDomain == "" && f.ClusterDomain != "" {
		if err := checkNodeDomain(f.ClusterDomain); err != nil {
			return cfg, untrustedFact(err, "pass the cluster's domain with --cluster-domain (usually cluster.local)")
		}
		cfg.ClusterDomain = f.ClusterDomain
	}
	if !cfg.ClusterDNS.IsValid() {
		if addrs := parseAddrs(f.DNS); len(addrs) > 0 {
			cfg.ClusterDNS = addrs[0]
		}
	}
	if len(cfg.NodeDNS) == 0 {
		cfg.NodeDNS = parseAddrs(f.NodeDNS)
	}
	return cfg, nil
}

func parseAddrs(ss []string) []netip.Addr {
	var addrs []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			addrs = append(addrs, a.Unmap())
		}
	}
	return addrs
}

// dialDNS opens a stream for the DNS proxy: the helper dials dst from the node.
func (c *Client) dialDNS(_ context.Context, dst netip.AddrPort) (net.Conn, error) {
	sess, _ := c.session()
	if sess == nil {
		return nil, errors.New("tunnel is down")
	}
	return sess.Dial(dst)
}
