package mux

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// stripePair is k client sessions whose servers share one Stripes, as the
// sessions of one helper process do. Every whole stripe goes to handle,
// already answered with StatusOK; handle owns it.
func stripePair(t *testing.T, k int, wait time.Duration, handle func(*Striped)) ([]*Session, *Stripes) {
	t.Helper()
	table := &Stripes{wait: wait}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var clients, servers []*Session
	for range k {
		client, server, _ := pipeSessions(t)
		clients = append(clients, client)
		servers = append(servers, server)
		wg.Go(func() { client.Serve(ctx, nil) })
		wg.Go(func() {
			server.Serve(ctx, func(req Request, st *Stream) {
				if !req.IsStripe() {
					st.Close()
					return
				}
				if req.StripePart() != 0 {
					table.Add(req, st)
					return
				}
				sc, err := table.Gather(ctx, req, st)
				if err != nil {
					st.WriteStatus(StatusFailed)
					st.Close()
					return
				}
				if err := sc.Primary().WriteStatus(StatusOK); err != nil {
					sc.Abort()
					sc.Close()
					return
				}
				handle(sc)
			})
		})
	}
	t.Cleanup(func() {
		cancel()
		for i := range clients {
			clients[i].Close()
			servers[i].Close()
		}
		wg.Wait()
	})
	return clients, table
}

var stripeDst = netip.MustParseAddrPort("10.96.0.10:80")

// TestStripedEcho sends a few chunks' worth of bytes each way over stripes
// of two and three parts, with a half-close in between: what arrives is
// what was sent, in order, although each part carries only every k-th chunk.
func TestStripedEcho(t *testing.T) {
	for _, k := range []int{2, 3} {
		clients, table := stripePair(t, k, 0, func(sc *Striped) {
			defer sc.Close()
			if _, err := io.Copy(sc, sc); err != nil {
				sc.Abort()
				return
			}
			sc.CloseWrite()
		})
		sc, err := DialStriped(clients, stripeDst)
		if err != nil {
			t.Fatal(err)
		}
		if err := sc.WaitDial(); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 5*StripeChunk+12345)
		for i := range want {
			want[i] = byte(rand.Uint32())
		}
		go func() {
			// Odd sizes, so writes straddle the parts' turns.
			for b := want; len(b) > 0; {
				n := min(len(b), 100_000+rand.IntN(200_000))
				if _, err := sc.Write(b[:n]); err != nil {
					return
				}
				b = b[n:]
			}
			sc.CloseWrite()
		}()
		got, err := io.ReadAll(sc)
		if err != nil {
			t.Fatalf("%d parts: %v after %d bytes", k, err, len(got))
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%d parts: echo differs (%d bytes, want %d)", k, len(got), len(want))
		}
		for i, st := range sc.parts {
			if st.s.StreamID() == 0 {
				t.Fatalf("part %d never opened", i)
			}
		}
		sc.Close()
		if n := table.pending(); n != 0 {
			t.Fatalf("%d stripes still pending", n)
		}
	}
}

// TestStripedSmallMessages: a request/response exchange smaller than a
// chunk stays on part 0 and needs nothing from the others.
func TestStripedSmallMessages(t *testing.T) {
	clients, _ := stripePair(t, 3, 0, func(sc *Striped) {
		defer sc.Close()
		buf := make([]byte, 64)
		for {
			n, err := sc.Read(buf)
			if err != nil {
				sc.CloseWrite()
				return
			}
			sc.Write(buf[:n])
		}
	})
	sc, err := DialStriped(clients, stripeDst)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	buf := make([]byte, 64)
	for i := range 100 {
		msg := []byte{byte(i), 1, 2, 3}
		if _, err := sc.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(sc, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatalf("round trip %d: %q, %v", i, buf[:len(msg)], err)
		}
	}
}

