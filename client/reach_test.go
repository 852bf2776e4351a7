package client

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/k8stunnel/k8stunnel/firewall"
)

// A link through a ProxyCommand has no address of its own to exempt.
func TestSpecWithoutServer(t *testing.T) {
	c := &Client{port: 12345, include: []firewall.Target{prefix("10.96.0.0/12")},
		cfg: Config{Exclude: []firewall.Target{prefix("10.96.0.1/32")}}}
	s := c.spec(netip.Addr{})
	if want := []firewall.Target{prefix("10.96.0.1/32")}; !slices.Equal(s.Exclude, want) {
		t.Errorf("Exclude %v, want %v", s.Exclude, want)
	}
}
