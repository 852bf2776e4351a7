//go:build !linux

package client

import (
	"net"
	"net/netip"

	"github.com/k8stunnel/k8stunnel/firewall"
)

// originalDst needs netfilter; New refuses the transparent mode before any
// connection could get here.
func originalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, firewall.ErrNeedsLinux
}
