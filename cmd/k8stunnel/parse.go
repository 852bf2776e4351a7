package main

import (
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/proxy"
	"github.com/k8stunnel/k8stunnel/transport/helper"
	"github.com/k8stunnel/k8stunnel/transport/sshdial"
	"github.com/k8stunnel/k8stunnel/transport/sshtransport"
)

const usageText = `k8stunnel: reach a Kubernetes cluster's service and pod IPs through one SSH connection

Usage:
  sudo k8stunnel [flags] -r [user@]host[:port] CIDR[:port[-port]]...
  sudo k8stunnel cleanup
  k8stunnel [flags] -r [user@]host[:port] --socks PORT --http-proxy PORT   # no root, any OS
  k8stunnel status [--json] [--watch]
  k8stunnel stop [PID|--all]
  k8stunnel manifest -R ADDR:PORT:HOST:HOSTPORT [--name N] [--namespace NS]
  k8stunnel sudoers [--user NAME]

Examples:
  sudo k8stunnel -r root@node1 10.96.0.0/12 10.244.0.0/16
  sudo k8stunnel -r node1 -x 10.96.0.1 10.96.0.0/12 &      # in the background
  sudo k8stunnel -r admin@node1:2222 -i ~/.ssh/cluster 10.0.0.0/8:443
  sudo --preserve-env=SSH_AUTH_SOCK k8stunnel -J me@bastion -r root@node1 10.96.0.0/12  # your agent, via a bastion
  sudo k8stunnel -r root@node1 -N --dns --dns-search default  # CIDRs and cluster DNS found on the node;
                                                           # then: curl http://my-svc.my-ns.svc.cluster.local/
  sudo k8stunnel cleanup                                   # remove rules left by a killed run
  k8stunnel sudoers                                        # the sudoers line to run k8stunnel without sudo:
                                                           # only its firewall part runs as root, password-less
  k8stunnel -r root@node1 --socks 1080 --http-proxy 3128   # as yourself; then:
      curl --socks5-hostname 127.0.0.1:1080 http://my-svc.my-ns.svc.cluster.local/
      HTTPS_PROXY=http://127.0.0.1:3128 kubectl ...   # or a browser's proxy setting
  sudo k8stunnel status                                    # what each running tunnel is doing
  sudo k8stunnel stop --all                                # stop them, removing their rules
  sudo k8stunnel -r node1 -N -R 8080:127.0.0.1:8000        # pods reach the laptop's :8000 at the node's :8080
  k8stunnel manifest -R 10.244.0.1:8080:127.0.0.1:8000 | kubectl apply -f -  # ... as laptop.default.svc:8080

The node needs only sshd: k8stunnel copies itself there (to ~/.cache/k8stunnel)
and runs it as the helper, unless --remote-cmd names one already installed. A
node of another architecture gets k8stunnel-linux-ARCH from next to this
executable (make dist builds them), or the build --helper names.
Under sudo, SSH is still yours: your ssh_config (read by ssh -G), keys and
known_hosts; sudo drops your ssh-agent unless you keep SSH_AUTH_SOCK as above.

Flags:
`

// The subcommands; the tunnel is the default and has none.
const (
	cmdTunnel   = ""
	cmdServer   = "server"
	cmdFirewall = "firewall"
	cmdCleanup  = "cleanup"
	cmdStatus   = "status"
	cmdStop     = "stop"
)

// invocation is what a command line asks for, decided without looking at the
// host, so that every usage error is found (and tested) before anything
// starts. run adds what comes from the host: the executable, sudo, files,
// the resolvers, the logger's destination.
type invocation struct {
	cmd string
	// output, when set, is what --help or --version prints on stdout; nothing
	// else happens.
	output string
	// cfg is the engine's config as far as the tunnel's flags determine it.
	cfg client.Config
	// transport says how to reach the node; run adds the executable to
	// upload and builds the transport into cfg.
	transport sshtransport.Config
	verbose   int
	daemon    bool
	pidfile   string
	logFile   string
	syslog    bool
	// logDest is where the logs go when not to stderr, for status; run sets it.
	logDest string
	// status and stop
	asJSON, watch, all bool
	pid                int
	manifest           manifest
	sudoersUser        string
	// notes are lines for stderr about flags that change nothing here.
	notes []string
	// subnetFiles and excludeFiles (-s, -X) are read by run.
	subnetFiles, excludeFiles []string
	noIPv6                    bool
	// sshCmd (-e) replaces the SSH client: run will use cmdtransport.
	sshCmd string
}

