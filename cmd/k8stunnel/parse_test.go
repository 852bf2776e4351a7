package main

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

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
		{"listen is checked by the engine", []string{"-r", "node1", "-l", "bad", "10.96.0.0/12"},
			func(inv *invocation) { inv.cfg.Listen = []string{"bad"} }},
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
			want.cfg.Channels = 1
			want.cfg.MaxConns = client.DefaultMaxConns
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
