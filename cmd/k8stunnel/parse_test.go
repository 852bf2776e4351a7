package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/firewall"
)

func targets(t *testing.T, ss ...string) []firewall.Target {
	t.Helper()
	var ts []firewall.Target
	for _, s := range ss {
		tg, err := firewall.ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tg)
	}
	return ts
}

// What the tunnel's flags put into the engine's config and the invocation.
func TestParseTunnel(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want func(*invocation) // applied to the defaults below
	}{
		{"minimal", []string{"-r", "node1", "10.96.0.0/12"}, func(*invocation) {}},
		{"CIDRs with ports and commas", []string{"-r", "node1", "10.96.0.0/12,10.244.0.0/16", "[fd00::/8]:443", "10.0.0.0/8:8000-9000"},
			func(inv *invocation) {
				inv.cfg.Include = targets(t, "10.96.0.0/12", "10.244.0.0/16", "[fd00::/8]:443", "10.0.0.0/8:8000-9000")
			}},
		{"excludes", []string{"-r", "node1", "-x", "10.96.0.1", "--exclude", "10.96.0.2,10.96.0.3:53", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.Exclude = targets(t, "10.96.0.1", "10.96.0.2", "10.96.0.3:53") }},
		{"auto CIDRs alone", []string{"-r", "node1", "-N"},
			func(inv *invocation) { inv.cfg.AutoCIDRs, inv.cfg.Include = true, nil }},
		{"auto CIDRs and more", []string{"-r", "node1", "--auto-cidrs", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.AutoCIDRs = true }},
		{"listen", []string{"-r", "node1", "-l", "127.0.0.1:5000", "--listen", "[::1]:5000", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.Listen = []string{"127.0.0.1:5000", "[::1]:5000"} }},
		{"listen on a port, as sshuttle", []string{"-r", "node1", "-l", "12345", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.Listen = []string{"127.0.0.1:12345", "[::1]:12345"} }},
		{"listen on a port with --gateway", []string{"-r", "node1", "--gateway", "-l", "12345", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.Gateway, inv.cfg.Listen = true, []string{"0.0.0.0:12345", "[::]:12345"} }},
		{"disable IPv6", []string{"-r", "node1", "--disable-ipv6", "10.96.0.0/12"},
			func(inv *invocation) { inv.noIPv6, inv.cfg.Listen = true, []string{"127.0.0.1:12300"} }},
		{"disable IPv6 with a port and --gateway", []string{"-r", "node1", "--disable-ipv6", "--gateway", "-l", "5000", "10.96.0.0/12"},
			func(inv *invocation) {
				inv.noIPv6, inv.cfg.Gateway, inv.cfg.Listen = true, true, []string{"0.0.0.0:5000"}
			}},
		{"subnets and excludes from files", []string{"-r", "node1", "-s", "inc", "--subnets", "inc2", "-X", "exc"},
			func(inv *invocation) {
				inv.cfg.Include, inv.subnetFiles, inv.excludeFiles = nil, []string{"inc", "inc2"}, []string{"exc"}
			}},
		{"v6 remote without a port", []string{"-r", "root@[fd00::1]", "10.96.0.0/12"},
			func(inv *invocation) { inv.transport.SSH.Remote = "root@fd00::1" }},
		{"sshuttle flags that do not apply", []string{"-r", "node1", "--python", "python3", "--method", "tproxy", "--no-latency-control", "10.96.0.0/12"},
			func(inv *invocation) {
				inv.notes = []string{
					"--python ignored: the node runs k8stunnel's own helper, not Python",
					"--method tproxy ignored: k8stunnel always uses iptables nat REDIRECT (sshuttle's nat method)",
					"--no-latency-control ignored: k8stunnel has per-connection flow control, nothing to turn off",
				}
			}},
		{"method nat", []string{"-r", "node1", "--method", "nat", "10.96.0.0/12"}, func(*invocation) {}},
		{"helper file", []string{"-r", "node1", "--helper", "bin/k8stunnel-linux-arm64", "10.96.0.0/12"},
			func(inv *invocation) { inv.transport.Helper.Helper = "bin/k8stunnel-linux-arm64" }},
		{"ssh command", []string{"-r", "root@node1", "-e", "ssh -o BatchMode=yes", "10.96.0.0/12"},
			func(inv *invocation) { inv.transport.SSH.Remote, inv.sshCmd = "root@node1", "ssh -o BatchMode=yes" }},
		{"-D is --daemon", []string{"-r", "node1", "-D", "10.96.0.0/12"}, func(inv *invocation) { inv.daemon = true }},
		{"channels and max-conns", []string{"-r", "node1", "--channels", "64", "--max-conns=100", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.Channels, inv.cfg.MaxConns = 64, 100 }},
		{"dns", []string{"-r", "node1", "--dns", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.DNS = &dnsproxy.Config{} }},
		{"dns flags", []string{"-r", "node1", "-N", "--dns", "--dns-all", "--cluster-dns", "10.96.0.10", "--cluster-domain", "k8s.local",
			"--dns-search", "default,kube-system", "--dns-search", "app.svc.k8s.local"},
			func(inv *invocation) {
				inv.cfg.AutoCIDRs, inv.cfg.Include = true, nil
				inv.cfg.DNS = &dnsproxy.Config{
					All: true, ClusterDNS: netip.MustParseAddr("10.96.0.10"), ClusterDomain: "k8s.local",
					Search: []string{"default", "kube-system", "app.svc.k8s.local"},
				}
			}},
		{"proxies without CIDRs", []string{"-r", "node1", "--socks", "1080", "--http-proxy", "127.0.0.1:3128"},
			func(inv *invocation) {
				inv.cfg.Include, inv.cfg.SOCKS, inv.cfg.HTTPProxy = nil, "1080", "127.0.0.1:3128"
			}},
		{"proxy names", []string{"-r", "node1", "--socks", "1080", "--cluster-dns", "10.96.0.10", "--cluster-domain", "k8s.local", "--dns-search", "default,app"},
			func(inv *invocation) {
				inv.cfg.Include, inv.cfg.SOCKS = nil, "1080"
				inv.cfg.Names = client.Names{ClusterDNS: netip.MustParseAddr("10.96.0.10"), ClusterDomain: "k8s.local", Search: []string{"default", "app"}}
			}},
		{"proxy and CIDRs with DNS", []string{"-r", "node1", "--http-proxy", "3128", "--dns", "--cluster-dns", "10.96.0.10", "10.96.0.0/12"},
			func(inv *invocation) {
				inv.cfg.HTTPProxy = "3128"
				inv.cfg.DNS = &dnsproxy.Config{ClusterDNS: netip.MustParseAddr("10.96.0.10")}
				inv.cfg.Names = client.Names{ClusterDNS: netip.MustParseAddr("10.96.0.10")}
			}},
		{"verbose reaches the helper", []string{"-r", "node1", "-vv", "10.96.0.0/12"},
			func(inv *invocation) {
				inv.verbose, inv.transport.Helper.Args, inv.cfg.StreamIDs = 2, []string{"-v"}, true
			}},
		{"daemon", []string{"-r", "node1", "--daemon", "--pidfile", "/run/k.pid", "--log-file", "/var/log/k.log", "10.96.0.0/12"},
			func(inv *invocation) { inv.daemon, inv.pidfile, inv.logFile = true, "/run/k.pid", "/var/log/k.log" }},
		{"syslog", []string{"-r", "node1", "--syslog", "10.96.0.0/12"},
			func(inv *invocation) { inv.syslog = true }},
		{"flags after CIDRs", []string{"10.96.0.0/12", "-r", "node1", "--channels", "2"},
			func(inv *invocation) { inv.cfg.Channels = 2 }},
		{"-- ends flags", []string{"-r", "node1", "--", "10.96.0.0/12"}, func(*invocation) {}},
		{"no udp", []string{"-r", "node1", "--no-udp", "10.96.0.0/12"}, func(inv *invocation) { inv.cfg.UDP = false }},
		{"udp idle", []string{"-r", "node1", "--udp-idle", "2s", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.UDPIdle = 2 * time.Second }},
		{"jump hosts", []string{"-J", "me@bastion,gw:2222", "-r", "node1", "10.96.0.0/12"},
			func(inv *invocation) { inv.transport.SSH.ProxyJump = "me@bastion,gw:2222" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(tc.args)
			if err != nil {
				t.Fatalf("parse(%q): %v", tc.args, err)
			}
			want := invocation{cmd: cmdTunnel}
			want.transport.SSH.Remote = "node1"
			want.cfg.Include = targets(t, "10.96.0.0/12")
			want.cfg.MaxConns = client.DefaultMaxConns
			want.cfg.UDP, want.cfg.UDPIdle = true, client.DefaultUDPIdle
			want.cfg.Program = "k8stunnel " + version
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("parse(%q) =\n%+v\nwant\n%+v", tc.args, got, want)
			}
		})
	}
}

