package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/pflag"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/firewall"
)

const usageText = `k8stunnel: reach a Kubernetes cluster's service and pod IPs through one SSH connection

Usage:
  sudo k8stunnel [flags] -r [user@]host[:port] CIDR[:port[-port]]...
  sudo k8stunnel cleanup

Examples:
  sudo k8stunnel -r root@node1 10.96.0.0/12 10.244.0.0/16
  sudo k8stunnel -r node1 -x 10.96.0.1 10.96.0.0/12 &      # in the background
  sudo k8stunnel -r admin@node1:2222 -i ~/.ssh/cluster 10.0.0.0/8:443
  sudo k8stunnel -r root@node1 -N --dns --dns-search default  # CIDRs and cluster DNS found on the node;
                                                           # then: curl http://my-svc.my-ns.svc.cluster.local/
  sudo k8stunnel cleanup                                   # remove rules left by a killed run

The node needs only sshd: k8stunnel copies itself there (to ~/.cache/k8stunnel)
and runs it as the helper, unless --remote-cmd names one already installed.

Flags:
`

// runTunnel is the main job: parse, then run the client until a signal.
func runTunnel(ctx context.Context, args []string, stderr io.Writer) error {
	// x/crypto/ssh allocates every packet it receives afresh: at a Gbit/s that
	// is the client's main garbage. A higher GC target trades a few MB of heap
	// for about 15% less CPU per byte downloaded.
	debug.SetGCPercent(400)
	fs := pflag.NewFlagSet("k8stunnel", pflag.ContinueOnError)
	fs.SortFlags = false
	var (
		remote     = fs.StringP("remote", "r", "", "SSH destination `[user@]host[:port]` (an ssh_config Host works)")
		excludes   = fs.StringArrayP("exclude", "x", nil, "do not forward this `CIDR` (repeatable)")
		autoCIDRs  = fs.BoolP("auto-cidrs", "N", false, "also forward the pod and service CIDRs found on the node")
		dnsOn      = fs.Bool("dns", false, "resolve cluster names through the tunnel; other names still use your resolver")
		dnsAll     = fs.Bool("dns-all", false, "with --dns, resolve every name through the tunnel, with the node's resolver")
		clusterDNS = fs.String("cluster-dns", "", "with --dns, the cluster DNS service `IP` (default: found on the node)")
		clusterDom = fs.String("cluster-domain", "", "with --dns, the cluster's DNS `DOMAIN` (default: found on the node, else cluster.local)")
		dnsSearch  = fs.StringArray("dns-search", nil, "with --dns, let short names (svc, svc.ns) resolve in namespace `NS` (repeatable)")
		listen     = fs.StringArrayP("listen", "l", nil, "accept redirected connections on `ADDR` (default 127.0.0.1:12300 and [::1]:12300)")
		identities = fs.StringArrayP("identity", "i", nil, "SSH private key `FILE` (repeatable)")
		sshConfig  = fs.StringP("ssh-config", "F", "", "ssh_config `FILE` (default ~/.ssh/config)")
		knownHosts = fs.String("known-hosts", "", "known_hosts `FILE` (default ~/.ssh/known_hosts)")
		remoteCmd  = fs.String("remote-cmd", "", "run this helper `CMD` on the node instead of uploading k8stunnel")
		channels   = fs.Int("channels", 1, "spread connections over `N` SSH channels (helps on long, fast links)")
		maxConns   = fs.Int("max-conns", client.DefaultMaxConns, "reset new connections past `N` at once")
		daemon     = fs.Bool("daemon", false, "detach once the tunnel is up (exits non-zero if it cannot come up)")
		pidfile    = fs.String("pidfile", "", "write the process ID to `FILE` once the tunnel is up")
		logFile    = fs.String("log-file", "", "append logs to `FILE` (with --daemon; default: discard)")
		useSyslog  = fs.Bool("syslog", false, "send logs to syslog")
		verbose    = fs.CountP("verbose", "v", "log every connection (repeatable)")
		showVer    = fs.Bool("version", false, "print the version and exit")
		help       = fs.BoolP("help", "h", false, "show this help")
	)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return usagef("%v (see k8stunnel --help)", err)
	}
	if *help {
		fmt.Fprint(os.Stdout, usageText)
		fs.SetOutput(os.Stdout)
		fs.PrintDefaults()
		return nil
	}
	if *showVer {
		fmt.Println("k8stunnel", version)
		return nil
	}
	if *remote == "" {
		return usagef("missing -r/--remote: which node should the tunnel go to? (see k8stunnel --help)")
	}
	if fs.NArg() == 0 && !*autoCIDRs {
		return usagef("no CIDR given: name the cluster's service and pod CIDRs, e.g. 10.96.0.0/12 10.244.0.0/16, or let -N find them on the node")
	}
	include, err := parseTargets(fs.Args())
	if err != nil {
		return err
	}
	exclude, err := parseTargets(*excludes)
	if err != nil {
		return err
	}
	dns, err := dnsConfig(*dnsOn, *dnsAll, *clusterDNS, *clusterDom, *dnsSearch)
	if err != nil {
		return err
	}
	if *channels < 1 || *channels > 64 {
		return usagef("--channels must be between 1 and 64")
	}
	if *logFile != "" && *useSyslog {
		return usagef("--log-file and --syslog: pick one")
	}
	child := openDaemonChild()
	if *daemon && child == nil {
		return daemonize(*logFile, stderr)
	}
	if *logFile != "" && !*daemon {
		f, err := os.OpenFile(*logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("opening log file: %w", err)
		}
		defer f.Close()
		stderr = f
	}
	log := newLogger(stderr, *verbose)
	if *useSyslog {
		if log, err = syslogLogger(*verbose); err != nil {
			return err
		}
	}
	err = runClient(ctx, clientOptions{
		remote: *remote, identities: *identities, sshConfig: *sshConfig, knownHosts: *knownHosts,
		remoteCmd: *remoteCmd, listen: *listen, include: include, exclude: exclude, autoCIDRs: *autoCIDRs, dns: dns,
		channels: *channels, maxConns: *maxConns, verbose: *verbose, pidfile: *pidfile,
	}, log, stderr, child)
	if err != nil {
		child.failed(err)
	}
	return err
}