// parse turns argv (without the program name) into an invocation, or a
// usageError.
func parse(args []string) (invocation, error) {
	if len(args) > 0 {
		switch args[0] {
		case cmdServer:
			return parseServer(args[1:])
		case cmdFirewall, cmdCleanup:
			if len(args) > 1 {
				return invocation{}, usagef("%s takes no arguments", args[0])
			}
			return invocation{cmd: args[0]}, nil
		case cmdStatus:
			return parseStatus(args[1:])
		case cmdStop:
			return parseStop(args[1:])
		case cmdManifest:
			return parseManifest(args[1:])
		case cmdSudoers:
			return parseSudoers(args[1:])
		}
	}
	return parseTunnel(args)
}

func parseServer(args []string) (invocation, error) {
	fs := pflag.NewFlagSet("k8stunnel server", pflag.ContinueOnError)
	verbose := fs.CountP("verbose", "v", "log every connection")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return invocation{}, usagef("server: %v", err)
	}
	return invocation{cmd: cmdServer, verbose: *verbose}, nil
}

func parseStatus(args []string) (invocation, error) {
	inv := invocation{cmd: cmdStatus}
	fs := pflag.NewFlagSet("k8stunnel status", pflag.ContinueOnError)
	fs.BoolVar(&inv.asJSON, "json", false, "print a JSON array, one object per tunnel")
	fs.BoolVarP(&inv.watch, "watch", "w", false, "print again every second")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return invocation{}, usagef("status: %v (usage: k8stunnel status [--json] [--watch])", err)
	}
	if fs.NArg() > 0 {
		return invocation{}, usagef("status takes no arguments (usage: k8stunnel status [--json] [--watch])")
	}
	return inv, nil
}

func parseStop(args []string) (invocation, error) {
	inv := invocation{cmd: cmdStop}
	fs := pflag.NewFlagSet("k8stunnel stop", pflag.ContinueOnError)
	fs.BoolVar(&inv.all, "all", false, "stop every tunnel you may stop")
	fs.SetOutput(io.Discard)
	const usage = "(usage: k8stunnel stop [PID|--all])"
	if err := fs.Parse(args); err != nil {
		return invocation{}, usagef("stop: %v %s", err, usage)
	}
	switch {
	case fs.NArg() > 1 || (fs.NArg() == 1 && inv.all):
		return invocation{}, usagef("stop takes one PID or --all %s", usage)
	case fs.NArg() == 1:
		pid, err := strconv.Atoi(fs.Arg(0))
		if err != nil || pid <= 0 {
			return invocation{}, usagef("stop: bad PID %q %s", fs.Arg(0), usage)
		}
		inv.pid = pid
	}
	return inv, nil
}

// tunnelFlags holds the tunnel's flag values as pflag parsed them.
type tunnelFlags struct {
	remote, sshConfig, knownHosts, remoteCmd string
	jump                                     string
	helperFile, sshCmd                       string
	identities, listen, excludes             []string
	autoCIDRs, gateway                       bool
	dnsOn, dnsAll                            bool
	clusterDNS, clusterDomain                string
	dnsSearch                                []string
	channels, maxConns                       int
	noUDP                                    bool
	udpIdle                                  time.Duration
	socks, httpProxy                         string
	exposes                                  []string
	sshuttle                                 sshuttleFlags
}

