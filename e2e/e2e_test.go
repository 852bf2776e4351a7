//go:build linux

package e2e

// The lab (lab.go), one set of network namespaces per Lab, names k8t-<pid>-<n>-{laptop,node,pod}:
//
//	 laptop ns                      node ns                                 pod ns
//	┌──────────────────────┐       ┌──────────────────────────────────┐      ┌─────────────────────┐
//	│ k8stunnel (client)   │       │ sshd (OpenSSH) 10.200.1.1:22     │      │ test servers        │
//	│  + firewall child    │       │  └ k8stunnel server (uploaded)   │      │ HTTP :8080          │
//	│ nat REDIRECT rules   │       │ kube-proxy-like nat DNAT         │      │                     │
//	│  → 127.0.0.1:12300   │       │  10.96.0.10:80 → 10.244.1.10:8080│      │                     │
//	│                eth0 ─┼───────┼─ laptop0                  pod0 ──┼──────┼─ eth0               │
//	│       10.200.1.2/24  │ veth  │ 10.200.1.1/24    10.244.1.1/24   │ veth │ 10.244.1.10/24      │
//	│ default via          │       │ ip_forward=1                     │      │ default via         │
//	│  10.200.1.254 (dead) │       │ unreachable 10.244.9.0/24        │      │  10.244.1.1         │
//	└──────────────────────┘       └──────────────────────────────────┘      └─────────────────────┘
//
// The laptop has no route to 10.96.0.0/12 or 10.244.0.0/16 except through its dead gateway, so anything that
// reaches a pod or service got there through the tunnel. Nothing touches the root namespace's rules or routes.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binary   string // k8stunnel built by TestMain
	buildErr error
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // every test skips and says why
	}
	// Under `sudo make test`, k8stunnel would inherit these and do its SSH as the user who ran sudo, who cannot read
	// the lab's root-only keys. The lab's clients run as root; a test that wants sudo runs sudo itself.
	for _, k := range []string{"SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND", "SUDO_HOME"} {
		os.Unsetenv(k)
	}
	if removed, err := RemoveLeftovers(); len(removed) > 0 || err != nil {
		fmt.Fprintf(os.Stderr, "e2e: removed leftovers of earlier runs: %v (errors: %v)\n", removed, err)
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-bin-", namePrefix, os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// t.Cleanup never runs when the run is interrupted; this keeps a Ctrl-C or a kill from leaving namespaces,
	// sshd and k8stunnel processes behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "e2e: %v: removing the labs\n", sig)
		if err := CloseAll(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
		os.RemoveAll(dir)
		os.Exit(1)
	}()
	binary, buildErr = buildBinary(dir)
	return m.Run()
}

func buildBinary(dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "k8stunnel")
	cmd := exec.Command(gobin, "build", "-o", out, "github.com/k8stunnel/k8stunnel/cmd/k8stunnel")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/k8stunnel: %w\n%s", err, b)
	}
	return out, nil
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e tests need root to create network namespaces (run: sudo make e2e)")
	}
}

func newLab(t *testing.T) *Lab {
	t.Helper()
	return newLabOpts(t, Options{})
}

// newLabOpts is newLab with opts; Binary is always the one TestMain built.
func newLabOpts(t *testing.T, opts Options) *Lab {
	t.Helper()
	requireRoot(t)
	opts.Binary = binary
	lab, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sshd log:\n%s", lab.SSHDLog())
		}
		if err := lab.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	return lab
}

// startClient runs k8stunnel for the service and pod CIDRs and waits until it says the tunnel is ready.
func startClient(t *testing.T, lab *Lab) *Client {
	t.Helper()
	return startClientArgs(t, lab, append([]string{"-v"}, lab.ClientArgs(ServiceCIDR, PodCIDR)...)...)
}