// Parsing leaves everything that comes from the host to the wiring.
func TestParseLeavesHostParts(t *testing.T) {
	inv, err := parse([]string{"-r", "admin@node1:2222", "-i", "a", "--identity", "b", "-F", "cfg", "--known-hosts", "kh",
		"--remote-cmd", "/usr/local/bin/k8stunnel server", "--dns", "10.96.0.0/12"})
	if err != nil {
		t.Fatal(err)
	}
	ssh, helper := inv.transport.SSH, inv.transport.Helper
	if ssh.Remote != "admin@node1:2222" || !reflect.DeepEqual(ssh.Identities, []string{"a", "b"}) ||
		ssh.ConfigFile != "cfg" || ssh.KnownHostsFile != "kh" {
		t.Errorf("SSH = %+v", ssh)
	}
	if helper.RemoteCmd != "/usr/local/bin/k8stunnel server" || helper.Exe != "" || helper.Args != nil {
		t.Errorf("Helper = %+v; want only RemoteCmd", helper)
	}
	if inv.cfg.DNS == nil || inv.cfg.DNS.Upstreams != nil {
		t.Errorf("DNS = %+v; want one without Upstreams (resolv.conf is read when wiring)", inv.cfg.DNS)
	}
	if inv.cfg.Log != nil || inv.cfg.StartFirewall != nil || inv.cfg.OnReady != nil {
		t.Error("parse set a logger, firewall or OnReady")
	}
}