type clientOptions struct {
	remote, sshConfig, knownHosts, remoteCmd, pidfile string
	identities, listen                                []string
	include, exclude                                  []firewall.Target
	autoCIDRs                                         bool
	dns                                               *dnsproxy.Config
	channels, maxConns, verbose                       int
}

func runClient(ctx context.Context, o clientOptions, log *slog.Logger, stderr io.Writer, child *daemonChild) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding my own executable: %w", err)
	}
	var helperArgs []string
	if o.verbose > 0 {
		helperArgs = []string{"-v"}
	}
	var pidErr error
	c, err := client.New(client.Config{
		SSH: client.SSHConfig{
			Remote:         o.remote,
			Identities:     o.identities,
			ConfigFile:     o.sshConfig,
			KnownHostsFile: o.knownHosts,
		},
		Helper:    client.HelperOptions{RemoteCmd: o.remoteCmd, Exe: exe, Args: helperArgs},
		Listen:    o.listen,
		Include:   o.include,
		Exclude:   o.exclude,
		AutoCIDRs: o.autoCIDRs,
		DNS:       o.dns,
		Channels:  o.channels,
		MaxConns:  o.maxConns,
		Program:   "k8stunnel " + version,
		Log:       log,
		OnReady: func() {
			if o.pidfile != "" {
				if pidErr = writePidfile(o.pidfile); pidErr != nil {
					log.Error("cannot write pidfile", "err", pidErr)
				}
			}
			child.ready()
		},
		StartFirewall: func(ctx context.Context) (client.Firewall, error) {
			return firewall.StartHelper(ctx, firewall.HelperConfig{Exe: exe, Sudo: true, Log: log, Stderr: stderr})
		},
	})
	if err != nil {
		return err
	}
	err = c.Run(ctx)
	if o.pidfile != "" && pidErr == nil {
		os.Remove(o.pidfile)
	}
	return err
}

// dnsConfig turns the DNS flags into the proxy's config; nil without --dns.
// The laptop's resolv.conf is read when the tunnel starts, not here.
func dnsConfig(on, all bool, clusterDNS, domain string, search []string) (*dnsproxy.Config, error) {
	if !on {
		if all || clusterDNS != "" || domain != "" || len(search) > 0 {
			return nil, usagef("--dns-all, --cluster-dns, --cluster-domain and --dns-search need --dns")
		}
		return nil, nil
	}
	cfg := &dnsproxy.Config{All: all, ClusterDomain: domain}
	for _, s := range search {
		cfg.Search = append(cfg.Search, strings.FieldsFunc(s, func(r rune) bool { return r == ',' })...)
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
		for _, f := range strings.FieldsFunc(a, func(r rune) bool { return r == ',' }) {
			t, err := firewall.ParseTarget(f)
			if err != nil {
				return nil, usagef("%v", err) // it names the input already
			}
			ts = append(ts, t)
		}
	}
	return ts, nil
}
