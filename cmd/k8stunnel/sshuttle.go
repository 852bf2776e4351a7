package main

// What sshuttle users type, taken with sshuttle's meaning: -l PORT, -s FILE,
// -X FILE, root@[v6], --disable-ipv6, and the flags that do not apply here,
// accepted with a line saying why.

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/transport/cmdtransport"
	"github.com/k8stunnel/k8stunnel/transport/sshtransport"
)

// sshuttleFlags are the flags k8stunnel takes only so that an sshuttle
// command line works.
type sshuttleFlags struct {
	subnets, excludeFrom []string
	disableIPv6          bool
	python, method       string
	noLatencyControl     bool
}

// parseListen turns -l values into the engine's IP:PORT list. PORT alone
// means the engine's default addresses on that port (loopback, or with
// gateway all addresses; IPv4 and IPv6 unless v4only), as in sshuttle.
func parseListen(values []string, v4only, gateway bool) ([]string, error) {
	ips := []string{"127.0.0.1", "::1"}
	if gateway {
		ips = []string{"0.0.0.0", "::"}
	}
	if v4only {
		ips = ips[:1]
	}
	if v4only && len(values) == 0 {
		values = []string{strconv.Itoa(client.DefaultPort)}
	}
	var out []string
	for _, v := range values {
		if p, err := strconv.ParseUint(v, 10, 16); err == nil {
			for _, ip := range ips {
				out = append(out, netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(p)).String())
			}
			continue
		}
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			return nil, usagef("bad -l/--listen %q: want PORT, IP:PORT or [IPv6]:PORT", v)
		}
		if v4only && ap.Addr().Is6() {
			return nil, usagef("-l/--listen %s is IPv6, and --disable-ipv6 is set", v)
		}
		out = append(out, ap.String())
	}
	return out, nil
}

// parseRemote lets -r take root@[fd00::1] without a port, as ssh and
// sshuttle do.
func parseRemote(r string) string {
	user, host := "", r
	if i := strings.LastIndex(r, "@"); i >= 0 {
		user, host = r[:i+1], r[i+1:]
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		if a, err := netip.ParseAddr(host[1 : len(host)-1]); err == nil && a.Is6() {
			return user + a.String()
		}
	}
	return r
}

// sshuttleNotes are the lines saying why a flag that means something to
// sshuttle changes nothing here.
func sshuttleNotes(f sshuttleFlags) ([]string, error) {
	var notes []string
	if f.python != "" {
		notes = append(notes, "--python ignored: the node runs k8stunnel's own helper, not Python")
	}
	switch f.method {
	case "", "auto", "nat":
	case "nft", "tproxy", "pf", "ipfw", "windivert":
		notes = append(notes, fmt.Sprintf("--method %s ignored: k8stunnel always uses iptables nat REDIRECT (sshuttle's nat method)", f.method))
	default:
		return nil, usagef("bad --method %q: k8stunnel always uses iptables nat (auto, nat)", f.method)
	}
	if f.noLatencyControl {
		notes = append(notes, "--no-latency-control ignored: k8stunnel has per-connection flow control, nothing to turn off")
	}
	return notes, nil
}

// readTargetFiles reads -s/--subnets and -X/--exclude-from files: CIDRs
// separated by spaces, commas or newlines, # starting a comment.
func readTargetFiles(files []string) ([]firewall.Target, error) {
	var ts []firewall.Target
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading CIDRs: %w", err)
		}
		var words []string
		for _, line := range strings.Split(string(b), "\n") {
			line, _, _ = strings.Cut(line, "#")
			words = append(words, strings.Fields(line)...)
		}
		got, err := parseTargets(words)
		if err != nil {
			return nil, usagef("in %s: %v", file, err)
		}
		ts = append(ts, got...)
	}
	return ts, nil
}

// noIPv6 refuses IPv6 targets under --disable-ipv6.
func noIPv6(ts []firewall.Target) error {
	for _, t := range ts {
		if t.Prefix.Addr().Is6() {
			return usagef("%v is IPv6, and --disable-ipv6 is set", t.Prefix)
		}
	}
	return nil
}

// addTargetFiles adds the CIDRs of -s and -X files to inv; run calls it
// before anything starts, so their mistakes are usage errors too.
func addTargetFiles(inv *invocation) error {
	inc, err := readTargetFiles(inv.subnetFiles)
	if err != nil {
		return err
	}
	exc, err := readTargetFiles(inv.excludeFiles)
	if err != nil {
		return err
	}
	if inv.noIPv6 {
		if err := noIPv6(inc); err != nil {
			return err
		}
	}
	inv.cfg.Include = append(inv.cfg.Include, inc...)
	inv.cfg.Exclude = append(inv.cfg.Exclude, exc...)
	if len(inv.subnetFiles) > 0 && len(inv.cfg.Include) == 0 && !inv.cfg.AutoCIDRs && inv.cfg.SOCKS == "" && inv.cfg.HTTPProxy == "" {
		return usagef("no CIDR in %s", strings.Join(inv.subnetFiles, ", "))
	}
	return nil
}

// sshCmdConflicts refuses flags for k8stunnel's own SSH client next to -e,
// which leaves SSH to the command.
func sshCmdConflicts(fs *pflag.FlagSet, sshCmd string, channels int) error {
	if words, err := cmdtransport.SplitWords(sshCmd); err != nil || len(words) == 0 {
		return usagef("bad -e/--ssh-cmd %q: want a command such as 'ssh -o BatchMode=yes'", sshCmd)
	}
	for _, name := range []string{"identity", "ssh-config", "known-hosts"} {
		if fs.Changed(name) {
			return usagef("-e runs the command for SSH: give --%s's setting to the command (e.g. -e 'ssh -i KEY'), not to k8stunnel", name)
		}
	}
	if fs.Changed("channels") && channels != 1 {
		return usagef("-e carries one channel: each more would be another login; drop --channels")
	}
	return nil
}

// newTransport is cmdtransport with -e, else k8stunnel's own SSH client.
func newTransport(sshCmd string, trc sshtransport.Config) (transport.Transport, error) {
	if sshCmd != "" {
		return cmdtransport.New(cmdtransport.Config{Command: sshCmd, Remote: trc.SSH.Remote, Helper: trc.Helper, Log: trc.Log})
	}
	return sshtransport.New(trc)
}
