//go:build linux

package e2e

// Faults the reliability tests inject into a Lab, and the few process tools they need to watch k8stunnel take
// them: a pseudo-terminal, running as another user, a sudoers entry, /proc readers. Every fault stays inside the
// lab's namespaces; nothing here touches the machine's own network.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// SSHDSessionPids returns the node's sshd processes that serve connections: every sshd there except the listener,
// which must survive so the client can come back (nor any other sshd the lab started).
func SSHDSessionPids(l *Lab) ([]int, error) {
	pids, err := l.Node.Pids()
	if err != nil {
		return nil, err
	}
	listeners := map[int]bool{}
	l.mu.Lock()
	for _, d := range l.sshds {
		listeners[d.cmd.Process.Pid] = true
	}
	l.mu.Unlock()
	var sessions []int
	for _, pid := range pids {
		if listeners[pid] {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == sshdPath {
			sessions = append(sessions, pid)
		}
	}
	return sessions, nil
}

// BlockLaptop makes the node drop every packet it receives from the laptop, the way a node that vanished from the
// network looks from the laptop: no reset, no ICMP, just silence. The rule lives in the node's filter table only;
// unblock removes it and is safe to call twice.
func BlockLaptop(l *Lab) (unblock func() error, err error) {
	rule := []string{"INPUT", "-s", LaptopAddr, "-j", "DROP"}
	if _, err := l.Node.Output(context.Background(), "iptables", append([]string{"-w", "-I"}, rule...)...); err != nil {
		return nil, fmt.Errorf("blocking the laptop on the node: %w", err)
	}
	var once sync.Once
	var unblockErr error
	return func() error {
		once.Do(func() {
			_, unblockErr = l.Node.Output(context.Background(), "iptables", append([]string{"-w", "-D"}, rule...)...)
		})
		return unblockErr
	}, nil
}

// GatewayTouched reports whether the laptop ever tried to send a packet to its default gateway: the kernel keeps a
// neighbour entry (FAILED or INCOMPLETE, since nobody answers there) for every next hop it has tried. Traffic the
// tunnel should have captured but did not would show up here.
func GatewayTouched(l *Lab) (bool, string, error) {
	out, err := l.Laptop.Output(context.Background(), "ip", "neigh", "show", DeadGateway)
	if err != nil {
		return false, "", err
	}
	out = strings.TrimSpace(out)
	return out != "", out, nil
}

// IsolateDNS gives ns a resolv.conf that names 127.0.0.1, where nothing listens, so a name lookup made in ns (by
// k8stunnel, sudo or libc) fails at once inside ns instead of reaching the machine's resolver. `ip netns exec`
// bind-mounts /etc/netns/<name>/* over /etc for the commands it runs; Netns.Dial and Listen do not need it.
func IsolateDNS(ns *Netns) (undo func() error, err error) {
	removeStaleNetnsEtc()
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("isolating DNS in %s: %w", ns.Name, err)
	}
	conf := "# written by the k8stunnel e2e tests; nothing answers here\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("isolating DNS in %s: %w", ns.Name, err)
	}
	return func() error { return os.RemoveAll(dir) }, nil
}

// ServeNXDomain answers every DNS query that reaches 127.0.0.1:53 in ns with "no such name", as a resolver does
// for a name that does not exist. With IsolateDNS it gives commands in ns a real "no such host" without a packet
// leaving ns.
func ServeNXDomain(ns *Netns) (stop func(), err error) {
	var pc net.PacketConn
	err = ns.Do(func() error {
		pc, err = net.ListenPacket("udp", "127.0.0.1:53")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening for DNS in %s: %w", ns.Name, err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeNameError)
		w.WriteMsg(m)
	})}
	done := make(chan struct{})
	go func() {
		srv.ActivateAndServe()
		close(done)
	}()
	return func() {
		srv.Shutdown()
		pc.Close()
		<-done
	}, nil
}

