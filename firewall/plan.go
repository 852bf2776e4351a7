package firewall

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Family is an iptables address family: IPv4 rules go through iptables, IPv6
// rules through ip6tables.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// families is the order in which Plan and Firewall visit the families.
var families = [...]Family{IPv4, IPv6}

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "family(" + strconv.Itoa(int(f)) + ")"
}

// Command is the iptables binary for the family.
func (f Family) Command() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

const (
	natTable = "nat"
	// ChainPrefix starts the name of every chain k8stunnel creates, which is
	// how Cleanup finds them without saved state.
	ChainPrefix = "K8STUNNEL-"
)

// hookChains are the built-in nat chains that may jump to ours: OUTPUT
// catches this host's own connections, PREROUTING (gateway mode only) the ones
// it routes for containers and VMs. Removal looks at both.
var hookChains = [...]string{"OUTPUT", "PREROUTING"}

// hooks are the chains that jump to spec's chain.
func (s Spec) hooks() []string {
	if s.Gateway {
		return hookChains[:]
	}
	return hookChains[:1]
}

// ChainName is the chain that holds spec's rules: K8STUNNEL-<port>, and when
// spec says where its listeners are, a hash of those addresses after it
// (K8STUNNEL-12300-1a2b3c4d), so that two instances on one port but different
// addresses (-l 127.0.0.1:P and -l [::1]:P) each keep their own chain.
func ChainName(spec Spec) string {
	name := ChainPrefix + strconv.Itoa(int(spec.Port))
	if len(spec.Listen) == 0 {
		return name
	}
	addrs := make([]string, len(spec.Listen))
	for i, a := range spec.Listen {
		addrs[i] = a.String()
	}
	slices.Sort(addrs)
	sum := sha256.Sum256([]byte(strings.Join(addrs, ",")))
	return name + "-" + hex.EncodeToString(sum[:4])
}

// Spec is everything the firewall needs to know to steer connections into
// k8stunnel. It travels as JSON to the privileged helper.
type Spec struct {
	// Port is the local port REDIRECT sends to; it also names the chain.
	Port uint16 `json:"port"`
	// Include targets are REDIRECTed to Port.
	Include []Target `json:"include,omitempty"`
	// Exclude targets are left alone: the user's -x, plus the SSH server's own
	// addresses, because capturing them would cut the tunnel's own legs.
	Exclude []Target `json:"exclude,omitempty"`
	// DNS resolvers whose UDP and TCP traffic is REDIRECTed to DNSPort,
	// except k8stunnel's own upstream queries, whose sockets carry DNSMark.
	DNS     []netip.AddrPort `json:"dns,omitempty"`
	DNSPort uint16           `json:"dns_port,omitempty"`
	// Listen are the addresses the listeners on Port are bound to; they name
	// the chain (see ChainName).
	Listen []netip.AddrPort `json:"listen,omitempty"`
	// Gateway also captures the connections this host routes (containers,
	// VMs), through PREROUTING. REDIRECT sends those to the address they
	// arrived on, so the listeners must accept on it (0.0.0.0 and [::]).
	Gateway bool `json:"gateway,omitempty"`
	// UDPPort, when set, also captures UDP to the all-ports Include targets
	// of this host's own applications: marked in mangle OUTPUT, routed back
	// in by an ip rule, and handed by TPROXY to the client's transparent
	// socket on 127.0.0.1:UDPPort or [::1]:UDPPort (see udp.go).
	UDPPort uint16 `json:"udp_port,omitempty"`
	// udpIdx, when set, is the UDP mark and table index Install chose
	// because the one udpIndex derives was another instance's.
	udpIdx uint32
}

// Validate reports the first thing in s that cannot become rules.
func (s Spec) Validate() error {
	if s.Port == 0 {
		return fmt.Errorf("firewall spec has no port")
	}
	if len(s.Include) == 0 && len(s.DNS) == 0 {
		return fmt.Errorf("firewall spec has nothing to redirect")
	}
	for _, t := range slices.Concat(s.Include, s.Exclude) {
		if err := t.validate(); err != nil {
			return err
		}
	}
	for _, r := range s.DNS {
		if !r.Addr().IsValid() {
			return fmt.Errorf("firewall spec has an invalid DNS resolver")
		}
	}
	for _, a := range s.Listen {
		if !a.Addr().IsValid() || a.Port() != s.Port {
			return fmt.Errorf("firewall spec has listen address %v, not on port %d", a, s.Port)
		}
	}
	if len(s.DNS) > 0 && s.DNSPort == 0 {
		return fmt.Errorf("firewall spec has DNS resolvers but no DNS port")
	}
	return nil
}

