package firewall

import (
	"net/netip"
	"strings"
	"testing"
)

func targets(t testing.TB, ss ...string) []Target {
	var out []Target
	for _, s := range ss {
		out = append(out, mustTarget(t, s))
	}
	return out
}

func planText(rules []Rule) string {
	var b strings.Builder
	for _, r := range rules {
		b.WriteString(r.String() + "\n")
	}
	return b.String()
}

func TestPlan(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec Spec
		want string
	}{
		{
			name: "ipv4 only",
			spec: Spec{Port: 12300, Include: targets(t, "10.96.0.0/12", "10.244.0.0/16")},
			want: `
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.244.0.0/16 -p tcp -j REDIRECT --to-ports 12300
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.0/12 -p tcp -j REDIRECT --to-ports 12300
`,
		},
		{
			name: "mixed families, each gets only its own targets",
			spec: Spec{
				Port:    12300,
				Include: targets(t, "fd00::/8", "10.96.0.0/12"),
				Exclude: targets(t, "192.168.33.10", "fd00::10", "2001:db8::1"),
			},
			want: `
iptables -t nat -A K8STUNNEL-12300 -d 192.168.33.10/32 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.0/12 -p tcp -j REDIRECT --to-ports 12300
ip6tables -t nat -A K8STUNNEL-12300 -d fd00::10/128 -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -d 2001:db8::1/128 -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -d fd00::/8 -p tcp -j REDIRECT --to-ports 12300
`,
		},
		{
			name: "a family with only excludes gets no chain",
			spec: Spec{Port: 1, Include: targets(t, "10.0.0.0/8"), Exclude: targets(t, "fd00::1")},
			want: `
iptables -t nat -A K8STUNNEL-1 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-1 -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 1
`,
		},
		{
			name: "ports",
			spec: Spec{
				Port:    12300,
				Include: targets(t, "10.0.0.0/8:8000-9000", "[fd00::1]:80-90", "10.0.0.1:443"),
				Exclude: targets(t, "10.0.0.0/8:22", "10.0.0.0/8:100-200"),
			},
			want: `
iptables -t nat -A K8STUNNEL-12300 -d 10.0.0.0/8 -p tcp -m tcp --dport 22 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.0.0.0/8 -p tcp -m tcp --dport 100:200 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.0.0.1/32 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 12300
iptables -t nat -A K8STUNNEL-12300 -d 10.0.0.0/8 -p tcp -m tcp --dport 8000:9000 -j REDIRECT --to-ports 12300
ip6tables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -d fd00::1/128 -p tcp -m tcp --dport 80:90 -j REDIRECT --to-ports 12300
`,
		},
		{
			name: "0/0 and ::/0 need no -d",
			spec: Spec{Port: 12300, Include: targets(t, "0/0", "::/0"), Exclude: targets(t, "0/0:22")},
			want: `
iptables -t nat -A K8STUNNEL-12300 -p tcp -m tcp --dport 22 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -p tcp -j REDIRECT --to-ports 12300
ip6tables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -p tcp -j REDIRECT --to-ports 12300
`,
		},
		{
			name: "most specific first, ports before all-ports, duplicates once",
			spec: Spec{Port: 9, Include: targets(t,
				"0/0", "10.0.0.0/8", "10.96.0.0/12", "10.96.0.10", "10.0.0.0/8:80", "10.96.0.0/12", "10.1.0.0/16", "10.0.0.0/8:53")},
			want: `
iptables -t nat -A K8STUNNEL-9 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-9 -d 10.96.0.10/32 -p tcp -j REDIRECT --to-ports 9
iptables -t nat -A K8STUNNEL-9 -d 10.1.0.0/16 -p tcp -j REDIRECT --to-ports 9
iptables -t nat -A K8STUNNEL-9 -d 10.96.0.0/12 -p tcp -j REDIRECT --to-ports 9
iptables -t nat -A K8STUNNEL-9 -d 10.0.0.0/8 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9
iptables -t nat -A K8STUNNEL-9 -d 10.0.0.0/8 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 9
iptables -t nat -A K8STUNNEL-9 -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 9
iptables -t nat -A K8STUNNEL-9 -p tcp -j REDIRECT --to-ports 9
`,
		},
		{
			name: "dns before excludes and local, marked queries first",
			spec: Spec{
				Port:    12300,
				Include: targets(t, "10.96.0.0/12"),
				Exclude: targets(t, "127.0.0.0/8"),
				DNS:     []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("[::1]:53")},
				DNSPort: 5300,
			},
			want: `
iptables -t nat -A K8STUNNEL-12300 -m mark --mark 0x10000000/0x10000000 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 5300
iptables -t nat -A K8STUNNEL-12300 -d 127.0.0.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 5300
iptables -t nat -A K8STUNNEL-12300 -d 127.0.0.0/8 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.0/12 -p tcp -j REDIRECT --to-ports 12300
ip6tables -t nat -A K8STUNNEL-12300 -m mark --mark 0x10000000/0x10000000 -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -d ::1/128 -p udp -m udp --dport 53 -j REDIRECT --to-ports 5300
ip6tables -t nat -A K8STUNNEL-12300 -d ::1/128 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 5300
ip6tables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
`,
		},
		{
			name: "dns only, resolver on a mapped address and an unusual port",
			spec: Spec{Port: 7, DNS: []netip.AddrPort{netip.MustParseAddrPort("[::ffff:10.0.0.2]:5353")}, DNSPort: 8},
			want: `
iptables -t nat -A K8STUNNEL-7 -m mark --mark 0x10000000/0x10000000 -j RETURN
iptables -t nat -A K8STUNNEL-7 -d 10.0.0.2/32 -p udp -m udp --dport 5353 -j REDIRECT --to-ports 8
iptables -t nat -A K8STUNNEL-7 -d 10.0.0.2/32 -p tcp -m tcp --dport 5353 -j REDIRECT --to-ports 8
iptables -t nat -A K8STUNNEL-7 -m addrtype --dst-type LOCAL -j RETURN
`,
		},
		{
			name: "udp: mangle chains for all-ports targets, dns and local never marked",
			spec: Spec{
				Port:    12300,
				UDPPort: 12301,
				Include: targets(t, "10.96.0.0/12", "10.244.0.0/16", "10.0.0.1:80", "fd00::/8"),
				Exclude: targets(t, "10.96.0.1"),
				DNS:     []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53")},
				DNSPort: 5300,
			},
			want: `
iptables -t nat -A K8STUNNEL-12300 -m mark --mark 0x10000000/0x10000000 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 5300
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 5300
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.1/32 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 12300
iptables -t nat -A K8STUNNEL-12300 -d 10.244.0.0/16 -p tcp -j REDIRECT --to-ports 12300
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.0/12 -p tcp -j REDIRECT --to-ports 12300
iptables -t mangle -A K8STUNNEL-12300 -m mark --mark 0x10000000/0x10000000 -j RETURN
iptables -t mangle -A K8STUNNEL-12300 -d 10.96.0.10/32 -p udp -m udp --dport 53 -j RETURN
iptables -t mangle -A K8STUNNEL-12300 -d 10.96.0.1/32 -j RETURN
iptables -t mangle -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t mangle -A K8STUNNEL-12300 -m addrtype --dst-type BROADCAST -j RETURN
iptables -t mangle -A K8STUNNEL-12300 -m addrtype --dst-type MULTICAST -j RETURN
iptables -t mangle -A K8STUNNEL-12300 -d 10.244.0.0/16 -p udp -j MARK --set-xmark @M
iptables -t mangle -A K8STUNNEL-12300 -d 10.96.0.0/12 -p udp -j MARK --set-xmark @M
iptables -t mangle -A K8STUNNEL-12300-T -p udp -m mark --mark @M -j TPROXY --on-port 12301 --on-ip 127.0.0.1 --tproxy-mark @M
ip6tables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -d fd00::/8 -p tcp -j REDIRECT --to-ports 12300
ip6tables -t mangle -A K8STUNNEL-12300 -m mark --mark 0x10000000/0x10000000 -j RETURN
ip6tables -t mangle -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t mangle -A K8STUNNEL-12300 -m addrtype --dst-type MULTICAST -j RETURN
ip6tables -t mangle -A K8STUNNEL-12300 -d fd00::/8 -p udp -j MARK --set-xmark @M
ip6tables -t mangle -A K8STUNNEL-12300-T -p udp -m mark --mark @M -j TPROXY --on-port 12301 --on-ip ::1 --tproxy-mark @M
`,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.spec.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got := planText(Plan(tt.spec))
			want := strings.TrimPrefix(tt.want, "\n")
			want = strings.ReplaceAll(want, "@M", markMatch(UDPMark(tt.spec), udpMarkMask))
			if got != want {
				t.Errorf("Plan =\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func TestSpecValidate(t *testing.T) {
	ok := targets(t, "10.0.0.0/8")
	for _, tt := range []struct {
		name string
		spec Spec
	}{
		{"no port", Spec{Include: ok}},
		{"nothing to redirect", Spec{Port: 1, Exclude: ok}},
		{"unmasked", Spec{Port: 1, Include: []Target{{Prefix: netip.MustParsePrefix("10.1.0.0/8")}}}},
		{"no prefix", Spec{Port: 1, Include: []Target{{}}}},
		{"bad ports", Spec{Port: 1, Include: []Target{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), FirstPort: 9, LastPort: 8}}}},
		{"dns without port", Spec{Port: 1, DNS: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")}}},
	} {
		if err := tt.spec.Validate(); err == nil {
			t.Errorf("%s: Validate succeeded, want error", tt.name)
		}
	}
}
