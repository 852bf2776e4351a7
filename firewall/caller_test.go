package firewall

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProc writes a /proc/<pid>/status for each process and points procRoot
// at it for the test.
func fakeProc(t *testing.T, procs map[int]procStatus) {
	root := t.TempDir()
	for pid, st := range procs {
		dir := filepath.Join(root, fmt.Sprint(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		status := fmt.Sprintf("Name:\t%s\nUmask:\t0022\nPPid:\t%d\nUid:\t%d\t%d\t%d\t%d\n", st.name, st.ppid, st.uid, st.uid, st.uid, st.uid)
		if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := procRoot
	procRoot = root
	t.Cleanup(func() { procRoot = old })
}

func TestFindCaller(t *testing.T) {
	parent := os.Getppid()
	t.Run("through sudo with use_pty", func(t *testing.T) {
		fakeProc(t, map[int]procStatus{
			parent: {name: "sudo", ppid: 500, uid: 0},
			500:    {name: "sudo", ppid: 400, uid: 0},
			400:    {name: "k8stunnel", ppid: 1, uid: 1000},
		})
		t.Setenv("SUDO_UID", "1000")
		c, err := FindCaller()
		if err != nil || c != (Caller{Pid: 400, UID: 1000}) {
			t.Errorf("FindCaller = %+v, %v; want pid 400 uid 1000", c, err)
		}
	})
	t.Run("the caller is not SUDO_UID", func(t *testing.T) {
		fakeProc(t, map[int]procStatus{
			parent: {name: "sudo", ppid: 400, uid: 0},
			400:    {name: "k8stunnel", ppid: 1, uid: 1001},
		})
		t.Setenv("SUDO_UID", "1000")
		if c, err := FindCaller(); err == nil {
			t.Errorf("FindCaller = %+v, want an error", c)
		}
	})
	t.Run("root without sudo", func(t *testing.T) {
		fakeProc(t, map[int]procStatus{parent: {name: "k8stunnel", ppid: 1, uid: 0}})
		os.Unsetenv("SUDO_UID")
		c, err := FindCaller()
		if err != nil || c != (Caller{Pid: parent, UID: 0}) {
			t.Errorf("FindCaller = %+v, %v; want pid %d uid 0", c, err, parent)
		}
	})
}

func TestAuthorize(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	port := uint16(tcp.Addr().(*net.TCPAddr).Port)
	me := Caller{Pid: os.Getpid(), UID: os.Getuid()}
	spec := Spec{Port: port, Include: targets(t, "10.96.0.0/12")}
	if err := me.Authorize(spec); err != nil {
		t.Errorf("own listener: %v", err)
	}
	if err := (Caller{Pid: me.Pid, UID: me.UID + 1}).Authorize(spec); err == nil {
		t.Error("a listener of another uid was accepted")
	}
	if err := (Caller{Pid: 1, UID: me.UID}).Authorize(spec); err == nil {
		t.Error("a listener the caller process does not hold was accepted")
	}

	// DNS redirects to a port where the caller must hold UDP and TCP.
	dnsSpec := spec
	dnsSpec.DNS = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")}
	dnsSpec.DNSPort = port
	if err := me.Authorize(dnsSpec); err == nil || !strings.Contains(err.Error(), "/udp") {
		t.Errorf("DNS port without its UDP socket: %v, want refused for udp", err)
	}
	udp, err := net.ListenPacket("udp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if err := me.Authorize(dnsSpec); err != nil {
		t.Errorf("DNS port held for UDP and TCP: %v", err)
	}
}
