//go:build linux

package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// IPv6 twin of the lab's addresses, added by addIPv6. The laptop's default
// route points at a dead address here too.
const (
	laptopAddr6   = "fd00:200::2"
	nodeAddr6     = "fd00:200::1"
	deadGateway6  = "fd00:200::fe"
	nodePodSide6  = "fd00:244:1::1"
	podAddr6      = "fd00:244:1::10"
	podCIDR6      = "fd00:244::/32"
	unreachable6  = "fd00:244:9::9"
	unreachNet6   = "fd00:244:9::/48"
	excludedProbe = 2 * time.Second
)

func addIPv6(t *testing.T, lab *Lab) {
	t.Helper()
	lap, node, pod := lab.Laptop.Name, lab.Node.Name, lab.Pod.Name
	steps := [][]string{
		// nodad: duplicate address detection would keep the addresses tentative for a second or two.
		{"ip", "-n", lap, "addr", "add", laptopAddr6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", lap, "route", "add", "default", "via", deadGateway6},
		{"ip", "-n", node, "addr", "add", nodeAddr6 + "/64", "dev", "laptop0", "nodad"},
		{"ip", "-n", node, "addr", "add", nodePodSide6 + "/64", "dev", "pod0", "nodad"},
		{"ip", "-n", node, "route", "add", "unreachable", unreachNet6},
		{"ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "-n", pod, "addr", "add", podAddr6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", pod, "route", "add", "default", "via", nodePodSide6},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			t.Fatalf("adding IPv6 to the lab: %v", err)
		}
	}
}

// TestIPv6AndExclude forwards an IPv6 pod range (ip6tables REDIRECT and
// IP6T_SO_ORIGINAL_DST) next to the IPv4 ones, and checks that an excluded
// address:port stays out of the tunnel while the same address on another port
// goes through.
func TestIPv6AndExclude(t *testing.T) {
	lab := newLab(t)
	addIPv6(t, lab)
	before := iptablesSave(t, lab)

	echo6 := servePodAt(t, lab, net.JoinHostPort(podAddr6, "0"), echoAfterEOF(t))
	echo4 := servePod(t, lab, echoAfterEOF(t))
	excluded := servePod(t, lab, echoAfterEOF(t))
	_, exPort, _ := net.SplitHostPort(excluded)

	args := append([]string{"-v", "-x", PodAddr + ":" + exPort}, lab.ClientArgs(ServiceCIDR, PodCIDR, podCIDR6)...)
	c, err := lab.StartClient(args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("k8stunnel stderr:\n%s", c.Stderr())
		}
	})
	if err := c.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	if save := iptablesSave(t, lab); !strings.Contains(save, "-A K8STUNNEL-") || !strings.Contains(save, podCIDR6) {
		t.Fatalf("no ip6tables rule for %s:\n%s", podCIDR6, save)
	}

	t.Run("ipv6 echo", func(t *testing.T) {
		checkEcho(t, lab, echo6, []byte(strings.Repeat("six", 100000)))
	})
	t.Run("ipv6 refused is a reset", func(t *testing.T) {
		expectReset(t, lab, net.JoinHostPort(podAddr6, "9"), time.Second)
	})
	t.Run("ipv6 unreachable is a reset", func(t *testing.T) {
		expectReset(t, lab, net.JoinHostPort(unreachable6, "80"), 3*time.Second)
	})
	t.Run("ipv4 still works", func(t *testing.T) {
		checkEcho(t, lab, echo4, []byte("four"))
	})
	t.Run("excluded port bypasses the tunnel", func(t *testing.T) {
		// Not captured, the SYN goes to the laptop's dead gateway: no answer at all.
		ctx, cancel := context.WithTimeout(context.Background(), excludedProbe)
		defer cancel()
		conn, err := lab.Laptop.Dial(ctx, "tcp", excluded)
		if err == nil {
			conn.Close()
			t.Fatalf("%s (excluded) connected; it should have bypassed the tunnel", excluded)
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) &&
			!errors.Is(err, syscall.EHOSTUNREACH) {
			t.Fatalf("%s (excluded): %v, want no answer (timeout) or host unreachable", excluded, err)
		}
	})

	if err := c.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stopping k8stunnel: %v", err)
	}
	if after := iptablesSave(t, lab); after != before {
		t.Fatalf("iptables-save changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