// removeStaleNetnsEtc removes the /etc/netns dirs of labs whose process no longer runs.
func removeStaleNetnsEtc() {
	dirs, _ := filepath.Glob(filepath.Join("/etc/netns", namePrefix+"*"))
	for _, d := range dirs {
		m := leftoverName.FindStringSubmatch(filepath.Base(d))
		if m == nil {
			continue
		}
		if pid, err := strconv.Atoi(m[1]); err == nil && syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// StartClientCmd runs name args... in the laptop namespace and watches it like StartClient does (ReadyLine, exit,
// cleanup with the lab), but lets customize change the command before it starts: its environment, stdin,
// process attributes. name need not be the k8stunnel binary: a wrapper (setpriv, a shell) works, as long as the
// wrapper hands its stderr on to k8stunnel.
func StartClientCmd(l *Lab, customize func(*exec.Cmd), name string, arg ...string) (*Client, error) {
	c := &Client{ready: make(chan struct{}), exited: make(chan struct{})}
	var readyOnce sync.Once
	c.log = &syncBuffer{tee: l.opts.ClientLog, onLine: func(line string) {
		if strings.Contains(line, ReadyLine) {
			readyOnce.Do(func() { close(c.ready) })
		}
	}}
	c.cmd = l.Laptop.Command(context.Background(), name, arg...)
	c.cmd.Stdout = c.log
	c.cmd.Stderr = c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A child that keeps stderr open after the client exits must not hang Wait; Wait then reports ErrWaitDelay.
	c.cmd.WaitDelay = 2 * time.Second
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SSH_AUTH_SOCK=") {
			c.cmd.Env = append(c.cmd.Env, kv)
		}
	}
	if customize != nil {
		customize(c.cmd)
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.exited)
	}()
	l.mu.Lock()
	l.clients = append(l.clients, c)
	l.mu.Unlock()
	return c, nil
}

// ExitErr is how the process exited, once Exited is closed: nil for status 0.
func (c *Client) ExitErr() error {
	<-c.exited
	return c.err
}

// KillInNetns kills pid (with group, its whole process group) with SIGKILL, but only while pid is still a process
// in ns: a pid that has exited may already belong to someone else.
func KillInNetns(ns *Netns, pid int, group bool) {
	pids, err := ns.Pids()
	if err != nil || !slices.Contains(pids, pid) {
		return
	}
	if group {
		pid = -pid
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// AsUser prefixes argv so that it runs as user and group with no supplementary groups and no capabilities, the
// way a normal login would run it. The bounding set is kept: sudo needs it to become root again.
func AsUser(user, group string, argv ...string) []string {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		setpriv = "setpriv" // the command fails and says so
	}
	// An absolute path, so the caller may give the user a PATH without it.
	return append([]string{setpriv, "--reuid=" + user, "--regid=" + group, "--clear-groups", "--inh-caps=-all"}, argv...)
}

// UserEnv is a minimal login environment for a normal user with home as $HOME and path as $PATH.
func UserEnv(user, home, path string) []string {
	return []string{"PATH=" + path, "HOME=" + home, "USER=" + user, "LOGNAME=" + user, "LANG=C"}
}

// sudoersPrefix names the sudoers files the tests write; the PID after it tells a leftover of a dead run.
const sudoersPrefix = "/etc/sudoers.d/k8stunnel-e2e-"

// AllowSudo writes a file in /etc/sudoers.d (see InstallSudoers) letting user run exactly command (a path and its
// arguments) as root without a password.
func AllowSudo(user, command string) (remove func() error, err error) {
	return InstallSudoers(fmt.Sprintf("%s ALL=(root) NOPASSWD: %s\n", user, command))
}

var sudoersSeq atomic.Int64

// InstallSudoers writes rules to /etc/sudoers.d/k8stunnel-e2e-<pid>-<n>. The file is checked with visudo -cf before
// it goes in place, because a broken file there breaks sudo for the whole machine. It first removes such files of
// runs that are no longer alive. remove is safe to call twice.
func InstallSudoers(rules string) (remove func() error, err error) {
	removeStaleSudoers()
	final := fmt.Sprintf("%s%d-%d", sudoersPrefix, os.Getpid(), sudoersSeq.Add(1))
	tmp, err := os.CreateTemp("", fmt.Sprintf("%s%d-sudoers-", namePrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("writing a sudoers entry: %w", err)
	}
	defer os.Remove(tmp.Name())
	rule := fmt.Sprintf("# k8stunnel e2e test (pid %d); removed when the test ends\n%s", os.Getpid(), rules)
	_, err = tmp.WriteString(rule)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing a sudoers entry: %w", err)
	}
	if out, err := exec.Command("visudo", "-cf", tmp.Name()).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("checking the sudoers entry %q: %w: %s", rule, err, strings.TrimSpace(string(out)))
	}
	// sudo ignores files in sudoers.d whose names contain a dot, so the half-written file is never read.
	if err := os.WriteFile(final+".tmp", []byte(rule), 0o440); err != nil {
		return nil, fmt.Errorf("writing %s: %w", final, err)
	}
	if err := os.Rename(final+".tmp", final); err != nil {
		os.Remove(final + ".tmp")
		return nil, fmt.Errorf("writing %s: %w", final, err)
	}
	var once sync.Once
	var removeErr error
	return func() error {
		once.Do(func() {
			if err := os.Remove(final); err != nil && !errors.Is(err, os.ErrNotExist) {
				removeErr = err
			}
		})
		return removeErr
	}, nil
}