// TestStripedAbortResetsEveryPart: the helper's abort reaches the client
// on whichever part it reads, also one that is not part 0.
func TestStripedAbortResetsEveryPart(t *testing.T) {
	clients, _ := stripePair(t, 2, 0, func(sc *Striped) {
		// Read into part 1's turn, then abort.
		io.CopyN(io.Discard, sc, StripeChunk+10)
		sc.Abort()
		sc.Close()
	})
	sc, err := DialStriped(clients, stripeDst)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	go sc.Write(make([]byte, StripeChunk+10))
	sc.parts[1].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := sc.parts[1].Read(make([]byte, 1)); !errors.Is(err, ErrPeerReset) {
		t.Fatalf("part 1: got %v, want ErrPeerReset", err)
	}
	sc.parts[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := sc.Read(make([]byte, 1)); !errors.Is(err, ErrPeerReset) {
		t.Fatalf("stripe: got %v, want ErrPeerReset", err)
	}
}

// TestStripeIncomplete: a part 0 whose other parts never come fails once
// the wait is over, with a status the client reads; parts whose part 0
// never comes are reset. Nothing stays pending either way.
func TestStripeIncomplete(t *testing.T) {
	clients, table := stripePair(t, 2, 100*time.Millisecond, func(sc *Striped) {
		t.Error("an incomplete stripe was handled")
		sc.Close()
	})
	req := Request{kind: kindStripe, stripe: 77, part: 0, parts: 2, Dst: stripeDst}
	p0, err := clients[0].open(req, streamAddr{dst: stripeDst}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer p0.Close()
	var de *DialError
	if err := p0.WaitDial(); !errors.As(err, &de) || de.Status != StatusFailed {
		t.Fatalf("part 0 alone: got %v, want status failed", err)
	}
	req = Request{kind: kindStripe, stripe: 78, part: 1, parts: 2}
	p1, err := clients[1].open(req, streamAddr{dst: stripeDst}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	p1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p1.Read(make([]byte, 1)); !errors.Is(err, ErrPeerReset) {
		t.Fatalf("part 1 alone: got %v, want ErrPeerReset", err)
	}
	if n := table.pending(); n != 0 {
		t.Fatalf("%d stripes still pending", n)
	}
}

// TestStripesRefuse: a second part with an index already taken, or with
// another part count, is refused and reset; the stripe still completes
// with the parts that fit.
func TestStripesRefuse(t *testing.T) {
	handled := make(chan *Striped, 1)
	clients, table := stripePair(t, 2, 0, func(sc *Striped) { handled <- sc })
	open := func(s *Session, part, parts uint8) *Stream {
		t.Helper()
		req := Request{kind: kindStripe, stripe: 5, part: part, parts: parts, Dst: stripeDst}
		st, err := s.open(req, streamAddr{dst: stripeDst}, part == 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	p1 := open(clients[1], 1, 2)
	waitFor(t, func() bool { return table.pending() == 1 })
	for _, bad := range []*Stream{open(clients[1], 1, 2), open(clients[0], 1, 3)} {
		bad.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := bad.Read(make([]byte, 1)); !errors.Is(err, ErrPeerReset) {
			t.Fatalf("refused part: got %v, want ErrPeerReset", err)
		}
	}
	p0 := open(clients[0], 0, 2)
	if err := p0.WaitDial(); err != nil {
		t.Fatal(err)
	}
	sc := <-handled
	defer sc.Close()
	if sc.parts[1].s.StreamID() != p1.s.StreamID() {
		t.Fatal("the stripe did not keep the first part 1")
	}
}

// TestStripedIsNetConn runs nettest on both ends of a stripe of 3 parts.
func TestStripedIsNetConn(t *testing.T) {
	pair := func(t *testing.T) (net.Conn, net.Conn, func(), error) {
		far := make(chan *Striped, 1)
		clients, _ := stripePair(t, 3, 0, func(sc *Striped) { far <- sc })
		sc, err := DialStriped(clients, stripeDst)
		if err != nil {
			return nil, nil, nil, err
		}
		if err := sc.WaitDial(); err != nil {
			return nil, nil, nil, err
		}
		f := <-far
		return sc, f, func() { sc.Close(); f.Close() }, nil
	}
	t.Run("Dialled", func(t *testing.T) { nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) { return pair(t) }) })
	t.Run("Accepted", func(t *testing.T) {
		nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
			c1, c2, stop, err := pair(t)
			return c2, c1, stop, err
		})
	})
}
