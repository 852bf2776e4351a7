package dnsproxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/miekg/dns"
)

// ResolvConfPath is where the laptop's resolvers are listed.
const ResolvConfPath = "/etc/resolv.conf"

// ReadResolvConf returns the nameservers and search domains of a
// resolv.conf(5) file. The nameservers are what the firewall captures and
// where the DNS proxy sends the queries that are not the cluster's. Entries
// that are not IP addresses are skipped, as libc does. A file without any
// nameserver means 127.0.0.1, again as libc does.
func ReadResolvConf(path string) (nameservers []netip.AddrPort, search []string, err error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the laptop's resolvers: %w", err)
	}
	port, err := strconv.ParseUint(cc.Port, 10, 16)
	if err != nil || port == 0 {
		port = 53
	}
	for _, s := range cc.Servers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		ap := netip.AddrPortFrom(a.Unmap(), uint16(port))
		if !slices.Contains(nameservers, ap) {
			nameservers = append(nameservers, ap)
		}
	}
	if len(nameservers) == 0 {
		nameservers = []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 53)}
	}
	return nameservers, cc.Search, nil
}
