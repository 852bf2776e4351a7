package client

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/tui"
)

func TestCheckNodeCIDR(t *testing.T) {
	local := []netip.Prefix{netip.MustParsePrefix("192.168.1.23/24"), netip.MustParsePrefix("2001:db8:1::5/64")}
	for _, tt := range []struct {
		cidr string
		ok   bool
	}{
		{"10.96.0.0/12", true},
		{"10.244.0.0/16", true},
		{"fd00:10:96::/108", true},
		{"0.0.0.0/0", false},
		{"0.0.0.0/1", false},
		{"10.0.0.0/7", false},
		{"::/0", false},
		{"2000::/3", false},
		{"127.0.0.0/16", false},
		{"169.254.0.0/16", false},
		{"224.0.0.0/8", false},
		{"ff02::/16", false},
		{"fe80::/64", false},
		{"192.168.0.0/16", false}, // holds the laptop's LAN
		{"192.168.1.128/25", false},
		{"2001:db8:1::/48", false},
		{"192.168.2.0/24", true},
	} {
		err := checkNodeCIDR(netip.MustParsePrefix(tt.cidr), local)
		if (err == nil) != tt.ok {
			t.Errorf("checkNodeCIDR(%s) = %v, want ok=%v", tt.cidr, err, tt.ok)
		}
	}
}

func TestCheckNodeDomain(t *testing.T) {
	for _, tt := range []struct {
		domain string
		ok     bool
	}{
		{"cluster.local", true},
		{"cluster.local.", true},
		{"k8s.example.com", true},
		{"com", false},
		{"local", false},
		{"co.uk", false},
		{"github.io", false},
		{"COM.", false},
	} {
		if err := checkNodeDomain(tt.domain); (err == nil) != tt.ok {
			t.Errorf("checkNodeDomain(%q) = %v, want ok=%v", tt.domain, err, tt.ok)
		}
	}
}

// A node that reports 0.0.0.0/0 or the laptop's LAN under -N must not get
// the laptop's traffic; what the user named on the command line is theirs.
func TestUseFactsRefusesWideCIDRs(t *testing.T) {
	lan := func() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("192.168.1.23/24")} }
	for _, tt := range []struct {
		name    string
		include []string
		facts   mux.Facts
		refused string
	}{
		{"default route", nil, mux.Facts{PodCIDRs: []string{"10.244.0.0/16"}, ServiceCIDRs: []string{"0.0.0.0/0"}}, "0.0.0.0/0"},
		{"laptop LAN", nil, mux.Facts{PodCIDRs: []string{"192.168.0.0/16"}}, "192.168.0.0/16"},
		{"loopback", nil, mux.Facts{PodCIDRs: []string{"127.0.0.0/8"}}, "127.0.0.0/8"},
		{"named by the user", []string{"192.168.0.0/16"}, mux.Facts{PodCIDRs: []string{"192.168.0.0/16"}}, ""},
		{"cluster ranges", nil, mux.Facts{PodCIDRs: []string{"10.244.0.0/16"}, ServiceCIDRs: []string{"10.96.0.0/12"}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &Client{cfg: Config{AutoCIDRs: true}, log: slog.New(slog.DiscardHandler), localNets: lan}
			for _, s := range tt.include {
				tg, err := firewall.ParseTarget(s)
				if err != nil {
					t.Fatal(err)
				}
				c.cfg.Include = append(c.cfg.Include, tg)
			}
			err := c.useFacts(&tt.facts)
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("useFacts: %v", err)
				}
				return
			}
			var he *tui.HintError
			if !errors.As(err, &he) || !strings.Contains(err.Error(), tt.refused) || he.Hint == "" {
				t.Fatalf("useFacts = %v; want a HintError naming %s", err, tt.refused)
			}
			for _, inc := range c.include {
				if inc.Prefix.String() == tt.refused {
					t.Errorf("%s was added to what is forwarded", tt.refused)
				}
			}
		})
	}
}

func TestDNSFactsRefusePublicDomain(t *testing.T) {
	_, err := dnsWithFacts(dnsproxy.Config{}, &mux.Facts{ClusterDomain: "com", DNS: []string{"10.96.0.10"}})
	var he *tui.HintError
	if !errors.As(err, &he) || !strings.Contains(err.Error(), `"com"`) || !strings.Contains(he.Hint, "--cluster-domain") {
		t.Fatalf("dnsWithFacts with domain com = %v; want a HintError naming it and --cluster-domain", err)
	}
	// What the user passed is not the node's to judge.
	if cfg, err := dnsWithFacts(dnsproxy.Config{ClusterDomain: "corp"}, &mux.Facts{ClusterDomain: "com"}); err != nil || cfg.ClusterDomain != "corp" {
		t.Fatalf("dnsWithFacts with --cluster-domain corp = %+v, %v", cfg, err)
	}
}

// Port 0 means any free port, one for every listen address.
func TestListenAnyPort(t *testing.T) {
	c := &Client{cfg: Config{Listen: []string{"127.0.0.1:0", "127.0.0.2:0"}}, log: slog.New(slog.DiscardHandler)}
	if err := c.listen(); err != nil {
		t.Fatalf("listen on port 0: %v", err)
	}
	defer func() {
		for _, l := range c.listeners {
			l.Close()
		}
	}()
	if c.port == 0 || len(c.listeners) != 2 {
		t.Fatalf("port %d, %d listeners; want a real port on both addresses", c.port, len(c.listeners))
	}
	for _, l := range c.listeners {
		if got := l.Addr().(*net.TCPAddr).Port; got != int(c.port) {
			t.Errorf("listener %v, want port %d", l.Addr(), c.port)
		}
	}
}
