//go:build linux

package e2e

// DNS in the lab, added to a running Lab by StartDNS:
//
//	laptop ns                          node ns                               pod ns
//	/etc/netns/<laptop>/resolv.conf:   kube-proxy-like nat DNAT              dnsmasq 10.244.1.53:53 plays CoreDNS:
//	  nameserver 127.0.0.53              10.96.0.53:53 udp+tcp                 authoritative for cluster.local,
//	dnsmasq 127.0.0.53:53 plays the      → 10.244.1.53:53                      web.default.svc → 10.96.0.10,
//	  laptop's own resolver:             (OUTPUT: the helper dials from        big.default.svc → 40 addresses,
//	  example.test → 10.200.1.7,          the node itself; and PREROUTING)     NXDOMAIN for the rest
//	  NXDOMAIN for the rest, never
//	  forwards anything
//
// `ip netns exec` bind-mounts /etc/netns/<laptop>/* over /etc, so every program the lab runs in the laptop (curl,
// getent, k8stunnel) sees that resolv.conf and nsswitch.conf as its own; the machine's /etc/resolv.conf is never
// touched.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

const (
	// ClusterDNSIP is the cluster DNS service IP (what kube-dns' Service has); the node DNATs it to ClusterDNSPodAddr.
	ClusterDNSIP      = "10.96.0.53"
	ClusterDNSPodAddr = "10.244.1.53"
	// ServiceName resolves to ServiceIP, so http://ServiceName/ reaches the pod's HTTP server.
	ServiceName = "web.default.svc.cluster.local"
	// BigServiceName has BigServiceAddrs A records: more than a 512-byte UDP answer holds.
	BigServiceName  = "big.default.svc.cluster.local"
	BigServiceAddrs = 40

	// LaptopResolverAddr is where the laptop's own resolver listens, as systemd-resolved's stub does.
	LaptopResolverAddr = "127.0.0.53"
	// ExternalName is the one name the laptop's resolver knows; it answers ExternalAddr.
	ExternalName = "example.test"
	ExternalAddr = "10.200.1.7"
	// BigExternalName has BigServiceAddrs A records at the laptop's resolver.
	BigExternalName = "big.example.test"
)

// DNSLab is the DNS part of a Lab. Close it before the Lab.
type DNSLab struct {
	lab *Lab
	// ResolvConf is the laptop's resolv.conf as a path on the machine (under /etc/netns).
	ResolvConf string

	dir        string // /etc/netns/<laptop ns>
	madeParent bool   // /etc/netns did not exist before
	dnsmasqs   []*dnsmasq
	logs       []*syncBuffer
}

const laptopResolver = "laptop-resolver"

type dnsmasq struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// StartDNS adds cluster DNS, its DNAT and the laptop's own resolver to l, and waits until both resolvers answer.
func (l *Lab) StartDNS() (d *DNSLab, err error) {
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		return nil, fmt.Errorf("starting the lab's DNS: %w\nhint: install the test dependencies with: sudo scripts/deps.sh", err)
	}
	d = &DNSLab{lab: l, dir: filepath.Join("/etc/netns", l.Laptop.Name)}
	defer func() {
		if err != nil {
			d.Close()
			d = nil
		}
	}()

	node, pod := l.Node.Name, l.Pod.Name
	steps := [][]string{
		{"ip", "-n", pod, "addr", "add", ClusterDNSPodAddr + "/24", "dev", "eth0"},
	}
	for _, chain := range []string{"OUTPUT", "PREROUTING"} {
		for _, proto := range []string{"udp", "tcp"} {
			steps = append(steps, []string{"ip", "netns", "exec", node, "iptables", "-w", "-t", "nat", "-A", chain,
				"-d", ClusterDNSIP, "-p", proto, "--dport", "53", "-j", "DNAT", "--to-destination", ClusterDNSPodAddr + ":53"})
		}
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("building the lab's DNS: %w", err)
		}
	}

	if _, err := os.Stat(filepath.Dir(d.dir)); errors.Is(err, os.ErrNotExist) {
		d.madeParent = true
	}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", d.dir, err)
	}
	d.ResolvConf = filepath.Join(d.dir, "resolv.conf")
	if err := os.WriteFile(d.ResolvConf, []byte("nameserver "+LaptopResolverAddr+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("writing the laptop's resolv.conf: %w", err)
	}
	// No mdns or systemd-resolved NSS module that the machine may have: lookups go to resolv.conf's nameserver.
	if err := os.WriteFile(filepath.Join(d.dir, "nsswitch.conf"), []byte("hosts: files dns\n"), 0o644); err != nil {
		return nil, fmt.Errorf("writing the laptop's nsswitch.conf: %w", err)
	}

	cluster := []string{"--listen-address=" + ClusterDNSPodAddr, "--local=/cluster.local/",
		"--host-record=" + ServiceName + "," + ServiceIP}
	laptop := []string{"--listen-address=" + LaptopResolverAddr, "--address=/#/",
		"--host-record=" + ExternalName + "," + ExternalAddr}
	for i := 1; i <= BigServiceAddrs; i++ {
		cluster = append(cluster, fmt.Sprintf("--host-record=%s,10.96.1.%d", BigServiceName, i))
		laptop = append(laptop, fmt.Sprintf("--host-record=%s,10.200.2.%d", BigExternalName, i))
	}
	if err := d.startDnsmasq("cluster-dns", l.Pod, cluster); err != nil {
		return nil, err
	}
	if err := d.startDnsmasq(laptopResolver, l.Laptop, laptop); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.waitAnswer(ctx, l.Node, ClusterDNSIP+":53", ServiceName); err != nil {
		return nil, err
	}
	if err := d.waitAnswer(ctx, l.Laptop, LaptopResolverAddr+":53", ExternalName); err != nil {
		return nil, err
	}
	return d, nil
}