func parseTunnel(args []string) (invocation, error) {
	var (
		inv       invocation
		f         tunnelFlags
		help, ver bool
	)
	fs := pflag.NewFlagSet("k8stunnel", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVarP(&f.remote, "remote", "r", "", "SSH destination `[user@]host[:port]` (an ssh_config Host works)")
	fs.StringArrayVarP(&f.excludes, "exclude", "x", nil, "do not forward this `CIDR` (repeatable)")
	fs.BoolVarP(&f.autoCIDRs, "auto-cidrs", "N", false, "also forward the pod and service CIDRs found on the node")
	fs.BoolVar(&f.dnsOn, "dns", false, "resolve cluster names through the tunnel; other names still use your resolver")
	fs.BoolVar(&f.dnsAll, "dns-all", false, "with --dns, resolve every name through the tunnel, with the node's resolver")
	fs.StringVar(&f.clusterDNS, "cluster-dns", "", "with --dns or a proxy, the cluster DNS service `IP` (default: found on the node)")
	fs.StringVar(&f.clusterDomain, "cluster-domain", "", "with --dns or a proxy, the cluster's DNS `DOMAIN` (default: found on the node, else cluster.local)")
	fs.StringArrayVar(&f.dnsSearch, "dns-search", nil, "with --dns or a proxy, let short names (svc, svc.ns) resolve in namespace `NS` (repeatable)")
	fs.StringVar(&f.socks, "socks", "", "serve a SOCKS5 proxy into the cluster on `ADDR` (a port alone means 127.0.0.1); needs no root, no CIDR")
	fs.StringVar(&f.httpProxy, "http-proxy", "", "serve an HTTP proxy (CONNECT and plain requests) into the cluster on `ADDR`, as --socks")
	fs.StringArrayVarP(&f.exposes, "expose", "R", nil, "let pods reach HOST:HOSTPORT, dialled here, at the node's PORT (repeatable); `PORT:HOST:HOSTPORT` may start with BIND: (default: the node's pod-side address)")
	fs.StringArrayVarP(&f.listen, "listen", "l", nil, "accept redirected connections on `ADDR` (default 127.0.0.1:12300 and [::1]:12300)")
	fs.BoolVar(&f.gateway, "gateway", false, "also forward connections this host routes (containers, VMs); listens on 0.0.0.0 and [::]")
	fs.StringArrayVarP(&f.identities, "identity", "i", nil, "SSH private key `FILE` (repeatable)")
	fs.StringVarP(&f.sshConfig, "ssh-config", "F", "", "ssh_config `FILE` (default ~/.ssh/config)")
	fs.StringVar(&f.knownHosts, "known-hosts", "", "known_hosts `FILE` (default ~/.ssh/known_hosts)")
	fs.StringVarP(&f.jump, "jump", "J", "", "reach the node through jump `HOSTS` ([user@]host[:port],...), as ssh -J")
	fs.StringVar(&f.remoteCmd, "remote-cmd", "", "run this helper `CMD` on the node instead of uploading k8stunnel")
	fs.StringVarP(&f.sshCmd, "ssh-cmd", "e", "", "reach the node by running `CMD` [-p PORT] [user@]host -- COMMAND, as sshuttle -e (e.g. 'ssh -o BatchMode=yes')")
	fs.StringVar(&f.helperFile, "helper", "", "upload this k8stunnel build `FILE` to the node (default: this one, or k8stunnel-linux-ARCH next to it for a node unlike this machine)")
	fs.IntVar(&f.channels, "channels", 0, "carry connections over `N` SSH channels, each striped over all (default: by the link's round trip, 1 on a LAN)")
	fs.IntVar(&f.maxConns, "max-conns", client.DefaultMaxConns, "reset new connections past `N` at once")
	fs.BoolVar(&f.noUDP, "no-udp", false, "forward TCP only (by default UDP to the CIDRs goes through the tunnel too)")
	fs.DurationVar(&f.udpIdle, "udp-idle", client.DefaultUDPIdle, "end a UDP flow after `DURATION` without a datagram")
	fs.MarkHidden("udp-idle")
	fs.BoolVarP(&inv.daemon, "daemon", "D", false, "detach once the tunnel is up (exits non-zero if it cannot come up)")
	fs.StringVar(&inv.pidfile, "pidfile", "", "write the process ID to `FILE` once the tunnel is up")
	fs.StringVar(&inv.logFile, "log-file", "", "append logs to `FILE` (with --daemon default: syslog, else a file k8stunnel status names)")
	fs.BoolVar(&inv.syslog, "syslog", false, "send logs to syslog")
	fs.CountVarP(&inv.verbose, "verbose", "v", "log every connection: source, destination, bytes, how it ended (-vv: with stream and channel)")
	fs.BoolVarP(&ver, "version", "V", false, "print the version and exit")
	fs.BoolVarP(&help, "help", "h", false, "show this help")
	fs.StringArrayVarP(&f.sshuttle.subnets, "subnets", "s", nil, "forward the CIDRs listed in `FILE` too (as sshuttle -s)")
	fs.StringArrayVarP(&f.sshuttle.excludeFrom, "exclude-from", "X", nil, "do not forward the CIDRs listed in `FILE` (as sshuttle -X)")
	fs.BoolVar(&f.sshuttle.disableIPv6, "disable-ipv6", false, "forward and listen on IPv4 only")
	fs.StringVar(&f.sshuttle.python, "python", "", "ignored (sshuttle's `PATH` to Python; the node needs none)")
	fs.StringVar(&f.sshuttle.method, "method", "", "ignored (sshuttle's `METHOD`; k8stunnel always uses iptables nat)")
	fs.BoolVar(&f.sshuttle.noLatencyControl, "no-latency-control", false, "ignored (sshuttle's)")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return invocation{}, usagef("%v (see k8stunnel --help)", err)
	}
	if help {
		return invocation{output: usageText + fs.FlagUsages()}, nil
	}
	if ver {
		return invocation{output: "k8stunnel " + version + "\n"}, nil
	}
	f.remote = parseRemote(f.remote)
	if f.remote == "" {
		return invocation{}, usagef("missing -r/--remote: which node should the tunnel go to? (see k8stunnel --help)")
	}
	proxying := f.socks != "" || f.httpProxy != ""
	transparent := fs.NArg() > 0 || f.autoCIDRs || len(f.sshuttle.subnets) > 0
	if !transparent && !proxying {
		return invocation{}, usagef("no CIDR given: name the cluster's service and pod CIDRs, e.g. 10.96.0.0/12 10.244.0.0/16, or let -N find them on the node; " +
			"or serve a proxy, which needs no root: --socks 1080")
	}
	for _, a := range []string{f.socks, f.httpProxy} {
		if a == "" {
			continue
		}
		if _, _, err := proxy.ListenAddr(a); err != nil {
			return invocation{}, usagef("%v", err)
		}
	}
	if !transparent && (f.dnsOn || len(f.listen) > 0 || f.gateway) {
		return invocation{}, usagef("--dns, --listen and --gateway need CIDRs to forward (the proxies resolve cluster names by themselves)")
	}
	include, err := parseTargets(fs.Args())
	if err != nil {
		return invocation{}, err
	}
	exclude, err := parseTargets(f.excludes)
	if err != nil {
		return invocation{}, err
	}
	if f.sshuttle.disableIPv6 {
		if err := noIPv6(include); err != nil {
			return invocation{}, err
		}
	}
	if transparent {
		if f.listen, err = parseListen(f.listen, f.sshuttle.disableIPv6, f.gateway); err != nil {
			return invocation{}, err
		}
	}
	if inv.notes, err = sshuttleNotes(f.sshuttle); err != nil {
		return invocation{}, err
	}
	inv.subnetFiles, inv.excludeFiles, inv.noIPv6 = f.sshuttle.subnets, f.sshuttle.excludeFrom, f.sshuttle.disableIPv6
	dns, err := dnsConfig(f.dnsOn || proxying, f.dnsAll, f.clusterDNS, f.clusterDomain, f.dnsSearch)
	if err != nil {
		return invocation{}, err
	}
	if f.dnsAll && !f.dnsOn {
		return invocation{}, usagef("--dns-all needs --dns")
	}
	var names client.Names
	if proxying {
		names = client.Names{ClusterDNS: dns.ClusterDNS, ClusterDomain: dns.ClusterDomain, Search: dns.Search}
	}
	if !f.dnsOn {
		dns = nil
	}
	if fs.Changed("channels") && (f.channels < 1 || f.channels > 64) {
		return invocation{}, usagef("--channels must be between 1 and 64")
	}
	if f.sshCmd != "" {
		if err := sshCmdConflicts(fs, f.sshCmd, f.channels); err != nil {
			return invocation{}, err
		}
		inv.sshCmd = f.sshCmd
	}
	if f.helperFile != "" && f.remoteCmd != "" {
		return invocation{}, usagef("--helper and --remote-cmd: pick one (--helper uploads a build, --remote-cmd runs one already on the node)")
	}
	if inv.logFile != "" && inv.syslog {
		return invocation{}, usagef("--log-file and --syslog: pick one")
	}
	inv.cfg, inv.transport = engineConfig(f, include, exclude, dns, inv.verbose)
	inv.cfg.Names = names
	if inv.cfg.Expose, err = parseExposes(f.exposes); err != nil {
		return invocation{}, err
	}
	return inv, nil
}

