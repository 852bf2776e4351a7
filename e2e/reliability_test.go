//go:build linux

package e2e

// Reliability: every test here injects one fault a long-running tunnel meets on a laptop (a dead SSH session, a
// node that vanishes, another program rewriting the rules, a killed process, a terminal, a flood) and measures how
// k8stunnel takes it. The lab is the one drawn in e2e_test.go. Each test logs what it observed, with timings, so a
// run's -v output is the record of what each fault did.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// startQuietClient runs k8stunnel without -v for the service and pod CIDRs (plus extra flags) and waits until it is
// ready. Without -v the log is what a user sees, so counting its lines says whether a fault floods it.
func startQuietClient(t *testing.T, lab *Lab, extra ...string) *Client {
	t.Helper()
	return startClientArgs(t, lab, append(extra, lab.ClientArgs(ServiceCIDR, PodCIDR)...)...)
}

// watchClient shows c's log when t fails and makes sure c is gone when t ends.
func watchClient(t *testing.T, c *Client) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("k8stunnel stderr:\n%s", c.Stderr())
		}
	})
	t.Cleanup(func() {
		select {
		case <-c.Exited():
		default:
			c.kill()
		}
	})
}

// stopClient stops c with SIGTERM and wants a clean exit.
func stopClient(t *testing.T, c *Client) {
	t.Helper()
	if err := c.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("stopping k8stunnel: %v", err)
	}
}