func removeStaleSudoers() {
	files, _ := filepath.Glob(sudoersPrefix + "*")
	for _, f := range files {
		rest := strings.TrimSuffix(strings.TrimPrefix(f, sudoersPrefix), ".tmp")
		rest, _, _ = strings.Cut(rest, "-")
		pid, err := strconv.Atoi(rest)
		if err == nil && syscall.Kill(pid, 0) == syscall.ESRCH {
			os.Remove(f)
		}
	}
}

// userPrefix starts the names of users the tests add; the PID after it tells a leftover of a dead run.
const userPrefix = "k8t"

var userSeq atomic.Int64

// User is a local user a test added with AddUser.
type User struct {
	Name     string
	UID, GID int
	Home     string
}

// AddUser adds a local user with a home of her own (useradd -m) and, when password is not empty, that password.
// It first removes users of runs that are no longer alive. remove deletes the user and her home; it is safe to
// call twice.
func AddUser(password string) (u *User, remove func() error, err error) {
	removeStaleUsers()
	name := fmt.Sprintf("%s%d-%d", userPrefix, os.Getpid(), userSeq.Add(1))
	if err := run("useradd", "--create-home", "--shell", "/bin/sh", name); err != nil {
		return nil, nil, fmt.Errorf("adding a user: %w", err)
	}
	var once sync.Once
	var removeErr error
	remove = func() error {
		once.Do(func() { removeErr = deleteUser(name) })
		return removeErr
	}
	fail := func(err error) (*User, func() error, error) {
		return nil, nil, errors.Join(err, remove())
	}
	lu, err := user.Lookup(name)
	if err != nil {
		return fail(err)
	}
	u = &User{Name: name, Home: lu.HomeDir}
	if u.UID, err = strconv.Atoi(lu.Uid); err != nil {
		return fail(err)
	}
	if u.GID, err = strconv.Atoi(lu.Gid); err != nil {
		return fail(err)
	}
	if password != "" {
		cmd := exec.Command("chpasswd")
		cmd.Stdin = strings.NewReader(name + ":" + password + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fail(fmt.Errorf("setting the password of %s: %w: %s", name, err, out))
		}
	}
	return u, remove, nil
}