// engineConfig is the one place flags become the engine's and the
// transport's config; run fills in the rest (helper executable, firewall,
// resolvers, logger).
func engineConfig(f tunnelFlags, include, exclude []firewall.Target, dns *dnsproxy.Config, verbose int) (client.Config, sshtransport.Config) {
	var helperArgs []string
	if verbose > 0 {
		helperArgs = []string{"-v"}
	}
	tr := sshtransport.Config{
		SSH: sshdial.Config{
			Remote:         f.remote,
			Identities:     f.identities,
			ConfigFile:     f.sshConfig,
			KnownHostsFile: f.knownHosts,
			ProxyJump:      f.jump,
		},
		Helper: helper.Config{RemoteCmd: f.remoteCmd, Helper: f.helperFile, Args: helperArgs},
	}
	return client.Config{
		Listen:    f.listen,
		Gateway:   f.gateway,
		Include:   include,
		Exclude:   exclude,
		AutoCIDRs: f.autoCIDRs,
		DNS:       dns,
		Channels:  f.channels,
		MaxConns:  f.maxConns,
		UDP:       !f.noUDP,
		UDPIdle:   f.udpIdle,
		SOCKS:     f.socks,
		HTTPProxy: f.httpProxy,
		Program:   "k8stunnel " + version,
		StreamIDs: verbose > 1,
	}, tr
}

