package mux

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestUDPRequestCodec(t *testing.T) {
	req := Request{kind: kindUDP, Src: netip.MustParseAddrPort("[::ffff:10.0.0.1]:5353"), Dst: netip.MustParseAddrPort("[fd00::a]:53")}
	b, err := appendRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readRequest(bytes.NewReader(b))
	want := Request{kind: kindUDP, Src: netip.MustParseAddrPort("10.0.0.1:5353"), Dst: req.Dst}
	if err != nil || got != want || !got.IsUDP() {
		t.Fatalf("round trip of %+v = %+v, %v; want %+v", req, got, err, want)
	}
	for i := 3; i < len(b); i++ {
		if _, err := readRequest(bytes.NewReader(b[:i])); err == nil {
			t.Errorf("a request cut to %d bytes decoded", i)
		}
	}
}

// TestDialUDPNeedsHelperSupport: a helper whose hello does not say UDP is
// never sent a kindUDP stream, which it would count as a stray.
func TestDialUDPNeedsHelperSupport(t *testing.T) {
	client, _, _, stop := sessionPair(t)
	defer stop()
	if _, err := client.DialUDP(netip.MustParseAddrPort("10.0.0.1:1"), testDst); !errors.Is(err, ErrNoUDP) {
		t.Fatalf("DialUDP to a helper without UDP = %v, want ErrNoUDP", err)
	}
}

// udpPair is a kindUDP stream, both ends, and two UDP sockets on
// loopback: pc, the relay's, connected to app.
func udpPair(t *testing.T) (st, peer *Stream, pc, app *net.UDPConn) {
	t.Helper()
	client, _, accepted, stop := sessionPair(t)
	t.Cleanup(stop)
	st, err := client.open(Request{kind: kindUDP, Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: testDst}, streamAddr{dst: testDst}, true)
	if err != nil {
		t.Fatal(err)
	}
	peer = <-accepted
	app, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	pc, err = net.DialUDP("udp4", nil, app.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pc.Close()
		app.Close()
		st.Close()
		peer.Close()
	})
	return st, peer, pc, app
}

// TestDatagramQueueBound: what the stream cannot take yet is queued up to
// maxQueued and dropped past it, counted; a datagram over MaxDatagram is
// dropped as oversize. Nothing blocks.
func TestDatagramQueueBound(t *testing.T) {
	st, peer, pc, _ := udpPair(t)
	var stats DatagramStats
	r := NewDatagramRelay(pc, st, 0, &stats)
	const n, size = 100, 60000
	for range n {
		r.Send(make([]byte, size)) // Run has not started: all of it waits
	}
	r.Send(make([]byte, MaxDatagram+1))
	fit := maxQueued / (2 + size)
	if got := stats.Dropped.Load(); got != int64(n-fit) {
		t.Errorf("Dropped = %d, want %d (%d of %d-byte datagrams fit in %d bytes)", got, n-fit, fit, size, maxQueued)
	}
	if got := stats.Oversize.Load(); got != 1 {
		t.Errorf("Oversize = %d, want 1", got)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run() }()
	// The queued frames arrive, each whole.
	buf := make([]byte, 2+size)
	for i := range fit {
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := readFull(peer, buf); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if l := int(buf[0])<<8 | int(buf[1]); l != size {
			t.Fatalf("frame %d says %d bytes, want %d", i, l, size)
		}
	}
	r.Close()
	if err := <-done; err != nil {
		t.Errorf("Run after Close = %v, want nil", err)
	}
	if q := stats.queued.Load(); q != 0 {
		t.Errorf("%d bytes still counted as queued after Run returned", q)
	}
}

// TestDatagramRelayIdle: a flow with no datagram either way for idle ends,
// and Run returns nil; traffic keeps it alive.
func TestDatagramRelayIdle(t *testing.T) {
	st, peer, pc, app := udpPair(t)
	var stats DatagramStats
	const idle = time.Second
	r := NewDatagramRelay(pc, st, idle, &stats)
	done := make(chan error, 1)
	go func() { done <- r.Run() }()
	for range 5 {
		select {
		case err := <-done:
			t.Fatalf("Run = %v while datagrams pass, every %v with an idle timeout of %v", err, idle/10, idle)
		default:
		}
		if _, err := app.WriteTo([]byte("keepalive"), pc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 11)
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := readFull(peer, buf); err != nil || string(buf[2:]) != "keepalive" {
			t.Fatalf("frame %q, %v", buf, err)
		}
		time.Sleep(idle / 10)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v once idle, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the flow did not end 10s after its last datagram")
	}
}

func readFull(st *Stream, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := st.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// FuzzNextFrame: whatever the peer sends, framing takes exactly the length
// each frame says, never more than there is, and never a split datagram.
func FuzzNextFrame(f *testing.F) {
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 0, 0, 1})
	f.Add([]byte{0xff, 0xff, 1})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, in []byte) {
		rest := in
		for {
			payload, size, ok := nextFrame(rest)
			if !ok {
				if len(rest) >= 2 && len(rest) >= 2+int(rest[0])<<8+int(rest[1]) {
					t.Fatalf("a whole frame in % x not taken", rest)
				}
				return
			}
			if size != 2+len(payload) || size > len(rest) || len(payload) != int(rest[0])<<8|int(rest[1]) {
				t.Fatalf("frame of %d bytes with a %d-byte payload from % x", size, len(payload), rest)
			}
			rest = rest[size:]
		}
	})
}

// TestDatagramRelayStalledPeer: a peer that never reads fills the stream's
// window, and the relay's write to it blocks. Ending the flow (Close, or
// the idle timer) still returns Run at once, with nothing counted as queued.
func TestDatagramRelayStalledPeer(t *testing.T) {
	st, _, pc, app := udpPair(t)
	var stats DatagramStats
	r := NewDatagramRelay(pc, st, 0, &stats)
	done := make(chan error, 1)
	go func() { done <- r.Run() }()
	// Until the queue behind the stream's window overflows: the relay is
	// stuck in Write.
	payload := make([]byte, 8000)
	for stats.Dropped.Load() == 0 {
		if _, err := app.WriteTo(payload, pc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close with the peer not reading")
	}
	if q := stats.queued.Load(); q != 0 {
		t.Errorf("%d bytes still counted as queued after Run returned", q)
	}
}

// TestDatagramRelayTakeNothing: a wake-up that finds nothing queued leaves
// the queue's buffer and the writer's spare apart, and the next take hands
// the writer the queued bytes in a buffer the queue no longer appends to.
func TestDatagramRelayTakeNothing(t *testing.T) {
	r := &DatagramRelay{}
	spare := make([]byte, 0, 64)
	if _, ok := r.take(spare); ok {
		t.Fatal("took something from an empty queue")
	}
	if cap(r.pending) != 0 {
		t.Fatal("an empty take put the writer's spare buffer in the queue")
	}
	r.pending = append(r.pending, "one"...)
	out, ok := r.take(spare)
	if !ok || string(out) != "one" {
		t.Fatalf("took %q, %v", out, ok)
	}
	r.pending = append(r.pending, "two"...)
	if string(out) != "one" {
		t.Fatalf("queueing changed the bytes being written to %q", out)
	}
}