// startClientArgs runs k8stunnel with args, waits until it is ready, and makes sure that a test that failed half-way
// shows its log and does not leave it running into the next test on the same lab.
func startClientArgs(t *testing.T, lab *Lab, args ...string) *Client {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	c, err := lab.StartClient(args...)
	if err != nil {
		t.Fatal(err)
	}
	watchClient(t, c)
	start := time.Now()
	if err := c.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("tunnel ready after %v", time.Since(start).Round(time.Millisecond))
	return c
}

// assertRootNamespaceUntouched reads (never changes) the machine's own rules: the lab must not leak into them.
func assertRootNamespaceUntouched(t *testing.T) {
	t.Helper()
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(cmd, "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("%s -t nat in the root namespace: %v\n%s", cmd, err, out)
		}
		if strings.Contains(strings.ToUpper(string(out)), "K8STUNNEL") {
			t.Errorf("the root namespace has k8stunnel rules (%s -t nat):\n%s", cmd, out)
		}
	}
}

// TestLab checks the lab itself with stock tools, without k8stunnel, so a broken lab is not blamed on the tunnel.
func TestLab(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// OpenSSH's own client proves the keys, known_hosts and sshd config; on the node, curl to the service IP
	// proves the kube-proxy DNAT for connections the node opens itself.
	out, err := lab.Laptop.Output(ctx, "ssh", "-F", "/dev/null", "-i", lab.Identity,
		"-o", "UserKnownHostsFile="+lab.KnownHosts, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=5", "root@"+NodeAddr,
		`printf '%s\n' "$HOME"; curl -sS --max-time 5 http://`+ServiceIP+`/`)
	if err != nil {
		t.Fatalf("ssh to the node: %v\n%s\nsshd log:\n%s", err, out, lab.SSHDLog())
	}
	home, body, _ := strings.Cut(out, "\n")
	if home != lab.NodeHome {
		t.Errorf("$HOME in an ssh session = %q, want %q", home, lab.NodeHome)
	}
	if want := "you asked for http://" + ServiceIP + "/"; !strings.Contains(body, want) {
		t.Errorf("node: curl http://%s/ = %q, want it to contain %q", ServiceIP, body, want)
	}

	c, err := lab.Node.Dial(ctx, "tcp", podHTTPAddr())
	if err != nil {
		t.Errorf("node cannot reach the pod: %v", err)
	} else {
		c.Close()
	}

	start := time.Now()
	_, err = lab.Node.Dial(ctx, "tcp", "10.244.9.9:80")
	if !errors.Is(err, syscall.EHOSTUNREACH) || time.Since(start) > time.Second {
		t.Errorf("node dial into %s: %v after %v, want EHOSTUNREACH at once", UnreachableNet, err, time.Since(start))
	}

	// Without the tunnel the laptop must not reach the cluster at all.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if c, err := lab.Laptop.Dial(short, "tcp", net.JoinHostPort(ServiceIP, strconv.Itoa(ServicePort))); err == nil {
		c.Close()
		t.Errorf("the laptop reaches %s without a tunnel; the lab would prove nothing", ServiceIP)
	}
}

// TestDataPath shares one lab and one client between subtests to keep the run short.
func TestDataPath(t *testing.T) {
	lab := newLab(t)
	assertRootNamespaceUntouched(t)
	client := startClient(t, lab)
	t.Cleanup(func() {
		if err := client.Stop(syscall.SIGTERM); err != nil {
			t.Errorf("stopping k8stunnel: %v", err)
		}
		assertRootNamespaceUntouched(t)
	})
	dataPathTests(t, lab)
}

