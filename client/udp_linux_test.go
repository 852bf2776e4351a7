package client

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFlowSocketNotShared: the flows' sockets share their destination's
// address among themselves, but another user cannot bind one of hers beside
// them. Through IP_FREEBIND anyone may bind a cluster address; had she
// joined a flow's address and port and connected to the same application,
// TPROXY would find her socket before ours and drop the flow's datagrams.
func TestFlowSocketNotShared(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a socket of another uid with setfsuid")
	}
	c := &Client{}
	var fw Firewall = &fakeFirewall{}
	c.fwNow.Store(&fw)
	app := newUDPApp(t)
	pc, err := c.flowSocket(t.Context(), app.src, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	// A second flow to the same destination, ours: it shares the address.
	other := newUDPApp(t)
	pc2, err := c.flowSocket(t.Context(), other.src, dst)
	if err != nil {
		t.Fatalf("a second flow to %v: %v", dst, err)
	}
	pc2.Close()

	// The same as nobody, with every sharing option there is.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with its odd fsuid
		if err := unix.Setfsuid(65534); err != nil {
			errc <- err
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		for _, opt := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 1)
		}
		unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1)
		errc <- unix.Bind(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
	}()
	if err := <-errc; err != unix.EADDRINUSE {
		t.Errorf("another uid binding beside a flow's socket on %v: %v, want EADDRINUSE", dst, err)
	}
}
