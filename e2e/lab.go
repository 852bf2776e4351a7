//go:build linux

// Package e2e runs k8stunnel end to end: a laptop, a Kubernetes-like node with a real OpenSSH server and a pod,
// each in its own network namespace, so the real binary, real iptables and a real sshd meet without touching the
// machine's own network. The lab is plain code (no *testing.T) so the demo program can drive it too.
package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Addresses of the lab. They exist only inside the lab's namespaces; nothing is ever sent outside them.
const (
	LaptopAddr = "10.200.1.2"
	NodeAddr   = "10.200.1.1" // where sshd listens
	// DeadGateway is the laptop's default gateway, which nobody answers: a packet the tunnel does not capture goes
	// nowhere instead of reaching something by accident.
	DeadGateway = "10.200.1.254"

	NodePodSideAddr = "10.244.1.1"
	PodAddr         = "10.244.1.10"
	PodHTTPPort     = 8080
	ServiceIP       = "10.96.0.10" // DNATed by the node to PodAddr:PodHTTPPort, like kube-proxy
	ServicePort     = 80
	// UnreachableNet has an "unreachable" route on the node, so dialling into it fails at once.
	UnreachableNet = "10.244.9.0/24"

	ServiceCIDR = "10.96.0.0/12"
	PodCIDR     = "10.244.0.0/16"
)

// namePrefix starts every namespace and temp dir of a lab; the PID after it lets a later run tell leftovers of a dead
// run from the labs of a live one.
const namePrefix = "k8t-"

var labSeq atomic.Int64

// open holds the labs not yet closed, so a signal handler can remove them all (CloseAll) before the process dies.
var open struct {
	sync.Mutex
	labs map[*Lab]bool
}

