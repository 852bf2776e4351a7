package firewall

import (
	"crypto/sha256"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// UDP capture. nat REDIRECT would take UDP too, but then the client could not
// learn a datagram's original destination without a conntrack lookup. TPROXY
// keeps it: the socket that receives the datagram reads it with
// IP_RECVORIGDSTADDR. TPROXY works only in PREROUTING, so the host's own
// datagrams are marked in mangle OUTPUT (chain ChainName), and an ip rule
// sends marked packets to a routing table whose one route says every address
// is local: they come back in through lo, where the chain UDPChainName hands
// them to the client's socket.
const (
	mangleTable = "mangle"
	// udpMarkMask holds the instance's mark: four bits clear of DNSMark and
	// of the bits kube-proxy (0x4000, 0x8000), Tailscale (0xff0000) and
	// WireGuard tools usually use. Values 1 to 15, one per instance.
	udpMarkMask = 0x0f000000
	// udpTableBase+1 to udpTableBase+15 are the routing tables, one per
	// mark value; Cleanup knows ours by mask and number.
	udpTableBase = 27448
)

// udpIndex is the instance's mark value and table, 1 to 15: the one Install
// chose, else one derived from its chain name.
func udpIndex(spec Spec) uint32 {
	if spec.udpIdx != 0 {
		return spec.udpIdx
	}
	sum := sha256.Sum256([]byte(ChainName(spec)))
	return 1 + uint32(sum[0])%15
}

// freeUDPIndex is udpIndex(spec) unless another instance's TPROXY chain
// (K8STUNNEL-*-T in mangle, of either family) uses that mark already; then
// the next one nobody uses. Two instances on one mark would take each
// other's datagrams. A chain it cannot read counts as using nothing.
func freeUDPIndex(tables map[Family]Tables, spec Spec) uint32 {
	used := map[uint32]bool{}
	for _, t := range tables {
		chains, err := t.ListChains(mangleTable)
		if err != nil {
			continue
		}
		for _, chain := range chains {
			if !strings.HasPrefix(chain, ChainPrefix) || !strings.HasSuffix(chain, "-T") || chain == UDPChainName(spec) {
				continue
			}
			lines, err := t.List(mangleTable, chain)
			if err != nil {
				continue
			}
			for _, line := range lines {
				f := strings.Fields(line)
				if i := slices.Index(f, "--mark"); i >= 0 && i+1 < len(f) {
					m, _, _ := strings.Cut(f[i+1], "/")
					if v, err := strconv.ParseUint(m, 0, 32); err == nil {
						used[uint32(v)>>24&0xf] = true
					}
				}
			}
		}
	}
	want := udpIndex(spec)
	for i := range uint32(15) {
		if idx := (want-1+i)%15 + 1; !used[idx] {
			return idx
		}
	}
	return want
}

// UDPMark is the mark, under mask 0x0f000000, that spec's UDP rules put on
// captured datagrams.
func UDPMark(spec Spec) uint32 { return udpIndex(spec) << 24 }

// UDPTable is the routing table of spec's UDP capture.
func UDPTable(spec Spec) uint32 { return udpTableBase + udpIndex(spec) }

// UDPChainName is the mangle chain, jumped to from PREROUTING, whose TPROXY
// rule hands spec's marked datagrams to the client.
func UDPChainName(spec Spec) string { return ChainName(spec) + "-T" }

func hexMark(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }

// markMatch is how `iptables -S` prints a mark with its mask.
func markMatch(mark, mask uint32) string { return hexMark(mark) + "/" + hexMark(mask) }

// planUDP is the mangle chains of one family's UDP capture: ChainName(spec)
// (from OUTPUT) marks the host's own datagrams to the all-ports Include
// targets, UDPChainName(spec) (from PREROUTING) hands them to the client.
// What is never marked, in order: the DNS proxy's own queries (DNSMark) and
// the DNS rules' traffic, which nat REDIRECTs to the proxy after mangle has
// run; excludes; the host's own addresses, broadcast and multicast.
// Port-limited targets stay TCP only, as in the nat chain.
func planUDP(spec Spec, fam Family) []Rule {
	if spec.UDPPort == 0 {
		return nil
	}
	var include []Target
	for _, t := range targetsOf(spec.Include, fam) {
		if t.AllPorts() {
			include = append(include, t)
		}
	}
	if len(include) == 0 {
		return nil
	}
	chain, tchain := ChainName(spec), UDPChainName(spec)
	var rules []Rule
	add := func(chain string, args ...string) {
		rules = append(rules, Rule{Family: fam, Table: mangleTable, Chain: chain, Args: args})
	}
	add(chain, "-m", "mark", "--mark", markMatch(DNSMark, DNSMark), "-j", "RETURN")
	var dns []netip.AddrPort
	for _, r := range spec.DNS {
		r = netip.AddrPortFrom(r.Addr().Unmap().WithZone(""), r.Port())
		if r.Port() == 0 {
			r = netip.AddrPortFrom(r.Addr(), 53)
		}
		if familyOf(r.Addr()) == fam && !slices.Contains(dns, r) {
			dns = append(dns, r)
		}
	}
	for _, r := range dns {
		dst := netip.PrefixFrom(r.Addr(), r.Addr().BitLen()).String()
		add(chain, "-d", dst, "-p", "udp", "-m", "udp", "--dport", strconv.Itoa(int(r.Port())), "-j", "RETURN")
	}
	for _, t := range targetsOf(spec.Exclude, fam) {
		add(chain, append(match(t), "-j", "RETURN")...)
	}
	types := []string{"LOCAL", "BROADCAST", "MULTICAST"}
	if fam == IPv6 {
		types = []string{"LOCAL", "MULTICAST"} // IPv6 has no broadcast
	}
	for _, typ := range types {
		add(chain, "-m", "addrtype", "--dst-type", typ, "-j", "RETURN")
	}
	sortSpecific(include)
	mark := markMatch(UDPMark(spec), udpMarkMask)
	for _, t := range include {
		add(chain, append(match(t), "-p", "udp", "-j", "MARK", "--set-xmark", mark)...)
	}
	onIP := "127.0.0.1"
	if fam == IPv6 {
		onIP = "::1"
	}
	add(tchain, "-p", "udp", "-m", "mark", "--mark", mark,
		"-j", "TPROXY", "--on-port", strconv.Itoa(int(spec.UDPPort)), "--on-ip", onIP, "--tproxy-mark", mark)
	return rules
}

// chainHooks are the built-in chains that jump to chain of table: the nat
// chain's are spec.hooks(), the UDP marking chain is jumped to from OUTPUT,
// the TPROXY chain from PREROUTING.
func chainHooks(spec Spec, table, chain string) []string {
	switch {
	case table == natTable:
		return spec.hooks()
	case chain == UDPChainName(spec):
		return []string{"PREROUTING"}
	}
	return []string{"OUTPUT"}
}
