package firewall

import (
	"fmt"

	"github.com/coreos/go-iptables/iptables"
)

// lockTimeout bounds the wait for the xtables lock: go-iptables' default of
// 0 waits forever behind whatever else holds it.
const lockTimeout = 5 // seconds

// NewTables returns go-iptables for one family, after checking that its nat
// table can be listed.
func NewTables(fam Family) (Tables, error) {
	proto := iptables.ProtocolIPv4
	if fam == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(lockTimeout))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFamilyUnavailable, fam.Command(), err)
	}
	if _, err := ipt.ListChains(natTable); err != nil {
		return nil, fmt.Errorf("%w: %s -t nat: %w", ErrFamilyUnavailable, fam.Command(), err)
	}
	return ipt, nil
}