// dataPathTests run through whatever tunnel is up in lab's laptop.
func dataPathTests(t *testing.T, lab *Lab) {
	t.Run("curl", func(t *testing.T) {
		for _, url := range []string{
			"http://" + ServiceIP + "/",
			"http://" + podHTTPAddr() + "/",
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			out, err := lab.Laptop.Output(ctx, "curl", "-sS", "--max-time", "10", url)
			cancel()
			if err != nil {
				t.Errorf("curl %s: %v", url, err)
				continue
			}
			want := fmt.Sprintf("hello from pod %s, you asked for %s", podHTTPAddr(), url)
			if strings.TrimSpace(out) != want {
				t.Errorf("curl %s = %q, want %q", url, out, want)
			}
		}
	})

	const bulk = 64 << 20
	t.Run("upload 64MiB", func(t *testing.T) {
		seed := uint64(time.Now().UnixNano())
		addr := servePod(t, lab, func(c net.Conn) {
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				t.Errorf("pod: reading the upload after %d bytes: %v", n, err)
				return
			}
			fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
		})
		c := dialLaptop(t, lab, addr)
		start := time.Now()
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(stream(seed), bulk)); err != nil {
			t.Fatalf("writing the upload: %v", err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatalf("closing the upload's write side: %v", err)
		}
		reply, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("reading the pod's digest: %v (got %q)", err, reply)
		}
		if want := fmt.Sprintf("%d %x\n", bulk, h.Sum(nil)); reply != want {
			t.Fatalf("the pod received %q, want %q (seed %d)", reply, want, seed)
		}
		t.Logf("upload: %s", rate(bulk, time.Since(start)))
	})

	t.Run("download 64MiB", func(t *testing.T) {
		seed := uint64(time.Now().UnixNano())
		addr := servePod(t, lab, func(c net.Conn) {
			if _, err := io.Copy(c, io.LimitReader(stream(seed), bulk)); err != nil {
				t.Errorf("pod: writing the download: %v", err)
			}
		})
		c := dialLaptop(t, lab, addr)
		start := time.Now()
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			t.Fatalf("reading the download after %d bytes: %v", n, err)
		}
		elapsed := time.Since(start)
		want := sha256.New()
		io.Copy(want, io.LimitReader(stream(seed), bulk))
		if n != bulk || string(h.Sum(nil)) != string(want.Sum(nil)) {
			t.Fatalf("downloaded %d bytes with sha256 %x, want %d bytes with %x (seed %d)", n, h.Sum(nil), bulk,
				want.Sum(nil), seed)
		}
		t.Logf("download: %s", rate(bulk, elapsed))
	})

	t.Run("half-close echo", func(t *testing.T) {
		addr := servePod(t, lab, echoAfterEOF(t))
		payload := make([]byte, 1<<20+7)
		stream(42).Read(payload)
		checkEcho(t, lab, addr, payload)
	})

	t.Run("parallel echoes", func(t *testing.T) {
		addr := servePod(t, lab, echoAfterEOF(t))
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				payload := make([]byte, 64<<10+i)
				stream(uint64(i)).Read(payload)
				checkEcho(t, lab, addr, payload)
			})
		}
		wg.Wait()
	})

	t.Run("12-byte writes echo at once", func(t *testing.T) {
		// PostgreSQL's "BEGIN;" is 12 bytes; these once looked like a yamux header to the batcher and waited for
		// traffic that never came. The pod echoes each write as it arrives, so each direction is tested alone.
		addr := servePod(t, lab, func(c net.Conn) { io.Copy(c, c) })
		c := dialLaptop(t, lab, addr)
		for _, p := range [][]byte{
			{0x78, 0x00, 0x79, 0x79, 0x79, 0x79, 0x79, 0x79, 0x00, 0x00, 0x00, 0x01},
			{'Q', 0, 0, 0, 11, 'B', 'E', 'G', 'I', 'N', ';', 0},
			make([]byte, 12),
		} {
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(p))
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("no echo of % x within 2s: %v", p, err)
			}
			if string(got) != string(p) {
				t.Fatalf("sent % x, echoed % x", p, got)
			}
		}
	})

	t.Run("refused port is a reset", func(t *testing.T) {
		expectReset(t, lab, net.JoinHostPort(PodAddr, "9"), time.Second)
	})

	t.Run("unreachable pod is a reset", func(t *testing.T) {
		expectReset(t, lab, "10.244.9.9:80", 3*time.Second)
	})
}

