//go:build linux

package e2e

// DNS through the tunnel (the topology is drawn in dnslab.go): the laptop's queries to its resolver 127.0.0.53 are
// captured; cluster names are answered by the "cluster DNS" in the pod namespace through the tunnel, everything
// else by the laptop's own resolver, and nothing of it is left behind.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
)

var dnsLeftovers sync.Once

func newDNSLab(t *testing.T) (*Lab, *DNSLab) {
	t.Helper()
	lab := newLab(t)
	dnsLeftovers.Do(func() {
		if removed, err := RemoveDNSLeftovers(); len(removed) > 0 || err != nil {
			t.Logf("removed DNS leftovers of earlier runs: %v (errors: %v)", removed, err)
		}
	})
	d, err := lab.StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab DNS logs:\n%s", d.Logs())
		}
		if err := d.Close(); err != nil {
			t.Errorf("closing the lab's DNS: %v", err)
		}
	})
	return lab, d
}

// TestDNSLab checks the lab's DNS with no k8stunnel running, so a broken lab is not blamed on the tunnel.
func TestDNSLab(t *testing.T) {
	lab, d := newDNSLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// From the node, through the kube-proxy-like DNAT, as the helper will ask.
	for _, network := range []string{"udp", "tcp"} {
		resp, err := Query(ctx, lab.Node, network, ClusterDNSIP+":53", ServiceName, dns.TypeA)
		if err != nil {
			t.Fatalf("node asking the cluster DNS over %s: %v", network, err)
		}
		if got := dnsAddrs(resp); !slices.Equal(got, []string{ServiceIP}) {
			t.Errorf("node asking the cluster DNS over %s for %s: %v, want %s", network, ServiceName, got, ServiceIP)
		}
	}
	resp, err := Query(ctx, lab.Node, "tcp", ClusterDNSIP+":53", BigServiceName, dns.TypeA)
	if err != nil || len(dnsAddrs(resp)) != BigServiceAddrs {
		t.Errorf("node asking for %s over TCP: %v, %v; want %d addresses", BigServiceName, resp, err, BigServiceAddrs)
	}
	resp, err = Query(ctx, lab.Node, "udp", ClusterDNSIP+":53", "missing.default.svc.cluster.local", dns.TypeA)
	if err != nil || resp.Rcode != dns.RcodeNameError {
		t.Errorf("node asking for a missing service: %v, %v; want NXDOMAIN", resp, err)
	}

	// The laptop's own resolver knows its one name and nothing else.
	out, err := lab.Laptop.Output(ctx, "getent", "hosts", ExternalName)
	if err != nil || !strings.HasPrefix(out, ExternalAddr+" ") {
		t.Errorf("laptop: getent hosts %s = %q, %v; want %s from its resolv.conf", ExternalName, out, err, ExternalAddr)
	}
	for _, name := range []string{"web.default", ServiceName} {
		resp, err = Query(ctx, lab.Laptop, "udp", LaptopResolverAddr+":53", name, dns.TypeA)
		if err != nil || resp.Rcode != dns.RcodeNameError {
			t.Errorf("laptop resolver asked for %s: %v, %v; want NXDOMAIN", name, resp, err)
		}
	}
	if out, err := lab.Laptop.Output(ctx, "getent", "hosts", ServiceName); err == nil {
		t.Errorf("laptop resolves %s without a tunnel (%q); the lab would prove nothing", ServiceName, out)
	}
	if b, err := os.ReadFile(d.ResolvConf); err != nil || string(b) != "nameserver "+LaptopResolverAddr+"\n" {
		t.Errorf("%s = %q, %v", d.ResolvConf, b, err)
	}
}

