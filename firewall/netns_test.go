//go:build linux

package firewall

// The root-only test below works in one network namespace of its own; the
// machine's root namespace is only ever read (iptables-save before and
// after, which must match).
//
//	netns k8stunnel-fw-<pid>
//	┌────────────────────────────────────────────────────────┐
//	│  lo  127.0.0.1 ::1      listener on :<port> (all addrs) │
//	│  v0  10.99.0.1/24 fd00:99::1/64 ──veth── v1 (no address) │
//	└────────────────────────────────────────────────────────┘
//
// A dial to 10.99.0.2:80 (or [fd00:99::2]:80) must be REDIRECTed to the
// listener. Without the rule the SYN would leave through v0 and die at v1,
// inside the namespace.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRealIptablesInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	rootBefore := saveNat(t)

	name := fmt.Sprintf("k8stunnel-fw-%d", os.Getpid())
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	veth := exec.Command("ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1").Run() == nil
	if veth {
		run(t, "ip", "-n", name, "addr", "add", "10.99.0.1/24", "dev", "v0")
		run(t, "ip", "-n", name, "addr", "add", "fd00:99::1/64", "dev", "v0", "nodad")
		run(t, "ip", "-n", name, "link", "set", "v0", "up")
		run(t, "ip", "-n", name, "link", "set", "v1", "up")
	} else {
		t.Log("no veth support: checking the rules, not the traffic")
	}

	if err := inNetns(name, func() error { return exerciseRealIptables(t, veth) }); err != nil {
		t.Fatal(err)
	}

	if rootAfter := saveNat(t); rootAfter != rootBefore {
		t.Fatalf("the root namespace's nat table changed!\nbefore:\n%s\nafter:\n%s", rootBefore, rootAfter)
	}
}

// inNetns runs fn on an OS thread that has joined netns name, so that fn's
// sockets and the iptables processes it starts (Go forks from the calling
// thread) all live there. It refuses to run fn unless the thread really is
// in that namespace.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: a goroutine that exits locked takes its thread
		// with it, so no other goroutine ever runs in the test namespace.
		errc <- func() error {
			ns, err := os.Open("/run/netns/" + name)
			if err != nil {
				return err
			}
			defer ns.Close()
			var before, want, got unix.Stat_t
			if err := unix.Stat("/proc/thread-self/ns/net", &before); err != nil {
				return err
			}
			if err := unix.Fstat(int(ns.Fd()), &want); err != nil {
				return err
			}
			if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("joining netns %s: %w", name, err)
			}
			if err := unix.Stat("/proc/thread-self/ns/net", &got); err != nil {
				return err
			}
			if got.Ino != want.Ino || got.Dev != want.Dev || got.Ino == before.Ino {
				return fmt.Errorf("thread is not in netns %s after setns; refusing to touch iptables", name)
			}
			return fn()
		}()
	}()
	return <-errc
}