// waitLog polls c's log from offset on until it has a line containing s, and returns that line. It fails t after
// within.
func waitLog(t *testing.T, c *Client, offset int, s string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, line := range strings.Split(c.Stderr()[offset:], "\n") {
			if strings.Contains(line, s) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in k8stunnel's log within %v; log since the fault:\n%s", s, within, c.Stderr()[offset:])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countLines counts the lines of log that contain s.
func countLines(log, s string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// logLines returns the non-empty lines of log.
func logLines(log string) []string {
	var lines []string
	for _, line := range strings.Split(log, "\n") {
		if strings.TrimSpace(line) != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

// waitWorking polls an HTTP GET of the service through the tunnel until it succeeds and returns how long that took.
// Failed attempts are expected (the tunnel is coming back); a failure is reported only after within.
func waitWorking(t *testing.T, lab *Lab, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	for attempts := 0; ; attempts++ {
		if last = tryGet(lab, "http://"+ServiceIP+"/"); last == nil {
			took := time.Since(start)
			if took > within {
				t.Errorf("the first working connection through the tunnel came after %v, want within %v", took, within)
			}
			return took
		}
		if time.Since(start) > within {
			t.Fatalf("no working connection through the tunnel within %v (%d attempts); last: %v", within, attempts, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// curlService fetches the service with curl in the laptop, the way a user would check the tunnel.
func curlService(t *testing.T, lab *Lab) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := lab.Laptop.Output(ctx, "curl", "-sS", "--max-time", "10", "http://"+ServiceIP+"/")
	if err != nil || !strings.Contains(out, "hello from pod") {
		t.Fatalf("curl http://%s/ through the tunnel: %q, %v", ServiceIP, out, err)
	}
}

// k8stunnelRules are the lines of a laptop snapshot that belong to k8stunnel: its chain, the chain's rules and the
// jumps to it.
func k8stunnelRules(save string) []string {
	var rules []string
	for _, line := range strings.Split(save, "\n") {
		if strings.Contains(line, "K8STUNNEL") {
			rules = append(rules, line)
		}
	}
	return rules
}

// TestLinkLoss: the SSH connection dies in the two ways a laptop sees, and the client brings it back by itself.
func TestLinkLoss(t *testing.T) {
	lab := newLab(t)
	c := startQuietClient(t, lab)
	t.Cleanup(func() { stopClient(t, c) })
	curlService(t, lab)

	// sshd's per-connection processes die (an OOM kill, an admin restarting sshd the hard way); the listener stays.
	// The client hears the connection close at once.
	t.Run("sshd session killed", func(t *testing.T) {
		sessions, err := SSHDSessionPids(lab)
		if err != nil || len(sessions) == 0 {
			t.Fatalf("no sshd session process on the node (%v)", err)
		}
		offset := len(c.Stderr())
		start := time.Now()
		for _, pid := range sessions {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		waitLog(t, c, offset, "tunnel lost", 10*time.Second)
		lost := time.Since(start)
		waitLog(t, c, offset, "tunnel restored", 10*time.Second)
		restored := time.Since(start)
		curlService(t, lab)
		t.Logf("killed %d sshd session processes: \"tunnel lost\" after %v, \"tunnel restored\" after %v, curl works after %v",
			len(sessions), lost.Round(time.Millisecond), restored.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		checkQuietOutage(t, c.Stderr()[offset:])
	})

	// The node stops answering altogether (suspend and resume, a Wi-Fi switch, a node reboot): no reset, no FIN,
	// only silence. Only the client's SSH keepalive can tell.
	t.Run("node unreachable", func(t *testing.T) {
		const outage = 12 * time.Second
		during := iptablesSave(t, lab)
		offset := len(c.Stderr())
		start := time.Now()
		unblock, err := BlockLaptop(lab)
		if err != nil {
			t.Fatal(err)
		}
		defer unblock()

		waitLog(t, c, offset, "tunnel lost", 10*time.Second)
		noticed := time.Since(start)
		t.Logf("node unreachable: \"tunnel lost\" %v after the node went silent", noticed.Round(time.Millisecond))

		// While it is away, the rules stay exactly as they were, and a new connection is refused at once instead
		// of hanging (or leaking to the laptop's real gateway).
		if now := iptablesSave(t, lab); now != during {
			t.Errorf("the laptop's rules changed during the outage\nbefore:\n%s\nduring:\n%s", during, now)
		}
		resetStart := time.Now()
		expectReset(t, lab, net.JoinHostPort(ServiceIP, strconv.Itoa(ServicePort)), time.Second)
		resetTook := time.Since(resetStart)
		if touched, neigh, err := GatewayTouched(lab); err != nil || touched {
			t.Errorf("the laptop sent something towards its default gateway during the outage (neighbour %q, %v)", neigh, err)
		}

		if rest := outage - time.Since(start); rest > 0 {
			time.Sleep(rest) // the fault lasts a fixed time; nothing to wait for
		}
		if err := unblock(); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		working := waitWorking(t, lab, 5*time.Second)
		waitLog(t, c, offset, "tunnel restored", time.Second)
		t.Logf("node unreachable for %v: noticed after %v, a new connection during the outage reset in %v, "+
			"traffic flows %v after the node answers again",
			back.Sub(start).Round(time.Millisecond), noticed.Round(time.Millisecond),
			resetTook.Round(time.Millisecond), working.Round(time.Millisecond))
		if now := iptablesSave(t, lab); now != during {
			t.Errorf("the laptop's rules changed after the outage\nbefore:\n%s\nafter:\n%s", during, now)
		}
		curlService(t, lab)
		checkQuietOutage(t, c.Stderr()[offset:])
	})
}

// checkQuietOutage wants one line for each state change of an outage: lost, at most one failed reconnect, restored.
func checkQuietOutage(t *testing.T, log string) {
	t.Helper()
	lines := logLines(log)
	for _, want := range []string{"tunnel lost", "tunnel restored"} {
		if n := countLines(log, want); n != 1 {
			t.Errorf("%d lines with %q, want 1", n, want)
		}
	}
	if n := countLines(log, "reconnect failed"); n > 1 {
		t.Errorf("%d lines with \"reconnect failed\", want at most 1", n)
	}
	if len(lines) > 4 {
		t.Errorf("the outage logged %d lines, want at most 4 (one per state change):\n%s", len(lines), log)
	}
	t.Logf("the outage logged %d lines:\n%s", len(lines), strings.Join(lines, "\n"))
}

// TestRulesRewritten: another program rewrites the nat table under a running tunnel; k8stunnel puts its rules back.
func TestRulesRewritten(t *testing.T) {
	lab := newLab(t)
	c := startQuietClient(t, lab)
	t.Cleanup(func() { stopClient(t, c) })
	installed := iptablesSave(t, lab)
	ours := k8stunnelRules(installed)
	if len(ours) == 0 {
		t.Fatalf("no k8stunnel rules in the laptop while the tunnel is up:\n%s", installed)
	}
	chain := strings.Fields(strings.TrimPrefix(ours[0], ":"))[0]
	// The UDP capture's ip rule: "32765:	from all fwmark 0x3000000/0xf000000 lookup 27451".
	var udpRule, udpTable []string
	for _, line := range strings.Split(installed, "\n") {
		if f := strings.Fields(line); len(f) == 7 && f[3] == "fwmark" && f[5] == "lookup" {
			udpRule = []string{"rule", "del", "fwmark", f[4], "lookup", f[6]}
			udpTable = []string{"route", "flush", "table", f[6]}
		}
	}
	if udpRule == nil {
		t.Fatalf("no ip rule for the UDP capture while the tunnel is up:\n%s", installed)
	}

	cases := []struct {
		name    string
		cmd     string // iptables unless set
		rewrite []string
		// whole says the complete snapshot comes back, not only k8stunnel's lines: true when the rewrite touched
		// nothing but k8stunnel's rules.
		whole bool
	}{
		{"iptables -t nat -F", "", []string{"-t", "nat", "-F"}, false},
		{"OUTPUT jump deleted", "", []string{"-t", "nat", "-D", "OUTPUT", "-j", chain}, true},
		{"chain emptied", "", []string{"-t", "nat", "-F", chain}, true},
		{"iptables -t mangle -F", "", []string{"-t", "mangle", "-F"}, false},
		{"ip rule of the UDP capture deleted", "ip", udpRule, true},
		// The rule alone sends marked datagrams out by the default route.
		{"routing table of the UDP capture flushed", "ip", udpTable, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd, args := tc.cmd, tc.rewrite
			if cmd == "" {
				cmd, args = "iptables", append([]string{"-w"}, tc.rewrite...)
			}
			before := iptablesSave(t, lab)
			offset := len(c.Stderr())
			start := time.Now()
			if _, err := lab.Laptop.Output(context.Background(), cmd, args...); err != nil {
				t.Fatal(err)
			}
			if iptablesSave(t, lab) == before {
				t.Fatalf("%s %s changed nothing; the test proves nothing", cmd, strings.Join(tc.rewrite, " "))
			}
			deadline := start.Add(5 * time.Second)
			for {
				now := iptablesSave(t, lab)
				if slices.Equal(k8stunnelRules(now), ours) && (!tc.whole || now == before) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("k8stunnel's rules are not back 5s after %s %s\nwant:\n%s\nhave:\n%s",
						cmd, strings.Join(tc.rewrite, " "), strings.Join(ours, "\n"), now)
				}
				time.Sleep(50 * time.Millisecond)
			}
			back := time.Since(start)
			line := waitLog(t, c, offset, "firewall rules restored", time.Second)
			httpGet(t, lab, "http://"+ServiceIP+"/")
			echoDatagrams(t, laptopUDP(t, lab, "udp4"), serveUDPEcho(t, lab, "udp4", net.JoinHostPort(PodAddr, "0")), 3)
			if n := len(logLines(c.Stderr()[offset:])); n != 1 {
				t.Errorf("%d log lines for one repair, want 1:\n%s", n, c.Stderr()[offset:])
			}
			t.Logf("after %s %s: rules back in %v, logged %q", cmd, strings.Join(tc.rewrite, " "), back.Round(time.Millisecond), line)
		})
	}
}

// TestPrivilegeSplit: run by a normal user, k8stunnel does SSH as that user and only its firewall part runs as
// root, through sudo. Whatever happens to the client, the rules do not outlive it.
func TestPrivilegeSplit(t *testing.T) {
	lab := newLab(t)
	pub, env := setupSplit(t, lab)
	argv := AsUser("nobody", "nogroup", pub, "-r", "root@"+NodeAddr, ServiceCIDR, PodCIDR)
	start := func(t *testing.T) (*Client, Proc) {
		t.Helper()
		c, err := StartClientCmd(lab, func(cmd *exec.Cmd) { cmd.Env = env }, argv[0], argv[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		watchClient(t, c)
		if err := c.WaitReady(context.Background()); err != nil {
			t.Fatal(err)
		}
		return c, checkSplit(t, lab, pub, c.Pid())
	}

	t.Run("client killed", func(t *testing.T) {
		before := iptablesSave(t, lab)
		c, _ := start(t)
		if during := iptablesSave(t, lab); during == before {
			t.Fatalf("the tunnel is up but the laptop's rules did not change")
		}
		killed := time.Now()
		if err := c.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		deadline := killed.Add(2 * time.Second)
		for {
			after := iptablesSave(t, lab)
			if after == before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("2s after kill -9 of the client the rules are still there\nbefore:\n%s\nafter:\n%s", before, after)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("kill -9 of the client: rules gone after %v", time.Since(killed).Round(time.Millisecond))
		expectNoProcs(t, lab.Laptop, 5*time.Second)
	})

	// `k8stunnel ... &` by a normal user: sudo starts the firewall part without a terminal to ask on, and neither
	// sudo nor k8stunnel may touch the terminal from the background.
	t.Run("in the background of a terminal", func(t *testing.T) {
		before := iptablesSave(t, lab)
		job := startBackgroundJob(t, lab, env, argv[0], argv[1:]...)
		if !job.waitNotStopped(t, true, 30*time.Second) {
			t.Fatalf("k8stunnel exited before it was ready: %v\n%s", job.err, job.Stderr())
		}
		checkSplit(t, lab, pub, job.pid)
		// sudo runs in its own process group under use_pty; none of the laptop's processes may be stopped.
		procs, err := Procs(lab.Laptop)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range procs {
			if p.State == 'T' || p.State == 't' {
				t.Errorf("stopped by the terminal: %v", p)
			}
		}
		if err := syscall.Kill(job.pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := job.Wait(StopTimeout); err != nil {
			t.Errorf("after SIGHUP: %v, want exit status 0", err)
		}
		if after := iptablesSave(t, lab); after != before {
			t.Errorf("the laptop's rules differ after SIGHUP\nbefore:\n%s\nafter:\n%s", before, after)
		}
		expectNoProcs(t, lab.Laptop, 5*time.Second)
	})

	// The sudo rule lets nobody run the firewall part, not point it anywhere: a spec redirecting to a port that
	// another user's program listens on is refused, and the laptop's rules stay as they were.
	t.Run("firewall part asked for another user's port", func(t *testing.T) {
		before := iptablesSave(t, lab)
		theirs, err := lab.Laptop.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer theirs.Close()
		port := theirs.Addr().(*net.TCPAddr).Port
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A shell of nobody's is the caller, as k8stunnel would be ("; exit" keeps it from exec'ing sudo).
		sudo := AsUser("nobody", "nogroup", "/bin/sh", "-c", `/usr/bin/sudo -n "$0" firewall; exit $?`, pub)
		cmd := lab.Laptop.Command(ctx, sudo[0], sudo[1:]...)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(fmt.Sprintf(`{"op":"install","spec":{"port":%d,"include":["10.96.0.0/12"]}}`+"\n", port))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("sudo %s firewall: %v\n%s%s", pub, err, out, stderr.String())
		}
		if !strings.Contains(string(out), "not a socket of the calling k8stunnel") {
			t.Errorf("the firewall part answered %q, want the spec refused", out)
		}
		if after := iptablesSave(t, lab); after != before {
			t.Errorf("the laptop's rules changed\nbefore:\n%s\nafter:\n%s", before, after)
		}
		t.Logf("asked to redirect to root's port %d, the firewall part said: %s", port, strings.TrimSpace(string(out)))
	})

	// Killed, the firewall child removed nothing: its rules still send the CIDRs to the client's port. The client
	// must keep that port (a port it let go any local user could take, receiving other users' redirected traffic),
	// start a new firewall child, and work again; stopped, it leaves the rules as they were.
	t.Run("firewall child killed", func(t *testing.T) {
		before := iptablesSave(t, lab)
		c, fw := start(t)
		if err := syscall.Kill(fw.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		for {
			procs, err := Procs(lab.Laptop)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(procs, func(p Proc) bool { return p.Pid == fw.Pid }) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		select {
		case <-c.Exited():
			t.Fatalf("the client exited after its firewall child was killed: %v\n%s", c.ExitErr(), c.Stderr())
		default:
		}
		if ln, err := lab.Laptop.Listen("tcp", "127.0.0.1:12300"); err == nil {
			ln.Close()
			t.Errorf("another program could listen on the client's port 12300 while the rules point at it")
		} else if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("listening on the client's port: %v, want EADDRINUSE", err)
		}
		// Until the client noticed, the old rules still work: wait for a new firewall child first.
		newChild := func() bool {
			procs, err := Procs(lab.Laptop)
			return err == nil && slices.ContainsFunc(procs, func(p Proc) bool { return isFirewallChild(p, pub) && p.Pid != fw.Pid })
		}
		var recovered time.Duration
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if newChild() && strings.Contains(c.Stderr(), "rules restored") && tryGet(lab, "http://"+ServiceIP+"/") == nil {
				recovered = time.Since(killed)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the tunnel does not work 15s after its firewall child was killed:\n%s", c.Stderr())
			}
		}
		fw = checkSplit(t, lab, pub, c.Pid())
		t.Logf("firewall child killed: a new one (pid %d) and the tunnel works again after %v", fw.Pid, recovered.Round(time.Millisecond))
		stopClient(t, c)
		if after := iptablesSave(t, lab); after != before {
			t.Errorf("the laptop's rules differ after exit\nbefore:\n%s\nafter:\n%s", before, after)
		}
		expectNoProcs(t, lab.Laptop, 5*time.Second)
	})
}

// isFirewallChild says p is the firewall part of a tunnel run from exe.
func isFirewallChild(p Proc, exe string) bool {
	return p.Exe == exe && len(p.Args) == 2 && p.Args[1] == "firewall"
}

// rootFirewallChild returns the one firewall child of exe in the laptop, which must run as root.
func rootFirewallChild(t *testing.T, lab *Lab, exe string) Proc {
	t.Helper()
	procs, err := Procs(lab.Laptop)
	if err != nil {
		t.Fatal(err)
	}
	var fw []Proc
	for _, p := range procs {
		if isFirewallChild(p, exe) {
			fw = append(fw, p)
		}
	}
	if len(fw) != 1 || fw[0].UID != 0 {
		t.Fatalf("want one firewall child running as root, have %v (laptop processes: %v)", fw, procs)
	}
	return fw[0]
}

// setupSplit prepares a run of k8stunnel by nobody with only its firewall part run as root, through sudo: a copy of
// the binary nobody can run, a sudoers entry for exactly its firewall subcommand, and a home holding the lab's key
// and known_hosts where OpenSSH would look (no -i, no --known-hosts). It returns the copy and nobody's environment.
func setupSplit(t *testing.T, lab *Lab) (pub string, env []string) {
	t.Helper()
	if _, err := exec.LookPath("sudo"); err != nil {
		t.Fatal("sudo is not installed; install the test dependencies with: sudo scripts/deps.sh")
	}
	pub, removePub, err := PublicCopy(binary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(removePub)
	removeRule, err := AllowSudo("nobody", pub+" firewall")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeRule(); err != nil {
			t.Errorf("removing the sudoers entry: %v", err)
		}
	})
	home, removeHome, err := UserHome(65534, 65534, map[string]string{"id_ed25519": lab.Identity, "known_hosts": lab.KnownHosts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(removeHome)
	return pub, UserEnv("nobody", home, "/usr/local/bin:/usr/bin:/bin")
}

// checkSplit checks a running tunnel started by nobody: it works (TCP and UDP), the client (pid) runs pub as nobody
// and one firewall child runs as root. It returns the firewall child.
func checkSplit(t *testing.T, lab *Lab, pub string, pid int) Proc {
	t.Helper()
	httpGet(t, lab, "http://"+ServiceIP+"/")
	// UDP needs transparent sockets, which only the root child can make: each flow asks it.
	echoDatagrams(t, laptopUDP(t, lab, "udp4"), serveUDPEcho(t, lab, "udp4", net.JoinHostPort(PodAddr, "0")), 20)
	client, err := ReadProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	if client.UID != 65534 || client.Exe != pub {
		t.Errorf("the client is %v (exe %s), want it running %s as nobody (65534)", client, client.Exe, pub)
	}
	fw := rootFirewallChild(t, lab, pub)
	t.Logf("client: %v; firewall child: %v", client, fw)
	return fw
}

// TestBackgroundJob: `k8stunnel ... &` from an interactive shell, and --daemon.
func TestBackgroundJob(t *testing.T) {
	lab := newLab(t)
	if buildErr != nil {
		t.Fatal(buildErr)
	}

	// The harness itself: a job that reads the terminal from the background must be stopped, or the next subtest
	// could not tell a well-behaved k8stunnel from a broken job-control setup.
	t.Run("control: a background reader is stopped", func(t *testing.T) {
		job := startBackgroundJob(t, lab, nil, "/bin/cat")
		deadline := time.Now().Add(5 * time.Second)
		for {
			p, err := ReadProc(job.pid)
			if err != nil {
				t.Fatalf("the background cat is gone: %v\nshell stderr:\n%s", err, job.Stderr())
			}
			if p.State == 'T' || p.State == 't' {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("a background cat reading the terminal is not stopped after 5s (%v); job control does not work here", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("in the background of a terminal", func(t *testing.T) {
		before := iptablesSave(t, lab)
		start := time.Now()
		job := startBackgroundJob(t, lab, nil, binary, lab.ClientArgs(ServiceCIDR, PodCIDR)...)
		if !job.waitNotStopped(t, true, 30*time.Second) {
			t.Fatalf("k8stunnel exited before it was ready: %v", job.err)
		}
		ready := time.Since(start)
		httpGet(t, lab, "http://"+ServiceIP+"/")
		job.checkNotStopped(t)
		if err := syscall.Kill(job.pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		hup := time.Now()
		if err := job.Wait(StopTimeout); err != nil {
			t.Errorf("after SIGHUP: %v, want exit status 0", err)
		}
		if after := iptablesSave(t, lab); after != before {
			t.Errorf("the laptop's rules differ after SIGHUP\nbefore:\n%s\nafter:\n%s", before, after)
		}
		t.Logf("background job: ready after %v, never stopped; SIGHUP: exit 0 with rules removed after %v",
			ready.Round(time.Millisecond), time.Since(hup).Round(time.Millisecond))
		expectNoProcs(t, lab.Laptop, 5*time.Second)
	})

	// A key that needs a passphrase is the one reason to read the terminal. In the background k8stunnel must not
	// try (it would be stopped); it fails with a hint instead.
	passphraseKey := encryptedCopy(t, lab.Identity, "lab passphrase")
	keyArgs := []string{"-r", "root@" + NodeAddr, "-i", passphraseKey, "--known-hosts", lab.KnownHosts, "-F", "/dev/null",
		ServiceCIDR, PodCIDR}

	t.Run("passphrase key in the background", func(t *testing.T) {
		before := iptablesSave(t, lab)
		job := startBackgroundJob(t, lab, nil, binary, keyArgs...)
		if job.waitNotStopped(t, false, 30*time.Second) {
			t.Fatalf("k8stunnel came up without the key's passphrase")
		}
		t.Logf("exited: %v\n%s", job.err, job.Stderr())
		if job.err == nil {
			t.Errorf("k8stunnel exited 0 without the key's passphrase")
		}
		checkOneErrorLine(t, job.Stderr(), "passphrase")
		if after := iptablesSave(t, lab); after != before {
			t.Errorf("the laptop's rules changed\nbefore:\n%s\nafter:\n%s", before, after)
		}
		expectNoProcs(t, lab.Laptop, 5*time.Second)
	})

	// In the foreground it asks on the terminal, and the answer brings the tunnel up.
	t.Run("passphrase key in the foreground", func(t *testing.T) {
		ptm, pts, err := OpenPty()
		if err != nil {
			t.Fatal(err)
		}
		defer ptm.Close()
		c, err := StartClientCmd(lab, func(cmd *exec.Cmd) {
			cmd.Stdin = pts
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		}, binary, keyArgs...)
		pts.Close()
		if err != nil {
			t.Fatal(err)
		}
		watchClient(t, c)
		screen := &syncBuffer{}
		go io.Copy(screen, ptm)
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(screen.String(), "Enter passphrase for key") {
			select {
			case <-c.Exited():
				t.Fatalf("k8stunnel exited without asking for the passphrase: %v\nterminal:\n%s", c.err, screen)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no passphrase prompt on the terminal after 30s; it shows:\n%s", screen)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := io.WriteString(ptm, "lab passphrase\n"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReady(context.Background()); err != nil {
			t.Fatalf("%v\nterminal:\n%s", err, screen)
		}
		t.Logf("the terminal showed %q; the tunnel came up after the passphrase", screen.String())
		httpGet(t, lab, "http://"+ServiceIP+"/")
		stopClient(t, c)
	})

	t.Run("daemon", func(t *testing.T) {
		before := iptablesSave(t, lab)
		dir := t.TempDir()
		pidfile, logfile := filepath.Join(dir, "k8stunnel.pid"), filepath.Join(dir, "k8stunnel.log")
		args := append([]string{"--daemon", "--pidfile", pidfile, "--log-file", logfile}, lab.ClientArgs(ServiceCIDR, PodCIDR)...)
		start := time.Now()
		out, err := runLaptop(lab, 30*time.Second, binary, args...)
		t.Logf("the launching command exited after %v: %v; it said: %q", time.Since(start).Round(time.Millisecond), err, out)
		if err != nil {
			logText, _ := os.ReadFile(logfile)
			t.Fatalf("k8stunnel --daemon: %v\nlog file:\n%s", err, logText)
		}
		b, err := os.ReadFile(pidfile)
		if err != nil {
			t.Fatalf("reading the pidfile once the launching command has exited: %v", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("the pidfile holds %q", b)
		}
		t.Cleanup(func() { KillInNetns(lab.Laptop, pid, false) })
		if p, err := ReadProc(pid); err != nil || p.State == 'Z' {
			t.Fatalf("the pidfile names %d, which is not running (%v)", pid, err)
		}
		if !strings.Contains(out, strconv.Itoa(pid)) {
			t.Errorf("the launching command said %q, want it to name the daemon's pid %d", out, pid)
		}
		if logText, _ := os.ReadFile(logfile); !strings.Contains(string(logText), ReadyLine) {
			t.Errorf("the log file has no %s:\n%s", ReadyLine, logText)
		}
		httpGet(t, lab, "http://"+ServiceIP+"/")

		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		deadline := stopped.Add(StopTimeout)
		for {
			p, err := ReadProc(pid)
			_, pidErr := os.Stat(pidfile)
			gone := err != nil || p.State == 'Z' || p.State == 'X'
			if gone && errors.Is(pidErr, os.ErrNotExist) && iptablesSave(t, lab) == before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v after SIGTERM: process gone %v, pidfile: %v, rules:\n%s", StopTimeout, gone, pidErr, iptablesSave(t, lab))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("SIGTERM: daemon, pidfile and rules gone after %v", time.Since(stopped).Round(time.Millisecond))
		expectNoProcs(t, lab.Laptop, 5*time.Second)
	})

	// The first connection fails: the launching command must fail with it, saying why (with the hint, when the
	// error has one), before anything detaches.
	emptyKnownHosts := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(emptyKnownHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, remote, knownHosts, want, hint string
	}{
		{"daemon with a refused SSH port", "root@" + NodeAddr + ":2", lab.KnownHosts, "refused", ""},
		{"daemon with an unknown host key", "root@" + NodeAddr, emptyKnownHosts, "unknown host key", "ssh-keyscan"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := iptablesSave(t, lab)
			dir := t.TempDir()
			pidfile := filepath.Join(dir, "k8stunnel.pid")
			args := []string{"--daemon", "--pidfile", pidfile, "--log-file", filepath.Join(dir, "k8stunnel.log"),
				"-r", tc.remote, "-i", lab.Identity, "--known-hosts", tc.knownHosts, "-F", "/dev/null", ServiceCIDR}
			start := time.Now()
			out, err := runLaptop(lab, 30*time.Second, binary, args...)
			t.Logf("exited after %v: %v; it said: %q", time.Since(start).Round(time.Millisecond), err, out)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Errorf("%v, want a non-zero exit", err)
			}
			checkOneErrorLine(t, out, tc.want)
			if tc.hint != "" && !strings.Contains(out, "k8stunnel: hint: ") {
				t.Errorf("no hint line; without --daemon this error has one (mentioning %s)", tc.hint)
			}
			if _, err := os.Stat(pidfile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a pidfile is left: %v", err)
			}
			if after := iptablesSave(t, lab); after != before {
				t.Errorf("the laptop's rules changed\nbefore:\n%s\nafter:\n%s", before, after)
			}
			expectNoProcs(t, lab.Laptop, 2*time.Second)
		})
	}
}

// encryptedCopy writes the private key at src again, protected by passphrase, and returns its path.
func encryptedCopy(t *testing.T, src, passphrase string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := key.(*ed25519.PrivateKey); ok {
		key = *k
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(key, "lab-client-encrypted", []byte(passphrase))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "id_encrypted")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runLaptop runs name args... in the laptop and returns what it wrote to stdout and stderr.
func runLaptop(lab *Lab, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := lab.Laptop.Command(ctx, name, args...)
	cmd.Env = withEnv(os.Environ())
	// The daemon must not hold our pipe: if it did, this would wait for it and WaitDelay would say so.
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (still running after %v)", err, timeout)
	}
	return string(out), err
}

// backgroundJob is a command started by a job-control shell as a background job of a terminal: in its own process
// group, not the terminal's foreground group, with the terminal as its stdin, exactly like `cmd &` typed in an
// interactive shell. Its stderr is collected apart from the terminal.
type backgroundJob struct {
	*Client     // the shell; its log is the job's stderr
	pid     int // the job itself
}

// waitNotStopped waits until the job has exited or, with untilReady, logged ReadyLine, and reports whether it is
// ready. It fails t at once if the terminal stops the job (SIGTTIN, SIGTTOU) meanwhile, or after within.
func (j *backgroundJob) waitNotStopped(t *testing.T, untilReady bool, within time.Duration) (ready bool) {
	t.Helper()
	readyc := j.ready
	if !untilReady {
		readyc = nil
	}
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	timeout := time.After(within)
	for {
		select {
		case <-readyc:
			return true
		case <-j.exited:
			return false
		case <-timeout:
			t.Fatalf("the job neither exited nor became ready within %v\nits stderr:\n%s", within, j.Stderr())
		case <-ticker.C:
			j.checkNotStopped(t)
		}
	}
}

// checkNotStopped fails t at once if the job is stopped.
func (j *backgroundJob) checkNotStopped(t *testing.T) {
	t.Helper()
	if p, err := ReadProc(j.pid); err == nil && (p.State == 'T' || p.State == 't') {
		t.Fatalf("the job was stopped by the terminal: %v\nits stderr:\n%s", p, j.Stderr())
	}
}

// startBackgroundJob runs name args... as a background job of a new terminal. The shell owns the terminal (it is
// the session leader and the foreground group), starts the job with `&` under `set -m`, reports the job's pid and
// waits for it, so the shell's exit status is the job's.
func startBackgroundJob(t *testing.T, lab *Lab, env []string, name string, args ...string) *backgroundJob {
	t.Helper()
	ptm, pts, err := OpenPty()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ptm.Close() })
	pidR, pidW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pidR.Close()
	// `wait` also returns when the job is stopped; the shell must outlive a stopped job, or the kernel would hang
	// up the job's orphaned group before the test could see it stopped.
	const script = `set -m; "$0" "$@" 3>&- & p=$!; echo $p >&3; exec 3>&-
while :; do wait $p; rc=$?; kill -0 $p 2>/dev/null || exit $rc; sleep 0.1; done`
	shell, err := StartClientCmd(lab, func(cmd *exec.Cmd) {
		if env != nil {
			cmd.Env = env
		}
		cmd.Stdin = pts
		cmd.ExtraFiles = []*os.File{pidW}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	}, "sh", append([]string{"-c", script, name}, args...)...)
	pidW.Close()
	pts.Close()
	if err != nil {
		t.Fatal(err)
	}
	watchClient(t, shell)
	line, err := bufio.NewReader(pidR).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("the shell did not report its job's pid (%q, %v)\nshell stderr:\n%s", line, err, shell.Stderr())
	}
	t.Cleanup(func() { KillInNetns(lab.Laptop, pid, true) })
	job := &backgroundJob{Client: shell, pid: pid}
	p, err := ReadProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	fg, err := ForegroundGroup(ptm)
	if err != nil {
		t.Fatal(err)
	}
	if p.Pgrp == fg || p.Pgrp == shell.Pid() {
		t.Fatalf("the job %v is not in a background group (terminal's foreground group %d, shell %d)", p, fg, shell.Pid())
	}
	return job
}

// TestHelperDiesMidStream: the helper on the node dies while a download runs through it. The application must see
// its connection fail (a reset), not end cleanly as if the download were complete, and the tunnel must come back.
func TestHelperDiesMidStream(t *testing.T) {
	lab := newLab(t)
	c := startQuietClient(t, lab)
	t.Cleanup(func() { stopClient(t, c) })
	addr := servePod(t, lab, func(conn net.Conn) {
		io.Copy(conn, io.LimitReader(stream(7), 4<<30)) // fails when the helper dies; that is the point
	})
	conn := dialLaptop(t, lab, addr)
	const first = 8 << 20
	if _, err := io.CopyN(io.Discard, conn, first); err != nil {
		t.Fatalf("reading the first %d MiB: %v", first>>20, err)
	}
	helpers, err := lab.NodeHelperPids()
	if err != nil || len(helpers) == 0 {
		t.Fatalf("no k8stunnel helper on the node (%v)", err)
	}
	for _, pid := range helpers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	killed := time.Now()
	conn.SetReadDeadline(killed.Add(5 * time.Second))
	n, err := io.Copy(io.Discard, conn)
	ended := time.Since(killed)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		t.Logf("helper killed mid-download: the connection was reset %v later, after %d more bytes", ended.Round(time.Millisecond), n)
	case err == nil:
		t.Errorf("helper killed mid-download: the connection ended cleanly (EOF) after %d more bytes, want a reset", n)
	default:
		t.Errorf("helper killed mid-download: %v after %v and %d more bytes, want ECONNRESET", err, ended.Round(time.Millisecond), n)
	}
	if ended > 2*time.Second {
		t.Errorf("the connection took %v to fail, want at most 2s", ended.Round(time.Millisecond))
	}
	waitWorking(t, lab, 10*time.Second)
	t.Logf("new connections work %v after the helper was killed", time.Since(killed).Round(time.Millisecond))
	if n := countLines(c.Stderr(), "panic"); n > 0 {
		t.Errorf("k8stunnel panicked")
	}
}

// TestMaxConns: past --max-conns, new connections are reset at once with one log line, and held ones keep working.
func TestMaxConns(t *testing.T) {
	const max = 4
	lab := newLab(t)
	c := startQuietClient(t, lab, "--max-conns", strconv.Itoa(max))
	t.Cleanup(func() { stopClient(t, c) })
	addr := servePod(t, lab, func(conn net.Conn) { io.Copy(conn, conn) })

	echo := func(conn net.Conn, msg string) error {
		if _, err := io.WriteString(conn, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo of %q came back as %q", msg, buf)
		}
		return nil
	}
	var held []net.Conn
	for i := range max {
		conn := dialLaptop(t, lab, addr)
		if err := echo(conn, fmt.Sprintf("hello %d\n", i)); err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, max, err)
		}
		held = append(held, conn)
	}
	offset := len(c.Stderr())

	firstOver := time.Now()
	expectReset(t, lab, addr, time.Second)
	// A burst past the cap must not flood the log: one line, or one per second at most.
	burst := make(chan error, 20)
	for range cap(burst) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := lab.Laptop.Dial(ctx, "tcp", addr)
			if err != nil {
				burst <- err
				return
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(time.Second))
			_, err = conn.Read(make([]byte, 1))
			burst <- err
		}()
	}
	for range cap(burst) {
		if err := <-burst; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("a connection past the cap: %v, want ECONNRESET", err)
		}
	}
	seconds := time.Now().Unix() - firstOver.Unix() + 1
	log := c.Stderr()[offset:]
	n := countLines(log, "too many connections")
	if n < 1 || int64(n) > seconds {
		t.Errorf("%d \"too many connections\" lines for %d refused connections over %d second(s), want 1 per second:\n%s",
			n, cap(burst)+1, seconds, log)
	}
	if lines := logLines(log); len(lines) != n {
		t.Errorf("other lines besides \"too many connections\":\n%s", log)
	}
	for i, conn := range held {
		if err := echo(conn, "still here\n"); err != nil {
			t.Errorf("held connection %d after the cap was hit: %v", i+1, err)
		}
	}

	held[0].Close()
	start := time.Now()
	// The client frees the slot once the relay has seen both sides close, a moment after our Close: until then a
	// new connection is still one too many and is reset, possibly before its connect completes.
	for {
		err := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := lab.Laptop.Dial(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			return echo(conn, "room again\n")
		}()
		if err == nil {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("no new connection works 5s after one of %d was closed: %v", max, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("--max-conns %d: the %dth connection reset at once, %d log line(s); a new connection works %v after one closed",
		max, max+1, n, time.Since(start).Round(time.Millisecond))
}