func deleteUser(name string) error {
	// --force: a process of hers still running (a helper on a lab's node, killed when the lab closes) must not
	// keep the user.
	out, err := exec.Command("userdel", "--force", "--remove", name).CombinedOutput()
	if err != nil {
		if _, lerr := user.Lookup(name); lerr != nil {
			return nil // gone
		}
		return fmt.Errorf("deleting user %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// userName matches the names AddUser gives: prefix, PID, sequence number.
var userName = regexp.MustCompile(`^` + userPrefix + `(\d+)-\d+$`)

func removeStaleUsers() {
	f, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(f), "\n") {
		name, _, _ := strings.Cut(line, ":")
		m := userName.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if pid, _ := strconv.Atoi(m[1]); syscall.Kill(pid, 0) == syscall.ESRCH {
			deleteUser(name)
		}
	}
}

// WriteSSHFiles writes files (name → content) into u's ~/.ssh, owned by her, mode 0600.
func (u *User) WriteSSHFiles(files map[string]string) error {
	dir := filepath.Join(u.Home, ".ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chown(dir, u.UID, u.GID); err != nil {
		return err
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return err
		}
		if err := os.Chown(p, u.UID, u.GID); err != nil {
			return err
		}
	}
	return nil
}

// PublicCopy copies the file at src into a new directory under publicRoot that any user may enter and read, and
// returns the copy's path and a func that removes the directory. A normal user cannot run the test's own build: it
// lives in a directory only root may enter.
func PublicCopy(src string) (path string, remove func(), err error) {
	dir, err := os.MkdirTemp(publicRoot, fmt.Sprintf("%s%d-pub-", namePrefix, os.Getpid()))
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	if err := os.Chmod(dir, 0o755); err != nil {
		remove()
		return "", nil, err
	}
	path = filepath.Join(dir, filepath.Base(src))
	if err := copyFile(src, path, 0o755); err != nil {
		remove()
		return "", nil, err
	}
	return path, remove, nil
}

// publicRoot holds PublicCopy's directories: not the temp dir, since k8stunnel sudoers refuses an executable under a
// directory that others may write into, sticky or not.
const publicRoot = "/var/lib"

// UserHome makes a home directory owned by uid:gid with the given files copied into ~/.ssh (name → source path),
// mode 0600, as OpenSSH wants them.
func UserHome(uid, gid int, sshFiles map[string]string) (home string, remove func(), err error) {
	home, err = os.MkdirTemp("", fmt.Sprintf("%s%d-home-", namePrefix, os.Getpid()))
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(home) }
	fail := func(err error) (string, func(), error) {
		remove()
		return "", nil, fmt.Errorf("making a home for uid %d: %w", uid, err)
	}
	dotSSH := filepath.Join(home, ".ssh")
	if err := os.Mkdir(dotSSH, 0o700); err != nil {
		return fail(err)
	}
	for name, src := range sshFiles {
		if err := copyFile(src, filepath.Join(dotSSH, name), 0o600); err != nil {
			return fail(err)
		}
		if err := os.Chown(filepath.Join(dotSSH, name), uid, gid); err != nil {
			return fail(err)
		}
	}
	for _, d := range []string{dotSSH, home} {
		if err := os.Chown(d, uid, gid); err != nil {
			return fail(err)
		}
	}
	return home, remove, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode) // the umask may have taken bits away
}

// OpenPty opens a new pseudo-terminal: ptm is the side a terminal emulator holds, pts the one a shell gets as its
// stdin and controlling terminal.
func OpenPty() (ptm, pts *os.File, err error) {
	ptm, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening /dev/ptmx: %w", err)
	}
	fail := func(err error) (*os.File, *os.File, error) {
		ptm.Close()
		return nil, nil, fmt.Errorf("setting up a pty: %w", err)
	}
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		return fail(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		return fail(err)
	}
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fail(err)
	}
	return ptm, pts, nil
}