func TestParseSubcommands(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want invocation
	}{
		{[]string{"server"}, invocation{cmd: cmdServer}},
		{[]string{"server", "-v", "--verbose"}, invocation{cmd: cmdServer, verbose: 2}},
		{[]string{"firewall"}, invocation{cmd: cmdFirewall}},
		{[]string{"cleanup"}, invocation{cmd: cmdCleanup}},
		{[]string{"status"}, invocation{cmd: cmdStatus}},
		{[]string{"status", "--json", "-w"}, invocation{cmd: cmdStatus, asJSON: true, watch: true}},
		{[]string{"stop"}, invocation{cmd: cmdStop}},
		{[]string{"stop", "1234"}, invocation{cmd: cmdStop, pid: 1234}},
		{[]string{"stop", "--all"}, invocation{cmd: cmdStop, all: true}},
		{[]string{"--version"}, invocation{output: "k8stunnel " + version + "\n"}},
		{[]string{"-V"}, invocation{output: "k8stunnel " + version + "\n"}},
	} {
		got, err := parse(tc.args)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parse(%q) = %+v, %v; want %+v", tc.args, got, err, tc.want)
		}
	}
	for _, args := range [][]string{
		{"status", "extra"}, {"status", "--bogus"},
		{"stop", "1", "2"}, {"stop", "--all", "1"}, {"stop", "x"}, {"stop", "0"},
	} {
		if _, err := parse(args); !errors.As(err, new(usageError)) {
			t.Errorf("parse(%q) = %v, want a usage error", args, err)
		}
	}
}

// -s and -X files hold CIDRs as sshuttle's do; their mistakes are usage errors.
func TestAddTargetFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inc := write("inc", "10.96.0.0/12 # services\n\n10.244.0.0/16,fd00::/8\n")
	exc := write("exc", "10.96.0.1\n")
	inv, err := parse([]string{"-r", "node1", "-s", inc, "-X", exc, "10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	if err := addTargetFiles(&inv); err != nil {
		t.Fatal(err)
	}
	if want := targets(t, "10.0.0.0/8", "10.96.0.0/12", "10.244.0.0/16", "fd00::/8"); !reflect.DeepEqual(inv.cfg.Include, want) {
		t.Errorf("Include = %v, want %v", inv.cfg.Include, want)
	}
	if want := targets(t, "10.96.0.1"); !reflect.DeepEqual(inv.cfg.Exclude, want) {
		t.Errorf("Exclude = %v, want %v", inv.cfg.Exclude, want)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-s", write("bad", "10.0.0.0/8 nope\n")}, "in " + dir + `/bad: bad CIDR "nope": ParseAddr("nope"): unable to parse IP`},
		{[]string{"-s", write("empty", "# nothing\n")}, "no CIDR in " + dir + "/empty"},
		{[]string{"--disable-ipv6", "-s", inc}, "fd00::/8 is IPv6, and --disable-ipv6 is set"},
	} {
		inv, err := parse(append([]string{"-r", "node1"}, tc.args...))
		if err != nil {
			t.Fatal(err)
		}
		err = addTargetFiles(&inv)
		if !errors.As(err, new(usageError)) || err.Error() != tc.want {
			t.Errorf("%q: %v, want the usage error %q", tc.args, err, tc.want)
		}
	}
	inv, _ = parse([]string{"-r", "node1", "-s", filepath.Join(dir, "missing")})
	if err := addTargetFiles(&inv); err == nil || errors.As(err, new(usageError)) {
		t.Errorf("a missing file: %v, want an error that is not a usage error", err)
	}
}
