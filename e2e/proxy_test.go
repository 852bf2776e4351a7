//go:build linux

package e2e

// The rootless proxy mode in the lab drawn in e2e_test.go, with the cluster DNS of dnslab.go: k8stunnel runs as
// nobody with --socks and --http-proxy and no CIDR, so there is no firewall part, no sudo and no rule; curl (and a
// Go SOCKS client, for the 1000 connections) in the laptop namespace reach the cluster through the proxies.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

const (
	labSOCKS = "127.0.0.1:1080"
	labHTTP  = "127.0.0.1:3128"
)

// curl runs curl in the laptop namespace and returns its output (stdout and stderr) and how long it took.
func curl(t *testing.T, lab *Lab, args ...string) (string, time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	out, err := lab.Laptop.Command(ctx, "curl", append([]string{"-sS", "--max-time", "10"}, args...)...).CombinedOutput()
	return string(out), time.Since(start), err
}

func TestProxyRootless(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is not installed; install the test dependencies with: sudo scripts/deps.sh")
	}
	lab, _ := newDNSLab(t)
	pub, removePub, err := PublicCopy(binary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(removePub)
	home, removeHome, err := UserHome(65534, 65534, map[string]string{"id_ed25519": lab.Identity, "known_hosts": lab.KnownHosts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(removeHome)
	before := iptablesSave(t, lab)

	argv := AsUser("nobody", "nogroup", pub, "-r", "root@"+NodeAddr, "--socks", labSOCKS, "--http-proxy", labHTTP,
		"--cluster-dns", ClusterDNSIP)
	c, err := StartClientCmd(lab, func(cmd *exec.Cmd) { cmd.Env = UserEnv("nobody", home, "/usr/local/bin:/usr/bin:/bin") }, argv[0], argv[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	watchClient(t, c)
	if err := c.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}

	// One k8stunnel process, nobody's: no firewall child, no sudo.
	procs, err := Procs(lab.Laptop)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if (p.Exe == pub || strings.HasSuffix(p.Exe, "/sudo")) && (p.UID != 65534 || p.Pid != c.Pid()) {
			t.Errorf("k8stunnel or sudo process besides the client (pid %d, nobody): %v", c.Pid(), p)
		}
	}

	for _, url := range []string{
		"http://" + ServiceIP + "/",
		"http://" + podHTTPAddr() + "/",
		"http://" + ServiceName + "/",
	} {
		for _, via := range [][]string{
			{"--socks5-hostname", labSOCKS},
			{"-x", "http://" + labHTTP},                  // absolute-URI request
			{"-x", "http://" + labHTTP, "--proxytunnel"}, // CONNECT
		} {
			out, _, err := curl(t, lab, append(via, url)...)
			if err != nil || !strings.Contains(out, "hello from pod") {
				t.Errorf("curl %s %s: %v\n%s", strings.Join(via, " "), url, err, out)
			}
		}
	}

	// A refused port: the proper error, at once.
	refused := "http://" + PodAddr + ":1/"
	for _, tc := range []struct {
		via  []string
		want string
	}{
		// curl prints the SOCKS reply code: 5 is "connection refused".
		{[]string{"--socks5-hostname", labSOCKS}, "Can't complete SOCKS5 connection to " + PodAddr + ". (5)"},
		{[]string{"-x", "http://" + labHTTP, "-w", "status %{http_code}"}, "connection refused\nstatus 502"},
		{[]string{"-x", "http://" + labHTTP, "--proxytunnel"}, "CONNECT tunnel failed, response 502"},
	} {
		out, took, err := curl(t, lab, append(tc.via, refused)...)
		if !strings.Contains(out, tc.want) {
			t.Errorf("curl %s %s: %v, %q; want %q", strings.Join(tc.via, " "), refused, err, out, tc.want)
		}
		if took > time.Second {
			t.Errorf("curl %s %s took %v, want the error within 1s", strings.Join(tc.via, " "), refused, took)
		}
		t.Logf("curl %s %s: %v after %v: %s", strings.Join(tc.via, " "), refused, err, took.Round(time.Millisecond), strings.TrimSpace(out))
	}

	// 1000 connections through the SOCKS proxy, all open at once.
	echo := servePod(t, lab, func(c net.Conn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			c.Write([]byte(line))
		}
	})
	socks, err := proxy.SOCKS5("tcp", labSOCKS, nil, netnsDialer{lab.Laptop})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range conns {
		wg.Go(func() {
			c, err := socks.(proxy.ContextDialer).DialContext(t.Context(), "tcp", echo)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("%d of %d SOCKS connections failed, the first with: %v", len(errs)+1, n, err)
	}
	for i, c := range conns {
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			msg := fmt.Sprintf("connection %d\n", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			got, err := io.ReadAll(c)
			if string(got) != msg {
				t.Errorf("connection %d: echo %q, %v; want %q", i, got, err, msg)
			}
		})
	}
	wg.Wait()

	if during := iptablesSave(t, lab); during != before {
		t.Errorf("the laptop's rules changed with only proxies running\nbefore:\n%s\nduring:\n%s", before, during)
	}
	stopClient(t, c)
	if after := iptablesSave(t, lab); after != before {
		t.Errorf("the laptop's rules differ after the proxies stopped\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// The lab's DNS runs in the laptop too, so expectNoProcs does not fit: look for k8stunnel alone.
	procs, err = Procs(lab.Laptop)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.Exe == pub {
			t.Errorf("k8stunnel still running after it stopped: %v", p)
		}
	}
}

// netnsDialer dials from inside a namespace, for golang.org/x/net/proxy.
type netnsDialer struct{ ns *Netns }

func (d netnsDialer) Dial(network, addr string) (net.Conn, error) {
	return d.ns.Dial(context.Background(), network, addr)
}

func (d netnsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.ns.Dial(ctx, network, addr)
}
