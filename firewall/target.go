package firewall

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Target is a CIDR with an optional port range, parsed from the command line.
// FirstPort and LastPort are both 0 for all ports.
type Target struct {
	Prefix              netip.Prefix
	FirstPort, LastPort uint16
}

// ParseTarget parses the command-line form of a Target:
//
//	10.96.0.0/12  10.0.0.1  0/0  ::/0  fd00::/8
//	10.0.0.0/8:80  10.0.0.0/8:8000-9000  [fd00::/8]:443  [fd00::1]:80-90
//
// A bare address is a /32 or /128, "0/0" is 0.0.0.0/0 as in sshuttle, and the
// prefix is masked. An IPv6 target with ports needs brackets, because the
// port separator is also part of the address.
func ParseTarget(s string) (Target, error) {
	t, err := parseTarget(s)
	if err != nil {
		return Target{}, fmt.Errorf("bad CIDR %q: %w", s, err)
	}
	return t, nil
}

func parseTarget(s string) (Target, error) {
	host, ports, bracketed, err := splitTarget(s)
	if err != nil {
		return Target{}, err
	}
	prefix, err := parsePrefix(host)
	if err != nil {
		return Target{}, err
	}
	if bracketed && !prefix.Addr().Is6() {
		return Target{}, fmt.Errorf("brackets are only for IPv6 addresses")
	}
	t := Target{Prefix: prefix}
	if ports != "" {
		if t.FirstPort, t.LastPort, err = parsePorts(ports); err != nil {
			return Target{}, err
		}
	}
	return t, nil
}

// splitTarget separates the address part from the port part.
func splitTarget(s string) (host, ports string, bracketed bool, err error) {
	if rest, ok := strings.CutPrefix(s, "["); ok {
		host, rest, ok = strings.Cut(rest, "]")
		if !ok {
			return "", "", false, fmt.Errorf("missing ']'")
		}
		if rest == "" {
			return host, "", true, nil
		}
		ports, ok = strings.CutPrefix(rest, ":")
		if !ok || ports == "" {
			return "", "", false, fmt.Errorf("want ':port' or ':first-last' after ']'")
		}
		return host, ports, true, nil
	}
	// Exactly one colon can only be an IPv4 target with ports: every IPv6
	// address has at least two.
	if strings.Count(s, ":") == 1 {
		host, ports, _ = strings.Cut(s, ":")
		if ports == "" {
			return "", "", false, fmt.Errorf("empty port after ':'")
		}
		return host, ports, false, nil
	}
	return s, "", false, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if s == "0/0" {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0), nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("an address with a zone (%%%s) cannot be a target", a.Zone())
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePorts(s string) (first, last uint16, err error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if first, err = parsePort(lo); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return first, first, nil
	}
	if last, err = parsePort(hi); err != nil {
		return 0, 0, err
	}
	if first > last {
		return 0, 0, fmt.Errorf("port range %d-%d is backwards", first, last)
	}
	return first, last, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad port %q: want 1-65535", s)
	}
	return uint16(n), nil
}

// AllPorts reports whether t covers every port.
func (t Target) AllPorts() bool { return t.FirstPort == 0 && t.LastPort == 0 }

// String returns the form ParseTarget reads back to the same Target.
func (t Target) String() string {
	if t.AllPorts() {
		return t.Prefix.String()
	}
	ports := strconv.Itoa(int(t.FirstPort))
	if t.LastPort != t.FirstPort {
		ports += "-" + strconv.Itoa(int(t.LastPort))
	}
	if t.Prefix.Addr().Is6() {
		return "[" + t.Prefix.String() + "]:" + ports
	}
	return t.Prefix.String() + ":" + ports
}

// MarshalText lets a Spec travel as JSON to the privileged helper.
func (t Target) MarshalText() ([]byte, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	return []byte(t.String()), nil
}

// UnmarshalText is the inverse of MarshalText.
func (t *Target) UnmarshalText(b []byte) error {
	parsed, err := ParseTarget(string(b))
	if err != nil {
		return err
	}
	*t = parsed
	return nil
}

// validate catches Targets built in code rather than parsed.
func (t Target) validate() error {
	switch {
	case !t.Prefix.IsValid():
		return fmt.Errorf("target has no prefix")
	case t.Prefix != t.Prefix.Masked():
		return fmt.Errorf("target %s has host bits set; want %s", t.Prefix, t.Prefix.Masked())
	case t.AllPorts():
		return nil
	case t.FirstPort == 0 || t.FirstPort > t.LastPort:
		return fmt.Errorf("target %s has bad port range %d-%d", t.Prefix, t.FirstPort, t.LastPort)
	}
	return nil
}

// family is the iptables family whose rules can match t.
func (t Target) family() Family { return familyOf(t.Prefix.Addr()) }
