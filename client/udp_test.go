package client

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/transport/transporttest"
)

// udpEchoTarget echoes every datagram on loopback, as a pod's UDP service.
func udpEchoTarget(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// udpApp is an application's socket and the flow's socket connected to it,
// which the capture would have made transparent and bound to the
// destination; here both are plain loopback sockets.
type udpApp struct {
	app  *net.UDPConn
	flow func() (net.Conn, error)
	src  netip.AddrPort
}

func newUDPApp(t *testing.T) *udpApp {
	t.Helper()
	app, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	a := &udpApp{app: app, src: app.LocalAddr().(*net.UDPAddr).AddrPort()}
	a.flow = func() (net.Conn, error) { return net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(a.src)) }
	return a
}

// expect reads one datagram and wants msg.
func (a *udpApp) expect(t *testing.T, msg string) {
	t.Helper()
	a.app.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1<<16)
	n, err := a.app.Read(buf)
	if err != nil || string(buf[:n]) != msg {
		t.Fatalf("app read %q, %v; want %q", buf[:n], err, msg)
	}
}

// TestUDPFlows runs flows through the real helper on the in-memory twin:
// each datagram comes back whole and alone, a flow ends after its idle
// timeout, and past MaxUDPFlows new flows are dropped and counted.
func TestUDPFlows(t *testing.T) {
	const idle = 300 * time.Millisecond
	e := startEngine(t, Config{UDP: true, UDPIdle: idle, MaxUDPFlows: 2}, &transporttest.Transport{}, echoTarget(t))
	defer e.shutdown(t)
	e.fw.mu.Lock()
	spec := e.fw.installs[0]
	e.fw.mu.Unlock()
	if spec.UDPPort == 0 {
		t.Fatalf("spec %+v has no UDP port", spec)
	}
	dst := udpEchoTarget(t)
	ctx := t.Context()

	a := newUDPApp(t)
	// The first datagrams reach the capture socket; later ones would come on
	// the flow's own socket. Sizes from empty to the largest IPv4 datagram,
	// sent back to back: none may be merged with or split from another.
	sizes := []int{0, 1, 1400, 9000, 65507}
	for i, n := range sizes {
		msg := make([]byte, n)
		for j := range msg {
			msg[j] = byte(i)
		}
		e.c.udpDatagram(ctx, a.src, dst, msg, a.flow)
	}
	for i, n := range sizes {
		want := make([]byte, n)
		for j := range want {
			want[j] = byte(i)
		}
		a.expect(t, string(want))
	}
	if st := e.c.Stats().UDP; st == nil || st.FlowsActive != 1 || st.FlowsTotal != 1 || st.Dropped != 0 {
		t.Fatalf("UDP stats %+v, want one flow, nothing dropped", st)
	}

	// A second flow fits, a third does not.
	b := newUDPApp(t)
	e.c.udpDatagram(ctx, b.src, dst, []byte("second"), b.flow)
	b.expect(t, "second")
	c := newUDPApp(t)
	e.c.udpDatagram(ctx, c.src, dst, []byte("third"), c.flow)
	if st := e.c.Stats().UDP; st.FlowsActive != 2 || st.Dropped != 1 {
		t.Fatalf("UDP stats %+v after a third flow, want 2 active and 1 dropped", st)
	}

	// Quiet for longer than idle, both flows end; the next datagram starts a
	// new one.
	deadline := time.Now().Add(10 * time.Second)
	for e.c.Stats().UDP.FlowsActive != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("flows still active 10s after their last datagram: %+v", e.c.Stats().UDP)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 3 {
		msg := "again " + strconv.Itoa(i)
		e.c.udpDatagram(ctx, a.src, dst, []byte(msg), a.flow)
		a.expect(t, msg)
	}
	if st := e.c.Stats().UDP; st.FlowsTotal != 3 {
		t.Errorf("UDP stats %+v, want 3 flows in all", st)
	}
}

// TestUDPCaptureSocketItself: a datagram sent straight to the capture
// socket, not handed to it by the firewall, has the socket's own address as
// its destination. It starts no flow: no socket is asked of the root child,
// and it is counted as dropped, as a TCP connection to the listener itself
// is reset.
func TestUDPCaptureSocketItself(t *testing.T) {
	e := startEngine(t, Config{UDP: true}, &transporttest.Transport{}, echoTarget(t))
	defer e.shutdown(t)
	e.fw.mu.Lock()
	port := e.fw.installs[0].UDPPort
	before := e.fw.transparent
	e.fw.mu.Unlock()
	a := newUDPApp(t)
	if _, err := a.app.WriteToUDPAddrPort([]byte("hi"), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.c.Stats().UDP.Dropped == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("UDP stats %+v 10s after a datagram to the capture socket, want it dropped", e.c.Stats().UDP)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.fw.mu.Lock()
	asked := e.fw.transparent - before
	e.fw.mu.Unlock()
	if st := e.c.Stats().UDP; asked != 0 || st.FlowsTotal != 0 {
		t.Errorf("a datagram to the capture socket itself: %d sockets made transparent, stats %+v; want none and no flow", asked, st)
	}
}