// CloseAll closes every lab of this process that is still open; for signal handlers.
func CloseAll() error {
	open.Lock()
	var labs []*Lab
	for l := range open.labs {
		labs = append(labs, l)
	}
	open.Unlock()
	var errs []error
	for _, l := range labs {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// Options configures a Lab.
type Options struct {
	// Binary is the k8stunnel binary StartClient runs. Only needed for StartClient.
	Binary string
	// ClientLog, when set, receives a copy of every client's stderr as it is written (the demo shows it live).
	ClientLog io.Writer
	// NodePath, when set, comes first in the PATH of sessions on the node (a fake uname, say).
	NodePath string
}

// Lab is the running topology. Create it with New and always Close it.
type Lab struct {
	Laptop *Netns
	Node   *Netns
	Pod    *Netns

	Dir        string // temp dir with keys, sshd config and the node user's home
	Identity   string // client private key (OpenSSH format)
	KnownHosts string // known_hosts with the node's host key for NodeAddr
	NodeHome   string // $HOME of root in sessions of the lab's sshd; the client uploads itself below it

	opts       Options
	namespaces []*Netns
	sshd       *SSHD   // the node's, on NodeAddr:22
	sshds      []*SSHD // every sshd of the lab, for Close
	hostKey    string  // the node's host key file
	httpServer *http.Server

	mu      sync.Mutex
	clients []*Client

	closeOnce sync.Once
	closeErr  error
}

// New builds the topology and starts sshd on the node and an HTTP server in the pod. Needs root.
func New(opts Options) (lab *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("creating the e2e lab: need root to create network namespaces (run with sudo)")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save", "ip6tables-save", sshdPath} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("creating the e2e lab: %w\nhint: install the test dependencies with: sudo scripts/deps.sh", err)
		}
	}

	prefix := fmt.Sprintf("%s%d-%d", namePrefix, os.Getpid(), labSeq.Add(1))
	l := &Lab{
		Laptop: &Netns{Name: prefix + "-laptop"},
		Node:   &Netns{Name: prefix + "-node"},
		Pod:    &Netns{Name: prefix + "-pod"},
		opts:   opts,
	}
	open.Lock()
	if open.labs == nil {
		open.labs = map[*Lab]bool{}
	}
	open.labs[l] = true
	open.Unlock()
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
			lab = nil
		}
	}()

	if l.Dir, err = os.MkdirTemp("", prefix+"-"); err != nil {
		return nil, fmt.Errorf("creating the lab's temp dir: %w", err)
	}
	if err := l.createNetwork(); err != nil {
		return nil, err
	}
	if err := l.startSSHD(); err != nil {
		return nil, err
	}
	if err := l.startHTTP(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Lab) createNetwork() error {
	for _, ns := range []*Netns{l.Laptop, l.Node, l.Pod} {
		if err := run("ip", "netns", "add", ns.Name); err != nil {
			return fmt.Errorf("creating namespace %s: %w", ns.Name, err)
		}
		l.namespaces = append(l.namespaces, ns)
	}
	lap, node, pod := l.Laptop.Name, l.Node.Name, l.Pod.Name
	// Veths are created inside the namespaces (ip -n), so the root namespace never sees a new link.
	steps := [][]string{
		{"ip", "-n", lap, "link", "add", "eth0", "type", "veth", "peer", "name", "laptop0", "netns", node},
		{"ip", "-n", node, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", pod},

		{"ip", "-n", lap, "link", "set", "lo", "up"},
		{"ip", "-n", lap, "addr", "add", LaptopAddr + "/24", "dev", "eth0"},
		{"ip", "-n", lap, "link", "set", "eth0", "up"},
		{"ip", "-n", lap, "route", "add", "default", "via", DeadGateway},

		{"ip", "-n", node, "link", "set", "lo", "up"},
		{"ip", "-n", node, "addr", "add", NodeAddr + "/24", "dev", "laptop0"},
		{"ip", "-n", node, "link", "set", "laptop0", "up"},
		{"ip", "-n", node, "addr", "add", NodePodSideAddr + "/24", "dev", "pod0"},
		{"ip", "-n", node, "link", "set", "pod0", "up"},
		// A real node has an uplink; here it leads nowhere. Without any route to the service CIDR, connect() would
		// fail with ENETUNREACH before kube-proxy's DNAT in nat OUTPUT ever saw the packet.
		{"ip", "-n", node, "route", "add", "default", "via", "10.244.1.254"},
		{"ip", "-n", node, "route", "add", "unreachable", UnreachableNet},
		{"ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		// kube-proxy: PREROUTING for traffic routed through the node, OUTPUT for connections the node itself
		// opens, which is what the k8stunnel helper does.
		{"ip", "netns", "exec", node, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", ServiceIP, "-p", "tcp",
			"--dport", strconv.Itoa(ServicePort), "-j", "DNAT", "--to-destination", podHTTPAddr()},
		{"ip", "netns", "exec", node, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-d", ServiceIP, "-p", "tcp",
			"--dport", strconv.Itoa(ServicePort), "-j", "DNAT", "--to-destination", podHTTPAddr()},

		{"ip", "-n", pod, "link", "set", "lo", "up"},
		{"ip", "-n", pod, "addr", "add", PodAddr + "/24", "dev", "eth0"},
		{"ip", "-n", pod, "link", "set", "eth0", "up"},
		{"ip", "-n", pod, "route", "add", "default", "via", NodePodSideAddr},

		// Rules the laptop's user already had. k8stunnel must leave them alone and in place, and they make the
		// laptop's nat table exist before the client runs, so before/after comparisons are exact.
		{"ip", "netns", "exec", lap, "iptables", "-w", "-t", "nat", "-N", "LAB-USER"},
		{"ip", "netns", "exec", lap, "iptables", "-w", "-t", "nat", "-A", "LAB-USER", "-d", "192.0.2.7/32", "-j", "RETURN"},
		{"ip", "netns", "exec", lap, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.0/24", "-j", "LAB-USER"},
		{"ip", "netns", "exec", lap, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", "192.0.2.0/24", "-j", "LAB-USER"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("building the lab network: %w", err)
		}
	}
	return nil
}

const sshdPath = "/usr/sbin/sshd" // sshd insists on an absolute path, it re-executes itself

func (l *Lab) startSSHD() error {
	hostKey, hostPub, err := writeKey(filepath.Join(l.Dir, "ssh_host_ed25519_key"), "lab-node")
	if err != nil {
		return err
	}
	l.Identity = filepath.Join(l.Dir, "id_ed25519")
	_, clientPub, err := writeKey(l.Identity, "lab-client")
	if err != nil {
		return err
	}
	authorized := filepath.Join(l.Dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		return fmt.Errorf("writing authorized_keys: %w", err)
	}
	l.KnownHosts = filepath.Join(l.Dir, "known_hosts")
	if err := os.WriteFile(l.KnownHosts, []byte(NodeAddr+" "+string(ssh.MarshalAuthorizedKey(hostPub))), 0o600); err != nil {
		return fmt.Errorf("writing known_hosts: %w", err)
	}
	l.NodeHome = filepath.Join(l.Dir, "node-home")
	if err := os.Mkdir(l.NodeHome, 0o700); err != nil {
		return fmt.Errorf("creating the node's home: %w", err)
	}
	// sshd refuses to start without its privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return fmt.Errorf("creating /run/sshd: %w", err)
	}

	l.hostKey = hostKey
	// SetEnv HOME gives root's sessions a home inside the lab dir, so what the client uploads to
	// $HOME/.cache/k8stunnel goes away with the lab instead of piling up in the machine's /root.
	l.sshd, err = l.StartSSHD(l.Node, "sshd", []string{NodeAddr + ":22", "127.0.0.1:22"},
		"AuthorizedKeysFile "+authorized,
		"SetEnv HOME="+l.NodeHome+l.nodePath())
	return err
}

// SSHD is one OpenSSH server of the lab.
type SSHD struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// Log returns what this sshd has logged so far (it runs with -e and LogLevel VERBOSE).
func (d *SSHD) Log() string { return d.log.String() }

func (d *SSHD) stop() {
	syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
}

// StartSSHD starts an OpenSSH server in ns, named name in the lab dir, listening on listen (host:port, the first
// one is awaited), with config and then the lab's defaults: the node's host key unless config names one, key logins
// only, StrictModes off. sshd takes the first value of a keyword, so config overrides the defaults. Close stops it.
func (l *Lab) StartSSHD(ns *Netns, name string, listen []string, config ...string) (*SSHD, error) {
	lines := []string{}
	for _, a := range listen {
		lines = append(lines, "ListenAddress "+a)
	}
	lines = append(lines, config...)
	if !slices.ContainsFunc(config, func(c string) bool { return strings.HasPrefix(c, "HostKey ") }) {
		lines = append(lines, "HostKey "+l.hostKey)
	}
	lines = append(lines,
		"PermitRootLogin prohibit-password",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"StrictModes no",
		"UsePAM "+usePAM(),
		"UseDNS no",
		"PidFile "+filepath.Join(l.Dir, name+".pid"),
		"Subsystem sftp internal-sftp",
		"LogLevel VERBOSE",
		"",
	)
	cfg := filepath.Join(l.Dir, name+"_config")
	if err := os.WriteFile(cfg, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", cfg, err)
	}
	host, port, err := net.SplitHostPort(listen[0])
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	readyLine := "Server listening on " + host + " port " + port
	ready := make(chan struct{})
	var readyOnce sync.Once
	d := &SSHD{log: &syncBuffer{onLine: func(line string) {
		if strings.Contains(line, readyLine) {
			readyOnce.Do(func() { close(ready) })
		}
	}}}
	d.cmd = ns.Command(context.Background(), sshdPath, "-D", "-e", "-f", cfg)
	d.cmd.Stdout = d.log
	d.cmd.Stderr = d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a Ctrl-C on the demo must not reach it before we clean up
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	d.done = make(chan struct{})
	go func() {
		d.cmd.Wait()
		close(d.done)
	}()
	l.mu.Lock()
	l.sshds = append(l.sshds, d)
	l.mu.Unlock()
	select {
	case <-ready:
		return d, nil
	case <-d.done:
		return nil, fmt.Errorf("%s exited at start: %v\nsshd output:\n%s", name, d.cmd.ProcessState, d.log)
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("%s not listening after 10s\nsshd output:\n%s", name, d.log)
	}
}

// nodePath is the SetEnv PATH=... (with a leading space) that puts Options.NodePath first, or "".
func (l *Lab) nodePath() string {
	if l.opts.NodePath == "" {
		return ""
	}
	return " PATH=" + l.opts.NodePath + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

// usePAM says "no", as the lab wants, unless root's password is locked ("!" in /etc/shadow, common on hosts with
// sudo only): without PAM, sshd refuses a locked account even for key logins. With PAM the lock only concerns
// passwords; Debian's PAM stack for sshd works inside a network namespace.
func usePAM() string {
	shadow, err := os.ReadFile("/etc/shadow")
	if err != nil {
		return "no"
	}
	for _, line := range strings.Split(string(shadow), "\n") {
		if pw, ok := strings.CutPrefix(line, "root:"); ok && strings.HasPrefix(pw, "!") {
			return "yes"
		}
	}
	return "no"
}

// SSHDLog returns what sshd has logged so far (it runs with -e and LogLevel VERBOSE).
func (l *Lab) SSHDLog() string {
	if l.sshd == nil {
		return ""
	}
	return l.sshd.Log()
}

func (l *Lab) startHTTP() error {
	ln, err := l.Pod.Listen("tcp", podHTTPAddr())
	if err != nil {
		return err
	}
	l.httpServer = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from pod %s, you asked for http://%s%s\n", podHTTPAddr(), r.Host, r.URL.Path)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go l.httpServer.Serve(ln)
	return nil
}

func podHTTPAddr() string { return net.JoinHostPort(PodAddr, strconv.Itoa(PodHTTPPort)) }

// ClientArgs returns the arguments that connect a client to the lab's node, followed by cidrs.
func (l *Lab) ClientArgs(cidrs ...string) []string {
	args := []string{"-r", "root@" + NodeAddr, "-i", l.Identity, "--known-hosts", l.KnownHosts, "-F", "/dev/null"}
	return append(args, cidrs...)
}

// Close stops every process of the lab and deletes its namespaces and files. Safe to call twice.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	open.Lock()
	delete(open.labs, l)
	open.Unlock()
	var errs []error
	l.mu.Lock()
	clients := l.clients
	l.mu.Unlock()
	for _, c := range clients {
		c.kill()
	}
	if l.httpServer != nil {
		l.httpServer.Close()
	}
	l.mu.Lock()
	sshds := l.sshds
	l.mu.Unlock()
	for _, d := range sshds {
		d.stop()
	}
	// Whatever else runs in the namespaces (helpers on the node, stray firewall children) must not outlive them.
	for _, ns := range l.namespaces {
		killNamespace(ns)
	}
	for _, ns := range l.namespaces {
		if err := run("ip", "netns", "del", ns.Name); err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", ns.Name, err))
		}
	}
	if l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing the lab dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

func killNamespace(ns *Netns) {
	pids, _ := ns.Pids()
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// RemoveLeftovers deletes namespaces and temp dirs of labs whose process no longer runs (a run killed before its
// Close), and those of this process. Labs of other live processes are left alone. It returns what it removed.
func RemoveLeftovers() ([]string, error) {
	// Users and sudoers entries of dead runs (AddUser, InstallSudoers) go too.
	removeStaleSudoers()
	removeStaleUsers()
	var removed []string
	var errs []error
	stale := func(name string) bool {
		m := leftoverName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() {
			return true
		}
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		if !stale(e.Name()) {
			continue
		}
		ns := &Netns{Name: e.Name()}
		killNamespace(ns)
		if err := run("ip", "netns", "del", ns.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "netns "+ns.Name)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), namePrefix+"*"))
	pub, _ := filepath.Glob(filepath.Join(publicRoot, namePrefix+"*"))
	for _, d := range append(dirs, pub...) {
		if !stale(filepath.Base(d)) {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "dir "+d)
	}
	return removed, errors.Join(errs...)
}

var leftoverName = regexp.MustCompile(`^` + namePrefix + `(\d+)-`)

// IptablesSave returns the laptop-style view of ns's firewall and routing: iptables-save and ip6tables-save of every
// table, normalised so two snapshots compare equal exactly when the rules are the same (see NormalizeIptablesSave),
// then `ip rule` and `ip route show table all` of both families (the UDP capture adds to both).
func (l *Lab) IptablesSave(ns *Netns) (string, error) {
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := ns.Output(context.Background(), cmd)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "== %s ==\n%s", cmd, NormalizeIptablesSave(out))
	}
	for _, args := range [][]string{{"-4", "rule"}, {"-6", "rule"}, {"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"}} {
		out, err := ns.Output(context.Background(), "ip", args...)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "== ip %s ==\n%s", strings.Join(args, " "), normalizeRoutes(out))
	}
	return b.String(), nil
}

