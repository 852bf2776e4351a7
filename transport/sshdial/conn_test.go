package sshdial

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestPacketConnWrites: what x/crypto writes through packetConn arrives
// whole and in order, a 4096-byte write held for the rest of its packet
// included, and a 4096-byte write that nothing follows still goes out.
func TestPacketConnWrites(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	defer peer.Close()
	c := packetConn(raw)
	defer c.Close()

	var want []byte
	for i, n := range []int{4096, 28700, 100, 4096, 4096, 7, 4096} {
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		if m, err := c.Write(p); m != n || err != nil {
			t.Fatalf("write %d of %d bytes: %d, %v", i, n, m, err)
		}
		want = append(want, p...)
	}
	// The last write waits for a follower that never comes; it must not
	// wait for long.
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatalf("reading what was written: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes arrived changed or out of order")
	}
}