// TestShutdown: whichever way the user stops the client, it exits 0 and the laptop's rules are exactly as before.
func TestShutdown(t *testing.T) {
	lab := newLab(t)
	cases := []struct {
		name string
		stop func(*Client) error
	}{
		{"SIGTERM", func(c *Client) error { return c.Stop(syscall.SIGTERM) }},
		{"SIGHUP", func(c *Client) error { return c.Stop(syscall.SIGHUP) }},
		// A terminal's Ctrl-C reaches the whole process group, the firewall child included.
		{"Ctrl-C to the process group", func(c *Client) error {
			if err := c.SignalGroup(syscall.SIGINT); err != nil {
				return err
			}
			return c.Wait(StopTimeout)
		}},
		// timeout(1) and systemd: SIGTERM to the main process, then to its whole group (iptables runs of the
		// cleanup included) a moment later.
		{"SIGTERM, then SIGTERM to the process group", func(c *Client) error {
			if err := c.Signal(syscall.SIGTERM); err != nil {
				return err
			}
			time.Sleep(5 * time.Millisecond)
			if err := c.SignalGroup(syscall.SIGTERM); err != nil {
				return err
			}
			return c.Wait(StopTimeout)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assertRootNamespaceUntouched(t)
			before := iptablesSave(t, lab)
			c := startClient(t, lab)
			during := iptablesSave(t, lab)
			if during == before {
				t.Fatalf("k8stunnel is ready but the laptop's rules did not change:\n%s", during)
			}
			if !strings.Contains(during, "LAB-USER") {
				t.Errorf("the laptop's own rules are gone while k8stunnel runs:\n%s", during)
			}
			httpGet(t, lab, "http://"+ServiceIP+"/")
			// Otherwise expectGone below would pass without looking at anything.
			if helpers, err := lab.NodeHelperPids(); err != nil || len(helpers) == 0 {
				t.Fatalf("no k8stunnel helper found on the node while the tunnel is up (%v)", err)
			}

			if err := tc.stop(c); err != nil {
				t.Errorf("k8stunnel did not exit cleanly: %v", err)
			}
			if after := iptablesSave(t, lab); after != before {
				t.Errorf("the laptop's rules differ after k8stunnel exited\nbefore:\n%s\nafter:\n%s", before, after)
			}
			expectGone(t, lab)
			assertRootNamespaceUntouched(t)
		})
	}
}

