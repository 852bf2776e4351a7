//go:build linux

package e2e

// UDP through the tunnel, in the lab of e2e_test.go plus its IPv6 twin (addIPv6) and a UDP service:
//
//	laptop ns                            node ns                               pod ns
//	k8stunnel: mangle OUTPUT marks,      nat OUTPUT: 10.96.0.10:7/udp          UDP echo on 10.244.1.10 and
//	  ip rule → local route via lo,        → 10.244.1.10:<echo port>             [fd00:244:1::10], iperf3 -s,
//	  TPROXY → 127.0.0.1/[::1]:<port>    (the helper's socket is the node's)   dnsmasq (StartDNS)

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	udpSvcPort   = 7 // ServiceIP:7/udp is DNATed to the pod's UDP echo
	udpIdleInLab = 2 * time.Second
)

// serveUDPEcho echoes every datagram the pod gets on addr back to its sender and returns the address it listens on.
func serveUDPEcho(t *testing.T, lab *Lab, network, addr string) netip.AddrPort {
	t.Helper()
	var pc net.PacketConn
	if err := lab.Pod.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// laptopUDP opens an unconnected UDP socket in the laptop.
func laptopUDP(t *testing.T, lab *Lab, network string) *net.UDPConn {
	t.Helper()
	var pc net.PacketConn
	if err := lab.Laptop.Do(func() (err error) {
		pc, err = net.ListenPacket(network, ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// echoDatagrams sends n datagrams to dst from pc, one at a time, and wants each echoed back, unchanged, from dst
// itself: a client that checks where an answer came from (a DNS resolver, a connected socket) takes nothing else.
func echoDatagrams(t *testing.T, pc *net.UDPConn, dst netip.AddrPort, n int) {
	t.Helper()
	buf := make([]byte, 2048)
	for i := range n {
		msg := fmt.Appendf(nil, "datagram %d to %v %s", i, dst, strings.Repeat("x", i*5))
		if _, err := pc.WriteToUDPAddrPort(msg, dst); err != nil {
			t.Fatalf("sending datagram %d to %v: %v", i, dst, err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d to %v: no echo: %v", i, dst, err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from != dst || string(buf[:got]) != string(msg) {
			t.Fatalf("datagram %d to %v: echo %q from %v, want %q from %v", i, dst, buf[:got], from, msg, dst)
		}
	}
}

// TestUDP: datagrams to pod and service IPs (IPv4 and IPv6) are carried per flow and answered from the address the
// application asked, iperf3 -u and dig work through the tunnel, idle flows expire, and after exit and after kill -9
// the laptop's rules and routes are exactly as before.
func TestUDP(t *testing.T) {
	lab := newLab(t)
	addIPv6(t, lab)
	echo4 := serveUDPEcho(t, lab, "udp4", net.JoinHostPort(PodAddr, "0"))
	echo6 := serveUDPEcho(t, lab, "udp6", net.JoinHostPort(podAddr6, "0"))
	// kube-proxy for a UDP service: the helper's socket is the node's own, so nat OUTPUT DNATs it.
	if _, err := lab.Node.Output(context.Background(), "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-d", ServiceIP,
		"-p", "udp", "--dport", strconv.Itoa(udpSvcPort), "-j", "DNAT", "--to-destination", echo4.String()); err != nil {
		t.Fatal(err)
	}
	svc := netip.AddrPortFrom(netip.MustParseAddr(ServiceIP), udpSvcPort)
	d, err := lab.StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	before := iptablesSave(t, lab)
	args := append([]string{"-v", "--udp-idle", udpIdleInLab.String()}, lab.ClientArgs(ServiceCIDR, PodCIDR, podCIDR6)...)
	c := startClientArgs(t, lab, args...)

	t.Run("200 datagrams each to a pod IP, a service IP and an IPv6 pod", func(t *testing.T) {
		echoDatagrams(t, laptopUDP(t, lab, "udp4"), echo4, 200)
		echoDatagrams(t, laptopUDP(t, lab, "udp4"), svc, 200)
		echoDatagrams(t, laptopUDP(t, lab, "udp6"), echo6, 200)
	})

	t.Run("connected socket", func(t *testing.T) {
		conn, err := lab.Laptop.Dial(context.Background(), "udp", svc.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 100)
		for i := range 10 {
			msg := "connected " + strconv.Itoa(i)
			if _, err := conn.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			n, err := conn.Read(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("connected socket to %v: read %q, %v; want %q", svc, buf[:n], err, msg)
			}
		}
	})

	t.Run("dig over UDP", func(t *testing.T) {
		for _, server := range []string{ClusterDNSPodAddr, ClusterDNSIP} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			out, err := lab.Laptop.Output(ctx, "dig", "+notcp", "+tries=1", "+time=5", "+short", "@"+server, ServiceName)
			cancel()
			if err != nil || strings.TrimSpace(out) != ServiceIP {
				t.Errorf("dig @%s %s: %q, %v; want %s", server, ServiceName, out, err, ServiceIP)
			}
		}
	})

	t.Run("iperf3 -u at 100 Mbit/s", func(t *testing.T) {
		loss, err := iperfUDP(lab, "100M", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("iperf3 -u -b 100M through the tunnel: %.2f%% lost", loss)
		if loss >= 1 {
			// Where they were lost: RcvbufErrors in the laptop are the flow's socket, in the pod iperf3's;
			// k8stunnel status counts what its queues dropped.
			for _, ns := range []*Netns{lab.Laptop, lab.Node, lab.Pod} {
				out, _ := ns.Output(context.Background(), "grep", "^Udp:", "/proc/net/snmp")
				t.Logf("%s: %s", ns.Name, out)
			}
			out, _ := lab.Laptop.Output(context.Background(), binary, "status")
			t.Logf("k8stunnel status:\n%s", out)
			t.Errorf("iperf3 -u -b 100M lost %.2f%% of its datagrams, want < 1%%", loss)
		}
	})

	t.Run("idle flows expire", func(t *testing.T) {
		pc := laptopUDP(t, lab, "udp4")
		src := netip.AddrPortFrom(netip.MustParseAddr(LaptopAddr), pc.LocalAddr().(*net.UDPAddr).AddrPort().Port())
		offset := len(c.Stderr())
		echoDatagrams(t, pc, echo4, 1)
		sent := time.Now()
		line := waitLog(t, c, offset, fmt.Sprintf("udp %v -> %v closed", src, echo4), 10*time.Second)
		if quiet := time.Since(sent); quiet < udpIdleInLab {
			t.Errorf("the flow ended %v after its last datagram, before the idle timeout of %v: %s", quiet, udpIdleInLab, line)
		}
		if out, err := lab.Laptop.Output(context.Background(), "ss", "-Huan", "src", echo4.String()); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("sockets bound to %v after the flow expired: %q, %v", echo4, out, err)
		}
		// A new flow for the same addresses starts with the next datagram.
		echoDatagrams(t, pc, echo4, 3)
	})

	// Each flow holds one socket at each end, bound to (laptop) or connected to (node) the destination, and no
	// other descriptor; once idle, all of them go.
	t.Run("many flows: one socket each end, all gone once idle", func(t *testing.T) {
		const flows = 300
		udpSockets := func(ns *Netns, filter string) int {
			out, err := ns.Output(context.Background(), "ss", "-Huan", filter, echo4.String())
			if err != nil {
				t.Fatal(err)
			}
			return len(strings.Fields(out)) / 5 // State Recv-Q Send-Q Local Peer
		}
		fds := func() int {
			entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", c.Pid()))
			if err != nil {
				t.Fatal(err)
			}
			return len(entries)
		}
		waitGone := func(what string) {
			deadline := time.Now().Add(udpIdleInLab + 10*time.Second)
			for udpSockets(lab.Laptop, "src") != 0 || udpSockets(lab.Node, "dst") != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%s: %d flow sockets in the laptop, %d in the node %v after the last datagram", what,
						udpSockets(lab.Laptop, "src"), udpSockets(lab.Node, "dst"), udpIdleInLab+10*time.Second)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		waitGone("before")
		base := fds()
		var pcs []*net.UDPConn
		for range flows {
			pc := laptopUDP(t, lab, "udp4")
			echoDatagrams(t, pc, echo4, 1)
			pcs = append(pcs, pc)
		}
		if l, n := udpSockets(lab.Laptop, "src"), udpSockets(lab.Node, "dst"); l != flows || n != flows {
			t.Errorf("%d flows: %d sockets bound to %v in the laptop and %d connected to it in the node, want %d each",
				flows, l, echo4, n, flows)
		}
		if got := fds() - base; got != flows {
			t.Errorf("%d flows: the client holds %d more descriptors, want %d", flows, got, flows)
		}
		waitGone("idle")
		if got := fds(); got != base {
			t.Errorf("all flows expired: the client holds %d descriptors, %d before", got, base)
		}
		for _, pc := range pcs {
			pc.Close()
		}
	})

	t.Run("nothing left after exit", func(t *testing.T) {
		stopClient(t, c)
		if after := iptablesSave(t, lab); after != before {
			t.Fatalf("the laptop's rules or routes differ after exit\nbefore:\n%s\nafter:\n%s", before, after)
		}
		expectNoTunnel(t, lab)
	})

	// A resolver inside the forwarded CIDRs: its queries are the DNS proxy's (nat REDIRECT), never a UDP flow.
	t.Run("with --dns, the DNS rules keep their queries", func(t *testing.T) {
		if err := os.WriteFile(d.ResolvConf, []byte("nameserver "+ClusterDNSIP+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startClientArgs(t, lab, append([]string{"--dns", "--cluster-dns", ClusterDNSIP}, args...)...)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if out, err := lab.Laptop.Output(ctx, "getent", "hosts", ServiceName); err != nil || !strings.HasPrefix(out, ServiceIP+" ") {
			t.Errorf("getent hosts %s = %q, %v; want %s", ServiceName, out, err, ServiceIP)
		}
		if strings.Contains(c.Stderr(), "-> "+ClusterDNSIP+":53\n") || strings.Contains(c.Stderr(), "-> "+ClusterDNSIP+":53\"") {
			t.Errorf("a query to the resolver %s became a UDP flow:\n%s", ClusterDNSIP, c.Stderr())
		}
		status, err := lab.Laptop.Output(ctx, binary, "status", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var st []struct {
			Pid int `json:"pid"`
			DNS struct {
				Queries int64 `json:"queries"`
			} `json:"dns"`
		}
		if err := json.Unmarshal([]byte(status), &st); err != nil {
			t.Fatal(err)
		}
		answered := false
		for _, s := range st {
			answered = answered || (s.Pid == c.Pid() && s.DNS.Queries > 0)
		}
		if !answered {
			t.Errorf("the DNS proxy answered no query: %s", status)
		}
		echoDatagrams(t, laptopUDP(t, lab, "udp4"), svc, 5)
		stopClient(t, c)
		if after := iptablesSave(t, lab); after != before {
			t.Fatalf("the laptop's rules or routes differ after exit\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})

	t.Run("nothing left after kill -9", func(t *testing.T) {
		c := startClientArgs(t, lab, args...)
		if during := iptablesSave(t, lab); !strings.Contains(during, "TPROXY") || !strings.Contains(during, "lookup") {
			t.Fatalf("the tunnel is up but the UDP rules or ip rule are missing:\n%s", during)
		}
		echoDatagrams(t, laptopUDP(t, lab, "udp4"), svc, 5)
		if err := c.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-c.Exited()
		waitRulesBack(t, lab, before, "kill -9")
		expectNoTunnel(t, lab)
	})
	assertRootNamespaceUntouched(t)
}

// iperfUDP runs iperf3 -u at rate for d from the laptop to the pod and returns the percentage of datagrams lost.
// The receiver asks for a 2 MiB socket buffer (-w): the tunnel hands datagrams over in bursts (whatever one read of
// the stream brings), which iperf3's default 208 KiB overflows when the machine is busy; that loss is the
// receiving application's, and the laptop's and the node's counters show none of the tunnel's own.
func iperfUDP(lab *Lab, rate string, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	srv := lab.Pod.Command(ctx, "iperf3", "-s", "-1", "--forceflush", "-B", PodAddr, "-p", "5201")
	stdout, err := srv.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("starting iperf3 -s: %w (install it with: sudo scripts/deps.sh)", err)
	}
	defer srv.Wait()
	defer srv.Process.Kill()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.Contains(sc.Text(), "Server listening") {
	}
	go func() {
		for sc.Scan() {
		}
	}()
	out, err := lab.Laptop.Output(ctx, "iperf3", "-u", "-b", rate, "-t", strconv.Itoa(int(d.Seconds())), "-J",
		"-w", "2M", "--connect-timeout", "5000", "-c", PodAddr, "-p", "5201")
	lost, _, err := IperfUDPResult([]byte(out), err)
	return lost, err
}

// expectNoTunnel is expectGone for a lab whose laptop also runs the DNS lab's resolver: no k8stunnel process may be
// left in the laptop, and no helper on the node.
func expectNoTunnel(t *testing.T, lab *Lab) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs, err1 := Procs(lab.Laptop)
		helpers, err2 := lab.NodeHelperPids()
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		var left []Proc
		for _, p := range procs {
			if p.Exe == binary {
				left = append(left, p)
			}
		}
		if len(left) == 0 && len(helpers) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("5s after k8stunnel exited: left in the laptop %v, helpers on the node %s", left, describe(helpers))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