// exerciseRealIptables runs inside the test namespace. It reports failures
// with t.Errorf (not Fatal: it is not on the test goroutine) and returns an
// error to stop early.
func exerciseRealIptables(t *testing.T, veth bool) error {
	before := saveNat(t)
	_, err := NewTables(IPv6)
	ipv6 := err == nil
	if !ipv6 {
		t.Logf("no usable ip6tables in the netns, IPv4 only: %v", err)
	}

	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		return err
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)

	spec := Spec{
		Port:    port,
		Include: targets(t, "10.99.0.0/24", "10.98.0.0/16:8000-9000"),
		Exclude: targets(t, "10.99.0.3", "10.99.0.0/24:22"),
		DNS:     []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")},
		DNSPort: port,
		// Routed connections from the veth peer come through PREROUTING.
		Gateway: true,
		Listen:  []netip.AddrPort{ln.Addr().(*net.TCPAddr).AddrPort()},
	}
	if ipv6 {
		spec.Include = append(spec.Include, targets(t, "fd00:99::/64", "[fd00:98::/64]:443")...)
		spec.Exclude = append(spec.Exclude, targets(t, "fd00:99::3")...)
	}
	log := testLogger(t)
	fw := New(nil, log)
	if err := fw.Install(spec); err != nil {
		return fmt.Errorf("Install: %w", err)
	}

	// Every planned rule must read back exactly as Plan spells it.
	saved := saveNat(t)
	chain := ChainName(spec)
	for _, want := range []string{":" + chain + " -", "-A OUTPUT -j " + chain, "-A PREROUTING -j " + chain} {
		if !strings.Contains(saved, "\n"+want) {
			t.Errorf("iptables-save lacks %q:\n%s", want, saved)
		}
	}
	for _, r := range Plan(spec) {
		if line := "-A " + chain + " " + strings.Join(r.Args, " ") + "\n"; !strings.Contains(saved, line) {
			t.Errorf("iptables-save lacks %q:\n%s", line, saved)
		}
	}
	if ok, err := fw.Check(); !ok || err != nil {
		t.Errorf("Check after Install = %v, %v; want true", ok, err)
	}

	if veth {
		expectRedirect(t, ln, "10.99.0.2:80")
		if ipv6 {
			expectRedirect(t, ln, "[fd00:99::2]:80")
		}
	}

	// Someone flushes the nat table; Check notices, heal restores.
	if out, err := exec.Command("iptables", "-t", "nat", "-F").CombinedOutput(); err != nil {
		return fmt.Errorf("iptables -t nat -F: %w: %s", err, out)
	}
	if ok, err := fw.Check(); ok || err != nil {
		t.Errorf("Check after a flush = %v, %v; want false", ok, err)
	}
	if restored, err := fw.heal(spec); !restored || err != nil {
		t.Errorf("heal = %v, %v; want true", restored, err)
	}
	if ok, err := fw.Check(); !ok || err != nil {
		t.Errorf("Check after heal = %v, %v; want true", ok, err)
	}

	if err := fw.Remove(); err != nil {
		return fmt.Errorf("Remove: %w", err)
	}
	if err := fw.Remove(); err != nil {
		return fmt.Errorf("second Remove: %w", err)
	}
	if after := saveNat(t); after != before {
		t.Errorf("Remove did not restore the nat table\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Cleanup finds chains without saved state, for any port.
	if err := New(nil, log).Install(spec); err != nil {
		return fmt.Errorf("Install: %w", err)
	}
	other := Spec{Port: port + 1, Include: targets(t, "10.97.0.0/16")}
	if err := New(nil, log).Install(other); err != nil {
		return fmt.Errorf("Install: %w", err)
	}
	want := 2
	if ipv6 {
		want = 3
	}
	if removed, err := Cleanup(nil, log); removed != want || err != nil {
		t.Errorf("Cleanup = %d, %v; want %d, nil", removed, err, want)
	}
	if after := saveNat(t); after != before {
		t.Errorf("Cleanup did not restore the nat table\nbefore:\n%s\nafter:\n%s", before, after)
	}
	return nil
}

// expectRedirect dials addr and checks that ln accepts the connection.
func expectRedirect(t *testing.T, ln net.Listener, addr string) {
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Errorf("dialing %s through the REDIRECT rule: %v", addr, err)
		ln.(*net.TCPListener).SetDeadline(time.Now()) // unblock Accept
		<-accepted
		ln.(*net.TCPListener).SetDeadline(time.Time{})
		return
	}
	defer c.Close()
	if got := <-accepted; got == nil || got.String() != c.LocalAddr().String() {
		t.Errorf("dial to %s from %s was accepted from %v", addr, c.LocalAddr(), got)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saveNat returns iptables-save (and ip6tables-save) of the nat table in the
// calling thread's namespace, without comments and counters.
func saveNat(t *testing.T) string {
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(tool, "-t", "nat").Output()
		if err != nil {
			if tool == "ip6tables-save" {
				continue // no IPv6 nat here, nothing to compare
			}
			t.Errorf("%s -t nat: %v", tool, err)
		}
		for _, line := range strings.SplitAfter(string(out), "\n") {
			if !strings.HasPrefix(line, "#") {
				b.WriteString(counters.ReplaceAllString(line, ""))
			}
		}
	}
	return b.String()
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