// TestGateway: connections the laptop routes (a container behind it) are captured only in gateway mode, and then
// they work; by default k8stunnel installs no PREROUTING rule at all.
func TestGateway(t *testing.T) {
	lab := newLab(t)
	ctr, err := lab.AddContainer()
	if err != nil {
		t.Fatal(err)
	}
	before := iptablesSave(t, lab)
	c := startClient(t, lab)
	for _, line := range k8stunnelRules(iptablesSave(t, lab)) {
		// The UDP capture's TPROXY chain hangs off mangle PREROUTING, the only place TPROXY works, but it takes only
		// packets marked in OUTPUT: this host's own.
		if strings.Contains(line, "PREROUTING") && !strings.HasSuffix(line, "-T") {
			t.Errorf("without --gateway, a PREROUTING rule: %s", line)
		}
	}
	if err := tryGetFrom(ctr, "http://"+ServiceIP+"/"); err == nil {
		t.Errorf("without --gateway, the container reached the service through the tunnel")
	}
	stopClient(t, c)

	c = startClientArgs(t, lab, append([]string{"--gateway"}, lab.ClientArgs(ServiceCIDR, PodCIDR)...)...)
	if err := tryGetFrom(ctr, "http://"+ServiceIP+"/"); err != nil {
		t.Errorf("with --gateway, from the container: %v", err)
	}
	if err := tryGetFrom(ctr, "http://"+net.JoinHostPort(PodAddr, strconv.Itoa(PodHTTPPort))+"/"); err != nil {
		t.Errorf("with --gateway, from the container to the pod: %v", err)
	}
	httpGet(t, lab, "http://"+ServiceIP+"/")
	stopClient(t, c)
	if after := iptablesSave(t, lab); after != before {
		t.Errorf("the laptop's rules differ after exit\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestReconnect: when the helper on the node dies, the client brings the tunnel back by itself; meanwhile new
// connections are reset rather than left hanging.
func TestReconnect(t *testing.T) {
	lab := newLab(t)
	c := startClient(t, lab)
	t.Cleanup(func() {
		if err := c.Stop(syscall.SIGTERM); err != nil {
			t.Errorf("stopping k8stunnel: %v", err)
		}
	})
	helpers, err := lab.NodeHelperPids()
	if err != nil || len(helpers) == 0 {
		t.Fatalf("no k8stunnel helper found on the node (%v)", err)
	}
	for _, pid := range helpers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	start := time.Now()
	var failures []string
	for {
		err := tryGet(lab, "http://"+ServiceIP+"/")
		if err == nil {
			t.Logf("the tunnel works again %v after its helper was killed (%d failed attempts)",
				time.Since(start).Round(time.Millisecond), len(failures))
			return
		}
		failures = append(failures, err.Error())
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the tunnel is still down 10s after its helper was killed; attempts:\n%s",
				strings.Join(failures, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitRulesBack waits up to 5s for the laptop's rules and routes to be before again, after what happened.
func waitRulesBack(t *testing.T, lab *Lab, before, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := iptablesSave(t, lab)
		if after == before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("5s after %s the laptop's rules or routes still differ\nbefore:\n%s\nafter:\n%s", what, before, after)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKilled: a client killed outright must not leave the laptop broken.
func TestKilled(t *testing.T) {
	lab := newLab(t)

	// The firewall child outlives the client it belongs to; it has to notice and take the rules out.
	t.Run("client alone: its firewall child restores the rules", func(t *testing.T) {
		before := iptablesSave(t, lab)
		c := startClient(t, lab)
		if err := c.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-c.Exited()
		waitRulesBack(t, lab, before, "SIGKILL of the client")
		expectGone(t, lab)
	})

	// Nothing of k8stunnel survives to clean up; `k8stunnel cleanup` alone restores the laptop, and running it
	// again is harmless.
	t.Run("whole group: k8stunnel cleanup restores the rules", func(t *testing.T) {
		before := iptablesSave(t, lab)
		c := startClient(t, lab)
		if err := c.SignalGroup(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-c.Exited()
		if after := iptablesSave(t, lab); after == before {
			t.Log("the rules were already gone after SIGKILL; cleanup has nothing to do")
		}
		for i := range 2 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, err := lab.Laptop.Command(ctx, binary, "cleanup").CombinedOutput()
			cancel()
			if err != nil {
				t.Fatalf("k8stunnel cleanup (run %d): %v\n%s", i+1, err, out)
			}
			if after := iptablesSave(t, lab); after != before {
				t.Fatalf("after k8stunnel cleanup (run %d) the laptop's rules differ\nbefore:\n%s\nafter:\n%s\ncleanup output:\n%s",
					i+1, before, after, out)
			}
		}
		expectGone(t, lab)
	})
	assertRootNamespaceUntouched(t)
}

func iptablesSave(t *testing.T, lab *Lab) string {
	t.Helper()
	s, err := lab.IptablesSave(lab.Laptop)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// expectGone waits for the client's processes in the laptop and the helper on the node to disappear: a helper that
// outlives its client would pile up on the node with every run.
func expectGone(t *testing.T, lab *Lab) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		laptop, err1 := lab.Laptop.Pids()
		helpers, err2 := lab.NodeHelperPids()
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		if len(laptop) == 0 && len(helpers) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("5s after k8stunnel exited: processes left in the laptop %s, helpers left on the node %s",
				describe(laptop), describe(helpers))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func describe(pids []int) string {
	var parts []string
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		parts = append(parts, fmt.Sprintf("%d %q", pid, strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// servePod serves handle on a fresh port of the pod and returns the address. Each connection gets a deadline so a
// stuck tunnel fails the test instead of hanging it.
func servePod(t *testing.T, lab *Lab, handle func(net.Conn)) string {
	t.Helper()
	return servePodAt(t, lab, net.JoinHostPort(PodAddr, "0"), handle)
}

// servePodAt serves handle on addr in the pod namespace and returns the address it listens on.
func servePodAt(t *testing.T, lab *Lab, addr string, handle func(net.Conn)) string {
	t.Helper()
	ln, err := lab.Pod.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				handle(c)
			})
		}
	})
	return ln.Addr().String()
}

func dialLaptop(t *testing.T, lab *Lab, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := lab.Laptop.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	return c
}

// echoAfterEOF reads everything, and only after the client's FIN writes it back: the tunnel must carry a half-close.
func echoAfterEOF(t *testing.T) func(net.Conn) {
	return func(c net.Conn) {
		data, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("pod: reading until EOF: %v", err)
			return
		}
		if _, err := c.Write(data); err != nil {
			t.Errorf("pod: echoing %d bytes: %v", len(data), err)
		}
	}
}

// checkEcho may run in its own goroutine, so it reports with Errorf only.
func checkEcho(t *testing.T, lab *Lab, addr string, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := lab.Laptop.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.Write(payload); err != nil {
		t.Errorf("writing %d bytes: %v", len(payload), err)
		return
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Errorf("closing the write side: %v", err)
		return
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Errorf("reading the echo after %d of %d bytes: %v", len(got), len(payload), err)
		return
	}
	if string(got) != string(payload) {
		t.Errorf("echo of %d bytes came back as %d bytes that differ", len(payload), len(got))
	}
}

// expectReset dials addr through the tunnel. The local connect succeeds (the client accepts before it knows the
// outcome), so a failed dial on the node must come back as a reset; a clean EOF would look like an empty reply.
// When the reset is quick it can beat the connect's own completion check, and then the dial itself reports it.
func expectReset(t *testing.T, lab *Lab, addr string, within time.Duration) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	c, err := lab.Laptop.Dial(ctx, "tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		t.Logf("%s: reset after %v (while connecting)", addr, time.Since(start).Round(time.Millisecond))
		return
	}
	if err != nil {
		t.Fatalf("%s: %v, want a connection that is then reset", addr, err)
	}
	defer c.Close()
	c.SetReadDeadline(start.Add(within))
	n, err := c.Read(make([]byte, 1))
	elapsed := time.Since(start).Round(time.Millisecond)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		t.Logf("%s: reset after %v", addr, elapsed)
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Errorf("%s: no reset within %v", addr, within)
	case errors.Is(err, io.EOF):
		t.Errorf("%s: clean EOF after %v, want a reset (ECONNRESET)", addr, elapsed)
	default:
		t.Errorf("%s: read = %d, %v after %v, want ECONNRESET", addr, n, err, elapsed)
	}
}

// httpGet fetches url from the laptop through Netns.Dial, the Go-side twin of the curl check.
func httpGet(t *testing.T, lab *Lab, url string) {
	t.Helper()
	if err := tryGet(lab, url); err != nil {
		t.Fatal(err)
	}
}

func tryGet(lab *Lab, url string) error { return tryGetFrom(lab.Laptop, url) }

// tryGetFrom gets url from inside ns.
func tryGetFrom(ns *Netns, url string) error {
	body, err := getFrom(ns, url)
	if err != nil || !strings.Contains(body, "hello from pod") {
		return fmt.Errorf("GET %s through the tunnel: %q, %v", url, body, err)
	}
	return nil
}

// getFrom returns the body of url, got from inside ns.
func getFrom(ns *Netns, url string) (string, error) {
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: ns.Dial, DisableKeepAlives: true},
	}
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// stream is a reproducible pseudo-random byte stream, so each side can check content without shipping it twice.
func stream(seed uint64) io.Reader {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(key)
}

func rate(n int64, d time.Duration) string {
	return fmt.Sprintf("%d MiB in %v (%.0f MiB/s)", n>>20, d.Round(time.Millisecond), float64(n)/(1<<20)/d.Seconds())
}