// startDnsmasq runs dnsmasq in ns with only the given data: no config file, no /etc/hosts, no upstream servers.
func (d *DNSLab) startDnsmasq(name string, ns *Netns, args []string) error {
	m := &dnsmasq{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	args = append([]string{
		"--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--bind-interfaces",
		"--pid-file=" + filepath.Join(d.lab.Dir, name+".pid"), "--log-facility=-", "--log-queries", "--user=root",
	}, args...)
	m.cmd = ns.Command(context.Background(), "dnsmasq", args...)
	m.cmd.Stdout = m.log
	m.cmd.Stderr = m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		return fmt.Errorf("starting dnsmasq (%s): %w", name, err)
	}
	go func() {
		m.cmd.Wait()
		close(m.done)
	}()
	d.dnsmasqs = append(d.dnsmasqs, m)
	return nil
}

// waitAnswer asks server from ns until it answers name, polling until ctx ends.
func (d *DNSLab) waitAnswer(ctx context.Context, ns *Netns, server, name string) error {
	var last error
	for {
		for _, m := range d.dnsmasqs {
			select {
			case <-m.done:
				return fmt.Errorf("dnsmasq (%s) exited at start: %v\n%s", m.name, m.cmd.ProcessState, m.log)
			default:
			}
		}
		resp, err := Query(ctx, ns, "udp", server, name, dns.TypeA)
		if err == nil && len(resp.Answer) > 0 {
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("answer without records: %v", resp)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no answer for %s from %s in %s: %v\n%s", name, server, ns.Name, last, d.Logs())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Logs returns what the dnsmasqs logged (every query), for a failing test.
func (d *DNSLab) Logs() string {
	var s string
	for _, m := range d.dnsmasqs {
		s += fmt.Sprintf("--- dnsmasq %s ---\n%s", m.name, m.log)
	}
	return s
}

// ResolverLog returns what the laptop's own resolver logged: every query it got.
func (d *DNSLab) ResolverLog() string {
	for _, m := range d.dnsmasqs {
		if m.name == laptopResolver {
			return m.log.String()
		}
	}
	return ""
}

// Close stops the dnsmasqs and removes the laptop's /etc/netns directory. The DNAT and addresses go with the Lab's
// namespaces.
func (d *DNSLab) Close() error {
	for _, m := range d.dnsmasqs {
		syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.done
	}
	d.dnsmasqs = nil
	if err := os.RemoveAll(d.dir); err != nil {
		return fmt.Errorf("removing %s: %w", d.dir, err)
	}
	if d.madeParent {
		// Only if empty: another lab may be using it by now.
		os.Remove(filepath.Dir(d.dir))
	}
	return nil
}

// RemoveDNSLeftovers deletes the /etc/netns directories of labs whose process no longer runs (and of this process).
func RemoveDNSLeftovers() ([]string, error) {
	var removed []string
	var errs []error
	entries, _ := os.ReadDir("/etc/netns")
	for _, e := range entries {
		m := leftoverName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid != os.Getpid() && syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		dir := filepath.Join("/etc/netns", e.Name())
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "dir "+dir)
	}
	return removed, errors.Join(errs...)
}

// Query asks server (IP:port) about name from inside ns, over network "udp" or "tcp".
func Query(ctx context.Context, ns *Netns, network, server, name string, qtype uint16) (*dns.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	c, err := ns.Dial(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	co := &dns.Conn{Conn: c, UDPSize: dns.MaxMsgSize}
	req := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	if err := co.WriteMsg(req); err != nil {
		return nil, fmt.Errorf("asking %s about %s: %w", server, name, err)
	}
	for {
		resp, err := co.ReadMsg()
		if err != nil {
			return nil, fmt.Errorf("asking %s about %s: %w", server, name, err)
		}
		if resp.Id == req.Id {
			return resp, nil
		}
	}
}

// dnsAddrs returns the A records' addresses of m.
func dnsAddrs(m *dns.Msg) []string {
	var addrs []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			addrs = append(addrs, a.A.String())
		}
	}
	return addrs
}