// normalizeRoutes drops the routes of IPv6 link-local addresses: the kernel adds them by itself once duplicate
// address detection ends, a moment after a link comes up, whatever k8stunnel does.
func normalizeRoutes(out string) string {
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" || strings.Contains(line, "fe80::") {
			continue
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

var counters = regexp.MustCompile(`\s*\[\d+:\d+\]`)

// NormalizeIptablesSave drops comment lines (they carry timestamps) and packet counters, and tables that hold
// nothing but empty built-in chains with policy ACCEPT: nf_tables creates a table on first use and never drops it,
// and such a table filters nothing, exactly like no table at all.
func NormalizeIptablesSave(out string) string {
	var b strings.Builder
	var table []string
	trivial := true
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = counters.ReplaceAllString(line, "")
		switch {
		case strings.HasPrefix(line, "*"):
			table, trivial = []string{line}, true
		case line == "COMMIT":
			table = append(table, line)
			if !trivial {
				b.WriteString(strings.Join(table, "\n") + "\n")
			}
			table = nil
		default:
			table = append(table, line)
			if !isEmptyBuiltinChain(line) {
				trivial = false
			}
		}
	}
	return b.String()
}

func isEmptyBuiltinChain(line string) bool {
	f := strings.Fields(line)
	if len(f) != 2 || f[1] != "ACCEPT" {
		return false
	}
	switch f[0] {
	case ":PREROUTING", ":INPUT", ":FORWARD", ":OUTPUT", ":POSTROUTING":
		return true
	}
	return false
}