// TestDNSProxyInLab runs the client's DNS proxy in-process inside the laptop namespace, with a "tunnel" that dials
// from the node namespace as the helper does, against the lab's real dnsmasqs. Queries go straight to the proxy:
// there are no firewall rules here.
func TestDNSProxyInLab(t *testing.T) {
	lab, _ := newDNSLab(t)
	var proxy *dnsproxy.Proxy
	// Sockets belong to the namespace of the thread that creates them: the proxy's listeners are made inside the
	// laptop, and so is the fresh socket of each query to the laptop's resolver (DialUpstream).
	err := lab.Laptop.Do(func() error {
		var err error
		proxy, err = dnsproxy.New(dnsproxy.Config{
			ClusterDNS: netip.MustParseAddr(ClusterDNSIP),
			Search:     []string{"default"},
			Upstreams:  []netip.AddrPort{netip.MustParseAddrPort(LaptopResolverAddr + ":53")},
			Listen:     []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			Dial: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
				return lab.Node.Dial(ctx, "tcp", dst.String())
			},
			DialUpstream: lab.Laptop.Dial,
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- proxy.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy: %v", err)
		}
	})
	server := fmt.Sprintf("127.0.0.1:%d", proxy.Port())

	qctx, qcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer qcancel()
	ask := func(network, name string) *dns.Msg {
		t.Helper()
		resp, err := Query(qctx, lab.Laptop, network, server, name, dns.TypeA)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if got := dnsAddrs(ask("udp", ServiceName)); !slices.Equal(got, []string{ServiceIP}) {
		t.Errorf("%s: %v, want %s", ServiceName, got, ServiceIP)
	}
	if got := dnsAddrs(ask("udp", ExternalName)); !slices.Equal(got, []string{ExternalAddr}) {
		t.Errorf("%s: %v, want %s from the laptop's resolver", ExternalName, got, ExternalAddr)
	}
	if got := dnsAddrs(ask("udp", "web")); !slices.Equal(got, []string{ServiceIP}) {
		t.Errorf("short name web: %v, want %s", got, ServiceIP)
	}
	if got := dnsAddrs(ask("udp", "web.default")); !slices.Equal(got, []string{ServiceIP}) {
		t.Errorf("short name web.default: %v, want %s", got, ServiceIP)
	}
	if resp := ask("udp", BigServiceName); !resp.Truncated {
		t.Errorf("%s over UDP: not truncated, %d answers", BigServiceName, len(resp.Answer))
	}
	for _, name := range []string{BigServiceName, BigExternalName} {
		if got := dnsAddrs(ask("tcp", name)); len(got) != BigServiceAddrs {
			t.Errorf("%s over TCP: %d addresses, want %d", name, len(got), BigServiceAddrs)
		}
	}
}

// requireDNSFlag fails when the binary under test lacks the DNS flags: a build
// without them must not pass the DNS tests by skipping them.
func requireDNSFlag(t *testing.T) {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	out, _ := exec.Command(binary, "--help").CombinedOutput()
	if !strings.Contains(string(out), "--dns-search") {
		t.Fatalf("k8stunnel --help lists no --dns-search flag; output:\n%s", out)
	}
}

// startDNSClient runs k8stunnel with DNS for the lab's cluster and waits until it is ready.
func startDNSClient(t *testing.T, lab *Lab, extra ...string) *Client {
	t.Helper()
	args := append([]string{"-v", "--dns", "--cluster-dns", ClusterDNSIP}, extra...)
	c, err := lab.StartClient(append(args, lab.ClientArgs(ServiceCIDR, PodCIDR)...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("k8stunnel stderr:\n%s", c.Stderr())
		}
		select {
		case <-c.Exited():
		default:
			c.kill()
		}
	})
	if err := c.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// laptopDNSState is everything about the laptop's DNS that k8stunnel could change: its resolv.conf (as a file on
// the machine, and as the laptop's programs see it) and its firewall.
func laptopDNSState(t *testing.T, lab *Lab, d *DNSLab) string {
	t.Helper()
	file, err := os.ReadFile(d.ResolvConf)
	if err != nil {
		t.Fatal(err)
	}
	seen, err := lab.Laptop.Output(context.Background(), "cat", "/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("== %s ==\n%s== /etc/resolv.conf in the laptop ==\n%s%s", d.ResolvConf, file, seen, iptablesSave(t, lab))
}

func getent(ctx context.Context, lab *Lab, db, name string) (string, error) {
	return lab.Laptop.Output(ctx, "getent", db, name)
}

// TestDNSTunnel: with --dns the laptop's ordinary tools resolve cluster names through the tunnel, other names
// still through the laptop's own resolver, and short names with --dns-search.
func TestDNSTunnel(t *testing.T) {
	requireRoot(t)
	requireDNSFlag(t)
	lab, d := newDNSLab(t)
	before := laptopDNSState(t, lab, d)
	c := startDNSClient(t, lab, "--dns-search", "default")
	if during := iptablesSave(t, lab); !strings.Contains(during, LaptopResolverAddr) {
		t.Errorf("k8stunnel is ready but captures no DNS to %s:\n%s", LaptopResolverAddr, during)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("curl a service by name", func(t *testing.T) {
		out, err := lab.Laptop.Output(ctx, "curl", "-sS", "--max-time", "5", "http://"+ServiceName+"/")
		if err != nil || !strings.Contains(out, "hello from pod") {
			t.Errorf("curl http://%s/: %q, %v", ServiceName, out, err)
		}
	})
	t.Run("other names by the laptop's resolver", func(t *testing.T) {
		out, err := getent(ctx, lab, "hosts", ExternalName)
		if err != nil || !strings.HasPrefix(out, ExternalAddr+" ") {
			t.Errorf("getent hosts %s = %q, %v; want %s", ExternalName, out, err, ExternalAddr)
		}
		if log := d.ResolverLog(); strings.Contains(log, "cluster.local") {
			t.Errorf("the laptop's resolver was asked for cluster names:\n%s", log)
		}
	})
	t.Run("short names with --dns-search", func(t *testing.T) {
		for _, name := range []string{"web", "web.default"} {
			out, err := getent(ctx, lab, "hosts", name)
			if err != nil || !strings.HasPrefix(out, ServiceIP+" ") {
				t.Errorf("getent hosts %s = %q, %v; want %s", name, out, err, ServiceIP)
			}
		}
		out, err := lab.Laptop.Output(ctx, "curl", "-sS", "--max-time", "5", "http://web.default/")
		if err != nil || !strings.Contains(out, "you asked for http://web.default/") {
			t.Errorf("curl http://web.default/: %q, %v", out, err)
		}
	})
	// glibc asks over UDP with 512 bytes, gets TC and asks again over TCP: both TCP paths, through the tunnel and
	// to the laptop's resolver from a marked socket, are taken.
	t.Run("large answers over TCP", func(t *testing.T) {
		for _, name := range []string{BigServiceName, BigExternalName} {
			out, err := getent(ctx, lab, "ahostsv4", name)
			addrs := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if f := strings.Fields(line); len(f) > 0 {
					addrs[f[0]] = true
				}
			}
			if err != nil || len(addrs) != BigServiceAddrs {
				t.Errorf("getent ahostsv4 %s: %d addresses (%v), want %d", name, len(addrs), err, BigServiceAddrs)
			}
		}
	})

	if err := c.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("k8stunnel did not exit cleanly: %v", err)
	}
	if after := laptopDNSState(t, lab, d); after != before {
		t.Errorf("the laptop's DNS setup differs after k8stunnel exited\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if out, err := getent(ctx, lab, "hosts", ExternalName); err != nil || !strings.HasPrefix(out, ExternalAddr+" ") {
		t.Errorf("after exit: getent hosts %s = %q, %v; the laptop's DNS must work as before", ExternalName, out, err)
	}
	assertRootNamespaceUntouched(t)
}

// TestDNSPrivilegeSplit: run by a normal user, k8stunnel cannot mark the sockets of its queries to the laptop's
// resolver itself; its root firewall child marks them, so those queries still get past the capture rules instead of
// looping back into the proxy. Both ways sudo runs the child are covered: as its direct child, and from a terminal
// (use_pty) under a second sudo.
func TestDNSPrivilegeSplit(t *testing.T) {
	requireDNSFlag(t)
	lab, _ := newDNSLab(t)
	pub, env := setupSplit(t, lab)
	argv := AsUser("nobody", "nogroup", pub, "-v", "--dns", "--cluster-dns", ClusterDNSIP, "-r", "root@"+NodeAddr, ServiceCIDR, PodCIDR)
	resolves := func(t *testing.T, stderr func() string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for name, want := range map[string]string{ExternalName: ExternalAddr, ServiceName: ServiceIP} {
			if out, err := getent(ctx, lab, "hosts", name); err != nil || !strings.HasPrefix(out, want+" ") {
				t.Errorf("getent hosts %s = %q, %v; want %s", name, out, err, want)
			}
		}
		// Too large for UDP: asked again over TCP, from a marked TCP socket.
		if out, err := getent(ctx, lab, "ahostsv4", BigExternalName); err != nil || len(strings.Split(strings.TrimSpace(out), "\n")) < BigServiceAddrs {
			t.Errorf("getent ahostsv4 %s: %q, %v; want %d addresses", BigExternalName, out, err, BigServiceAddrs)
		}
		if t.Failed() {
			t.Logf("k8stunnel stderr:\n%s", stderr())
		}
	}

	t.Run("without a terminal", func(t *testing.T) {
		c, err := StartClientCmd(lab, func(cmd *exec.Cmd) { cmd.Env = env }, argv[0], argv[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		watchClient(t, c)
		if err := c.WaitReady(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkSplit(t, lab, pub, c.Pid())
		resolves(t, c.Stderr)
		if err := c.Stop(syscall.SIGTERM); err != nil {
			t.Errorf("k8stunnel did not exit cleanly: %v", err)
		}
	})
	t.Run("in the background of a terminal", func(t *testing.T) {
		job := startBackgroundJob(t, lab, env, argv[0], argv[1:]...)
		if !job.waitNotStopped(t, true, 30*time.Second) {
			t.Fatalf("k8stunnel exited before it was ready: %v\n%s", job.err, job.Stderr())
		}
		checkSplit(t, lab, pub, job.pid)
		resolves(t, job.Stderr)
		if err := syscall.Kill(job.pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := job.Wait(StopTimeout); err != nil {
			t.Errorf("after SIGHUP: %v, want exit status 0", err)
		}
	})
}

// TestDNSKilled: a client killed with SIGKILL leaves the laptop's DNS as it was; its firewall child takes the
// capture rules out.
func TestDNSKilled(t *testing.T) {
	requireRoot(t)
	requireDNSFlag(t)
	lab, d := newDNSLab(t)
	before := laptopDNSState(t, lab, d)
	c := startDNSClient(t, lab)
	if err := c.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.Exited()
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := laptopDNSState(t, lab, d)
		if after == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5s after SIGKILL the laptop's DNS setup still differs\nbefore:\n%s\nafter:\n%s", before, after)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := getent(ctx, lab, "hosts", ExternalName); err != nil || !strings.HasPrefix(out, ExternalAddr+" ") {
		t.Errorf("after SIGKILL: getent hosts %s = %q, %v", ExternalName, out, err)
	}
}

// TestDNSDiscover: with -N and --dns and nothing else, the helper finds the CIDRs and the cluster DNS on the node.
func TestDNSDiscover(t *testing.T) {
	requireRoot(t)
	requireDNSFlag(t)
	lab, _ := newDNSLab(t)
	files := map[string]string{
		"etc/kubernetes/manifests/kube-apiserver.yaml": "    - kube-apiserver\n    - --service-cluster-ip-range=" + ServiceCIDR + "\n",
		"var/lib/kubelet/config.yaml":                  "clusterDNS:\n- " + ClusterDNSIP + "\nclusterDomain: cluster.local\n",
		"run/flannel/subnet.env":                       "FLANNEL_NETWORK=" + PodCIDR + "\nFLANNEL_SUBNET=10.244.1.1/24\n",
		"etc/resolv.conf":                              "nameserver " + ClusterDNSIP + "\n",
	}
	helper := fakeNodeHelper(t, lab, files)
	c, err := lab.StartClient(append([]string{"-v", "-N", "--dns", "--remote-cmd", helper}, lab.ClientArgs()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("k8stunnel stderr:\n%s", c.Stderr())
		}
		c.Stop(syscall.SIGTERM)
	})
	if err := c.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"service CIDR " + ServiceCIDR + " from /etc/kubernetes/manifests/kube-apiserver.yaml",
		"pod CIDR " + PodCIDR + " from /run/flannel/subnet.env",
		"cluster DNS " + ClusterDNSIP + " from /var/lib/kubelet/config.yaml",
	} {
		if !strings.Contains(c.Stderr(), want) {
			t.Errorf("k8stunnel does not report %q", want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := lab.Laptop.Output(ctx, "curl", "-sS", "--max-time", "5", "http://"+ServiceName+"/")
	if err != nil || !strings.Contains(out, "hello from pod") {
		t.Errorf("curl http://%s/ with discovered CIDRs and DNS: %q, %v", ServiceName, out, err)
	}
	// The bind mounts lived and died with the helper's own mount namespace.
	for path, text := range files {
		if b, err := os.ReadFile("/" + path); err == nil && string(b) == text {
			t.Errorf("the fake node's /%s shows in the machine's file system", path)
		}
	}
}

// TestDNSDiscoverNothing: -N on a node where nothing is found is an error that names what to pass instead.
func TestDNSDiscoverNothing(t *testing.T) {
	requireRoot(t)
	requireDNSFlag(t)
	lab := newLab(t)
	helper := fakeNodeHelper(t, lab, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := lab.Laptop.Command(ctx, binary, append([]string{"-N", "--remote-cmd", helper}, lab.ClientArgs()...)...).CombinedOutput()
	if err == nil {
		t.Fatalf("k8stunnel -N on an empty node succeeded:\n%s", out)
	}
	for _, want := range []string{"found no pod or service CIDR", "hint:", "10.96.0.0/12 10.244.0.0/16"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if after := iptablesSave(t, lab); strings.Contains(after, "K8STUNNEL") {
		t.Errorf("rules left behind:\n%s", after)
	}
}

// fakeNodeHelper returns a --remote-cmd that runs the helper on a fake node: in a private mount namespace of its
// own, with /etc, /var/lib and /run replaced by a tree holding only files (paths relative to /). The machine's
// files stay untouched: the mounts end with the helper.
func fakeNodeHelper(t *testing.T, lab *Lab, files map[string]string) string {
	t.Helper()
	fake := filepath.Join(lab.Dir, "fake-node")
	for _, dir := range []string{"etc", "var/lib", "run"} {
		if err := os.MkdirAll(filepath.Join(fake, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for path, text := range files {
		full := filepath.Join(fake, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := "#!/bin/sh\nset -e\n"
	for _, dir := range []string{"/etc", "/var/lib", "/run"} {
		script += fmt.Sprintf("mount --bind %s %s\n", filepath.Join(fake, dir), dir)
	}
	script += fmt.Sprintf("exec %s server \"$@\"\n", binary)
	helper := filepath.Join(lab.Dir, "fake-node-helper")
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return "unshare --mount --propagation private " + helper
}