// dnsConfig turns the DNS flags into the proxy's config; nil without --dns.
// Upstreams, from the laptop's resolv.conf, are read when the tunnel starts.
func dnsConfig(on, all bool, clusterDNS, domain string, search []string) (*dnsproxy.Config, error) {
	if !on {
		if all || clusterDNS != "" || domain != "" || len(search) > 0 {
			return nil, usagef("--dns-all, --cluster-dns, --cluster-domain and --dns-search need --dns (or, but for --dns-all, --socks or --http-proxy)")
		}
		return nil, nil
	}
	cfg := &dnsproxy.Config{All: all, ClusterDomain: domain}
	for _, s := range search {
		cfg.Search = append(cfg.Search, splitCommas(s)...)
	}
	if clusterDNS != "" {
		a, err := netip.ParseAddr(clusterDNS)
		if err != nil {
			return nil, usagef("bad --cluster-dns %q: want the cluster DNS service IP, e.g. 10.96.0.10", clusterDNS)
		}
		cfg.ClusterDNS = a
	}
	return cfg, nil
}

func parseTargets(args []string) ([]firewall.Target, error) {
	var ts []firewall.Target
	for _, a := range args {
		for _, f := range splitCommas(a) {
			t, err := firewall.ParseTarget(f)
			if err != nil {
				return nil, usagef("%v", err) // it names the input already
			}
			ts = append(ts, t)
		}
	}
	return ts, nil
}

// splitCommas splits a repeatable flag's value on commas, dropping empty parts.
func splitCommas(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' })
}