// NodeHelperPids returns the processes on the node that run a k8stunnel binary (the uploaded helper).
func (l *Lab) NodeHelperPids() ([]int, error) {
	pids, err := l.Node.Pids()
	if err != nil {
		return nil, err
	}
	var helpers []int
	for _, pid := range pids {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err == nil && strings.Contains(filepath.Base(exe), "k8stunnel") {
			helpers = append(helpers, pid)
		}
	}
	return helpers, nil
}

// Netns is one named network namespace (/var/run/netns/NAME).
type Netns struct {
	Name string
}

// Command returns a command that runs in ns via `ip netns exec`, which also gives it ns's view of /sys.
func (ns *Netns) Command(ctx context.Context, name string, arg ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, arg...)...)
}

// Output runs a command in ns and returns its stdout; a failure carries stderr.
func (ns *Netns) Output(ctx context.Context, name string, arg ...string) (string, error) {
	cmd := ns.Command(ctx, name, arg...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("running %q in %s: %w: %s", append([]string{name}, arg...), ns.Name, err,
			strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Do runs fn on an OS thread that has entered ns. Sockets fn creates stay in ns for their whole life. The thread
// is never unlocked, so Go discards it when fn returns instead of reusing a thread in the wrong namespace.
func (ns *Netns) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", ns.Name))
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", ns.Name, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen listens inside ns.
func (ns *Netns) Listen(network, addr string) (ln net.Listener, err error) {
	err = ns.Do(func() error {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s in %s: %w", addr, ns.Name, err)
	}
	return ln, nil
}

// Dial connects from inside ns. addr must be an IP literal: name resolution could run on another thread.
func (ns *Netns) Dial(ctx context.Context, network, addr string) (c net.Conn, err error) {
	err = ns.Do(func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s from %s: %w", addr, ns.Name, err)
	}
	return c, nil
}

// Pids returns the processes whose network namespace is ns.
func (ns *Netns) Pids() ([]int, error) {
	out, err := exec.Command("ip", "netns", "pids", ns.Name).Output()
	if err != nil {
		return nil, fmt.Errorf("listing processes in %s: %w", ns.Name, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Client is a running `k8stunnel` in the laptop namespace.
type Client struct {
	cmd    *exec.Cmd
	log    *syncBuffer
	ready  chan struct{}
	exited chan struct{}
	err    error // from Wait, valid once exited is closed
}

// ReadyLine is what the client logs once the tunnel is up and its rules are in.
const ReadyLine = `msg="tunnel ready"`

// StopTimeout bounds how long Stop waits for the client to exit after the signal.
const StopTimeout = 10 * time.Second

// StartClient runs `k8stunnel args...` in the laptop namespace, in its own process group (so the caller decides
// which signal reaches which process) and without SSH_AUTH_SOCK (the lab key is the only credential).
func (l *Lab) StartClient(args ...string) (*Client, error) {
	if l.opts.Binary == "" {
		return nil, errors.New("starting k8stunnel: the lab has no Options.Binary")
	}
	return StartClientCmd(l, nil, l.opts.Binary, args...)
}

// Pid is the client's process id, which is also its process group id.
func (c *Client) Pid() int { return c.cmd.Process.Pid }

// Stderr returns everything the client has logged so far.
func (c *Client) Stderr() string { return c.log.String() }

// Exited is closed when the client process has exited.
func (c *Client) Exited() <-chan struct{} { return c.exited }

// WaitReady waits for ReadyLine. Without a deadline on ctx it waits 30 seconds. The error carries the client's log.
func (c *Client) WaitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	select {
	case <-c.ready:
		return nil
	case <-c.exited:
		return fmt.Errorf("k8stunnel exited before %s: %v\nk8stunnel stderr:\n%s", ReadyLine, c.err, c.Stderr())
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s: %w\nk8stunnel stderr:\n%s", ReadyLine, ctx.Err(), c.Stderr())
	}
}

// Signal sends sig to the client process only.
func (c *Client) Signal(sig syscall.Signal) error { return syscall.Kill(c.Pid(), sig) }

// SignalGroup sends sig to the client's whole process group, as a terminal's Ctrl-C does.
func (c *Client) SignalGroup(sig syscall.Signal) error { return syscall.Kill(-c.Pid(), sig) }

// Stop sends sig to the client and waits up to StopTimeout for it to exit. It returns the exit error (nil for
// exit status 0); on timeout it kills the process group and says so.
func (c *Client) Stop(sig syscall.Signal) error {
	if err := c.Signal(sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling k8stunnel: %w", err)
	}
	return c.Wait(StopTimeout)
}

// Wait waits up to timeout for the client to exit and returns its exit error; on timeout it kills the group.
func (c *Client) Wait(timeout time.Duration) error {
	select {
	case <-c.exited:
		return c.err
	case <-time.After(timeout):
		c.kill()
		return fmt.Errorf("k8stunnel still running %v after the signal; killed it", timeout)
	}
}

// kill ends the client's whole group (a surviving firewall child included) and waits for the client.
func (c *Client) kill() {
	syscall.Kill(-c.Pid(), syscall.SIGKILL)
	<-c.exited
}

// syncBuffer collects a process's output and calls onLine for each complete line.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	tee     io.Writer
	onLine  func(string)
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.tee != nil {
		b.tee.Write(p)
	}
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		if b.onLine != nil {
			b.onLine(string(b.partial[:i]))
		}
		b.partial = b.partial[i+1:]
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeKey(path, comment string) (string, ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", nil, fmt.Errorf("generating %s: %w", comment, err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", nil, fmt.Errorf("encoding %s: %w", comment, err)
	}
	// 0600: sshd and ssh both refuse private keys others can read.
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", nil, fmt.Errorf("writing %s: %w", comment, err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", nil, fmt.Errorf("encoding %s: %w", comment, err)
	}
	return path, sshPub, nil
}

func run(name string, arg ...string) error {
	out, err := exec.Command(name, arg...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(arg, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Addresses of the bastion (AddBastion): a namespace between the laptop and a network of the node's that the laptop
// has no route to.
const (
	BastionAddr       = "10.200.2.1" // the bastion's sshd, on the laptop's side
	LaptopBastionAddr = "10.200.2.2"
	NodeBehindAddr    = "10.200.3.2" // the node's address on the bastion's side; the laptop has no route to it
	bastionInnerAddr  = "10.200.3.1"
)

// Bastion is a jump host in front of the node.
type Bastion struct {
	NS *Netns
	// KnownHosts lists the bastion's host key for BastionAddr and the node's for NodeBehindAddr.
	KnownHosts string
}

// AddBastion adds a bastion namespace between the laptop and the node, with its own sshd on BastionAddr:22 that
// lets the lab's key in and forwards TCP, and the node's sshd also on NodeBehindAddr:22, which only the bastion
// reaches:
//
//	laptop 10.200.2.2 ── 10.200.2.1 bastion 10.200.3.1 ── 10.200.3.2 node
func (l *Lab) AddBastion() (*Bastion, error) {
	b := &Bastion{NS: &Netns{Name: strings.TrimSuffix(l.Laptop.Name, "-laptop") + "-bastion"}}
	if err := run("ip", "netns", "add", b.NS.Name); err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", b.NS.Name, err)
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, b.NS)
	l.mu.Unlock()
	lap, bas, node := l.Laptop.Name, b.NS.Name, l.Node.Name
	steps := [][]string{
		{"ip", "-n", lap, "link", "add", "bastion0", "type", "veth", "peer", "name", "laptop0", "netns", bas},
		{"ip", "-n", bas, "link", "add", "node0", "type", "veth", "peer", "name", "bastion0", "netns", node},
		{"ip", "-n", lap, "addr", "add", LaptopBastionAddr + "/24", "dev", "bastion0"},
		{"ip", "-n", lap, "link", "set", "bastion0", "up"},
		{"ip", "-n", bas, "link", "set", "lo", "up"},
		{"ip", "-n", bas, "addr", "add", BastionAddr + "/24", "dev", "laptop0"},
		{"ip", "-n", bas, "link", "set", "laptop0", "up"},
		{"ip", "-n", bas, "addr", "add", bastionInnerAddr + "/24", "dev", "node0"},
		{"ip", "-n", bas, "link", "set", "node0", "up"},
		{"ip", "-n", node, "addr", "add", NodeBehindAddr + "/24", "dev", "bastion0"},
		{"ip", "-n", node, "link", "set", "bastion0", "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("building the bastion's network: %w", err)
		}
	}
	authorized := filepath.Join(l.Dir, "authorized_keys")
	if _, err := l.StartSSHD(b.NS, "sshd-bastion", []string{BastionAddr + ":22"}, "AuthorizedKeysFile "+authorized); err != nil {
		return nil, err
	}
	if _, err := l.StartSSHD(l.Node, "sshd-behind", []string{NodeBehindAddr + ":22"},
		"AuthorizedKeysFile "+authorized, "SetEnv HOME="+l.NodeHome+l.nodePath()); err != nil {
		return nil, err
	}
	// The bastion shows the node's host key too; a jump host of its own key is not what is tested here.
	known, err := os.ReadFile(l.KnownHosts)
	if err != nil {
		return nil, err
	}
	_, key, ok := strings.Cut(strings.TrimSpace(string(known)), " ")
	if !ok {
		return nil, fmt.Errorf("unexpected known_hosts %q", known)
	}
	b.KnownHosts = filepath.Join(l.Dir, "known_hosts_bastion")
	list := BastionAddr + " " + key + "\n" + NodeBehindAddr + " " + key + "\n"
	if err := os.WriteFile(b.KnownHosts, []byte(list), 0o600); err != nil {
		return nil, err
	}
	return b, nil
}