// Rule is one rule appended to a chain.
type Rule struct {
	Family       Family
	Table, Chain string
	Args         []string
}

// String is the command that would append the rule, e.g.
// "ip6tables -t nat -A K8STUNNEL-12300 -d fd00::/8 -p tcp -j REDIRECT --to-ports 12300".
func (r Rule) String() string {
	return r.Family.Command() + " -t " + r.Table + " -A " + r.Chain + " " + strings.Join(r.Args, " ")
}

// Plan turns spec into the ordered rules of chain ChainName(spec), IPv4
// first, then IPv6. A family gets rules only when it has something to
// redirect (an Include target or a DNS resolver); its excludes alone would be
// pointless. Each rule is spelled the way `iptables -S` prints it back, so
// what Fake records reads like the real table.
//
// The order matters, as in sshuttle's nat method:
//  1. k8stunnel's own upstream DNS queries (marked DNSMark) return first;
//  2. DNS to the resolvers is redirected before anything can return it, since
//     resolvers are often local (127.0.0.53);
//  3. excludes return;
//  4. local destinations return, so the host's own services stay reachable;
//  5. includes redirect, most specific first.
//
// With UDPPort, each family that has all-ports Include targets also gets the
// mangle chains of planUDP, after its nat chain.
func Plan(spec Spec) []Rule {
	var rules []Rule
	for _, fam := range families {
		rules = append(rules, planFamily(spec, fam)...)
		rules = append(rules, planUDP(spec, fam)...)
	}
	return rules
}

func planFamily(spec Spec, fam Family) []Rule {
	include := targetsOf(spec.Include, fam)
	var dns []netip.AddrPort
	for _, r := range spec.DNS {
		r = netip.AddrPortFrom(r.Addr().Unmap().WithZone(""), r.Port())
		if familyOf(r.Addr()) == fam && !slices.Contains(dns, r) {
			dns = append(dns, r)
		}
	}
	if len(include) == 0 && len(dns) == 0 {
		return nil
	}

	chain := ChainName(spec)
	var rules []Rule
	add := func(args ...string) {
		rules = append(rules, Rule{Family: fam, Table: natTable, Chain: chain, Args: args})
	}

	if len(dns) > 0 {
		mark := "0x" + strconv.FormatUint(DNSMark, 16)
		add("-m", "mark", "--mark", mark+"/"+mark, "-j", "RETURN")
	}
	for _, r := range dns {
		port := r.Port()
		if port == 0 {
			port = 53
		}
		dst := netip.PrefixFrom(r.Addr(), r.Addr().BitLen()).String()
		for _, proto := range []string{"udp", "tcp"} {
			add("-d", dst, "-p", proto, "-m", proto, "--dport", strconv.Itoa(int(port)),
				"-j", "REDIRECT", "--to-ports", strconv.Itoa(int(spec.DNSPort)))
		}
	}
	for _, t := range targetsOf(spec.Exclude, fam) {
		add(append(match(t), "-j", "RETURN")...)
	}
	add("-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN")

	sortSpecific(include)
	for _, t := range include {
		args := match(t)
		if t.AllPorts() {
			// An all-ports exclude returns every protocol, but only TCP is
			// ever redirected.
			args = append(args, "-p", "tcp")
		}
		add(append(args, "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(spec.Port)))...)
	}
	return rules
}

// sortSpecific sorts longer prefixes first, and at equal length a
// port-limited target before an all-ports one, so the first matching rule is
// the most specific.
func sortSpecific(ts []Target) {
	slices.SortStableFunc(ts, func(a, b Target) int {
		if c := cmp.Compare(b.Prefix.Bits(), a.Prefix.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(boolRank(!a.AllPorts()), boolRank(!b.AllPorts()))
	})
}

// boolRank orders true before false.
func boolRank(b bool) int {
	if b {
		return 0
	}
	return 1
}

// targetsOf returns the targets of one family without duplicates, in order.
func targetsOf(ts []Target, fam Family) []Target {
	var out []Target
	for _, t := range ts {
		if t.family() == fam && !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// match is the destination part of a rule. A port range implies TCP, the only
// protocol k8stunnel forwards. "-d" is left out for /0, as iptables -S does.
func match(t Target) []string {
	var args []string
	if t.Prefix.Bits() != 0 {
		args = append(args, "-d", t.Prefix.String())
	}
	if !t.AllPorts() {
		ports := strconv.Itoa(int(t.FirstPort))
		if t.LastPort != t.FirstPort {
			ports += ":" + strconv.Itoa(int(t.LastPort))
		}
		args = append(args, "-p", "tcp", "-m", "tcp", "--dport", ports)
	}
	return args
}