// ForegroundGroup asks the terminal whose master side ptm is which process group is its foreground job.
func ForegroundGroup(ptm *os.File) (int, error) {
	pgrp, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPGRP)
	if err != nil {
		return 0, fmt.Errorf("reading the terminal's foreground group: %w", err)
	}
	return pgrp, nil
}

// Proc is what /proc says about one process.
type Proc struct {
	Pid, PPid, Pgrp, UID int
	State                byte // R, S, D, T (stopped), t, Z ...
	Exe                  string
	Args                 []string
}

func (p Proc) String() string {
	return fmt.Sprintf("pid %d (ppid %d, pgrp %d, uid %d, state %c) %q", p.Pid, p.PPid, p.Pgrp, p.UID, p.State,
		strings.Join(p.Args, " "))
}

// ReadProc reads pid's entry in /proc.
func ReadProc(pid int) (Proc, error) {
	p := Proc{Pid: pid}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, err
	}
	// The command name in parentheses may contain anything, spaces and parentheses included.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return p, fmt.Errorf("parsing /proc/%d/stat: %q", pid, stat)
	}
	f := strings.Fields(string(stat[i+2:]))
	if len(f) < 3 || len(f[0]) != 1 {
		return p, fmt.Errorf("parsing /proc/%d/stat: %q", pid, stat)
	}
	p.State = f[0][0]
	p.PPid, _ = strconv.Atoi(f[1])
	p.Pgrp, _ = strconv.Atoi(f[2])
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	if m := uidLine.FindSubmatch(status); m != nil {
		p.UID, _ = strconv.Atoi(string(m[1]))
	}
	p.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if s := strings.TrimRight(string(cmdline), "\x00"); s != "" {
		p.Args = strings.Split(s, "\x00")
	}
	return p, nil
}

// uidLine matches the effective uid, the second of the four on the Uid line.
var uidLine = regexp.MustCompile(`(?m)^Uid:\s+\d+\s+(\d+)`)

// Procs lists the live processes of ns (zombies are dead: they only wait for a parent to reap them).
func Procs(ns *Netns) ([]Proc, error) {
	pids, err := ns.Pids()
	if err != nil {
		return nil, err
	}
	var procs []Proc
	for _, pid := range pids {
		p, err := ReadProc(pid)
		if err != nil || p.State == 'Z' || p.State == 'X' {
			continue
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// Container addresses: a namespace behind the laptop, routed through it, as a container on a bridge or a VM is.
const (
	LaptopBridgeAddr = "10.200.9.1"
	ContainerAddr    = "10.200.9.2"
)

// AddContainer adds a namespace behind the laptop (veth ctr0 in the laptop, eth0 in it) whose default route is the
// laptop, which forwards. It is deleted with the lab.
func (l *Lab) AddContainer() (*Netns, error) {
	ns := &Netns{Name: strings.TrimSuffix(l.Laptop.Name, "-laptop") + "-ctr"}
	if err := run("ip", "netns", "add", ns.Name); err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", ns.Name, err)
	}
	l.namespaces = append(l.namespaces, ns)
	lap, ctr := l.Laptop.Name, ns.Name
	for _, s := range [][]string{
		{"ip", "-n", lap, "link", "add", "ctr0", "type", "veth", "peer", "name", "eth0", "netns", ctr},
		{"ip", "-n", lap, "addr", "add", LaptopBridgeAddr + "/24", "dev", "ctr0"},
		{"ip", "-n", lap, "link", "set", "ctr0", "up"},
		{"ip", "netns", "exec", lap, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "-n", ctr, "link", "set", "lo", "up"},
		{"ip", "-n", ctr, "addr", "add", ContainerAddr + "/24", "dev", "eth0"},
		{"ip", "-n", ctr, "link", "set", "eth0", "up"},
		{"ip", "-n", ctr, "route", "add", "default", "via", LaptopBridgeAddr},
	} {
		if err := run(s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("adding a container to the lab: %w", err)
		}
	}
	return ns, nil
}
