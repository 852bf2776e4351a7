package mux

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// harness is a client Session and a server Session joined by net.Pipe, with
// an "application" listener on the client side whose connections are relayed
// through the mux, and a handler on the server side playing the helper.
type harness struct {
	client, server *Session
	app            *net.TCPListener
	dst            netip.AddrPort
	pipe           net.Conn
}

func newHarness(t testing.TB, handle func(Request, *Stream)) *harness {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	a, b := net.Pipe()
	type res struct {
		s   *Session
		err error
	}
	srvc := make(chan res, 1)
	go func() {
		s, err := NewServer(b, func(Hello) Hello { return Hello{Program: "test"} }, log)
		srvc <- res{s, err}
	}()
	client, err := NewClient(a, Hello{Program: "test"}, log)
	if err != nil {
		t.Fatal(err)
	}
	r := <-srvc
	if r.err != nil {
		t.Fatal(r.err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go r.s.Serve(ctx, handle)
	go client.Serve(ctx, nil)

	app, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{client: client, server: r.s, app: app, pipe: a, dst: netip.MustParseAddrPort("192.0.2.1:80")}
	go func() {
		for {
			c, err := app.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				st, err := client.Dial(h.dst)
				if err != nil {
					NetConn(c).Abort()
					return
				}
				Relay(NetConn(c), st)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		app.Close()
		client.Close()
		r.s.Close()
	})
	return h
}

func (h *harness) dial(t testing.TB) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, h.app.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// target plays the real destination on the helper's side: a loopback TCP
// server whose connections are handed to serve.
func target(t testing.TB, serve func(*net.TCPConn)) func(Request, *Stream) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return func(req Request, st *Stream) {
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			st.WriteStatus(StatusRefused)
			st.Close()
			return
		}
		st.WriteStatus(StatusOK)
		Relay(NetConn(c), st)
	}
}

func TestRelayHalfClose(t *testing.T) {
	// The target reads until EOF, then answers with a digest of what it got
	// plus the data itself: only works if our CloseWrite became its EOF while
	// its sending direction stayed open.
	h := newHarness(t, target(t, func(c *net.TCPConn) {
		defer c.Close()
		data, err := io.ReadAll(c)
		if err != nil {
			return
		}
		sum := sha256.Sum256(data)
		c.Write(sum[:])
		c.Write(data)
	}))
	c := h.dial(t)
	data := make([]byte, 3<<20+17)
	rand.NewChaCha8([32]byte{1}).Read(data)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if len(got) != 32+len(data) || !bytes.Equal(got[:32], want[:]) || !bytes.Equal(got[32:], data) {
		t.Fatalf("got %d bytes back, want %d with matching digest", len(got), 32+len(data))
	}
}

func TestRelayBothDirectionsAtOnce(t *testing.T) {
	const n = 8 << 20
	h := newHarness(t, target(t, func(c *net.TCPConn) {
		sent := make(chan struct{})
		go func() {
			src := rand.NewChaCha8([32]byte{2})
			io.CopyN(c, src, n)
			c.CloseWrite()
			close(sent)
		}()
		io.Copy(io.Discard, c)
		// Closing before our own sending is done would cut it short: the
		// upstream can finish first.
		<-sent
		c.Close()
	}))
	c := h.dial(t)
	go func() {
		io.CopyN(c, rand.NewChaCha8([32]byte{3}), n)
		c.CloseWrite()
	}()
	got := sha256.New()
	if m, err := io.Copy(got, c); err != nil || m != n {
		t.Fatalf("read %d bytes, err %v; want %d", m, err, n)
	}
	want := sha256.New()
	io.CopyN(want, rand.NewChaCha8([32]byte{2}), n)
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("content differs")
	}
}

func expectReset(t *testing.T, c *net.TCPConn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	start := time.Now()
	_, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("got %v after %v, want a connection reset", err, time.Since(start))
	}
}

func TestDialFailureIsReset(t *testing.T) {
	h := newHarness(t, func(_ Request, st *Stream) {
		st.WriteStatus(StatusRefused)
		st.Close()
	})
	c, err := net.DialTCP("tcp", nil, h.app.Addr().(*net.TCPAddr))
	if errors.Is(err, syscall.ECONNRESET) {
		return // the reset beat connect's return: what a refused dial should look like
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		// The reset came before the write, which took the error: the kernel
		// reports it once, and a read would now see a plain EOF.
		return
	}
	expectReset(t, c, time.Second)
}

func TestTargetResetReachesApp(t *testing.T) {
	h := newHarness(t, target(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write([]byte("partial"))
		NetConn(c).Abort()
	}))
	c := h.dial(t)
	c.Write([]byte("hello"))
	expectReset(t, c, 2*time.Second)
}

func TestAppResetReachesTarget(t *testing.T) {
	got := make(chan error, 1)
	h := newHarness(t, target(t, func(c *net.TCPConn) {
		// Keep sending: without a reset the far side would stream forever.
		_, err := io.Copy(c, rand.NewChaCha8([32]byte{4}))
		got <- err
	}))
	c := h.dial(t)
	io.ReadFull(c, make([]byte, 1<<20))
	NetConn(c).Abort()
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("target's copy ended cleanly, want an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("target still sending 5s after the application reset its connection")
	}
	waitFor(t, func() bool { return h.client.NumStreams() == 0 && h.server.NumStreams() == 0 })
}

func TestSessionLossIsReset(t *testing.T) {
	h := newHarness(t, target(t, func(c *net.TCPConn) {
		io.Copy(c, c)
	}))
	c := h.dial(t)
	c.Write([]byte("ping"))
	io.ReadFull(c, make([]byte, 4))
	h.pipe.Close()
	expectReset(t, c, 2*time.Second)
}

func TestVersionMismatch(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Run("helper newer", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		go func() {
			readHello(bufio.NewReader(b))
			writeHello(b, Hello{version: protocolVersion + 1})
		}()
		if _, err := NewClient(a, Hello{}, log); !errors.Is(err, ErrVersionMismatch) {
			t.Fatalf("got %v, want ErrVersionMismatch", err)
		}
	})
	t.Run("client newer", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		errc := make(chan error, 1)
		go func() {
			_, err := NewServer(b, func(Hello) Hello { return Hello{} }, log)
			errc <- err
		}()
		writeHello(a, Hello{version: protocolVersion + 1})
		h, _, err := readHello(bufio.NewReader(a))
		if err != nil || h.Error == "" {
			t.Fatalf("helper answered %+v, %v; want an error in the hello", h, err)
		}
		if err := <-errc; !errors.Is(err, ErrVersionMismatch) {
			t.Fatalf("helper returned %v, want ErrVersionMismatch", err)
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A helper that takes a connect request and never answers it: the
// application gets a reset once the status is overdue, and the helper's
// side of the stream is reset too.
func TestStatusNeverComes(t *testing.T) {
	helperSaw := make(chan error, 1)
	h := newHarness(t, func(_ Request, st *Stream) {
		defer st.Close()
		_, err := st.Read(make([]byte, 1))
		helperSaw <- err
	})
	h.client.statusTimeout.Store(int64(200 * time.Millisecond))
	c := h.dial(t)
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("application read %v, want a reset", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("reset after %v, want it soon after the 200ms status timeout", d)
	}
	select {
	case err := <-helperSaw:
		if !errors.Is(err, ErrPeerReset) {
			t.Errorf("helper's stream read %v, want ErrPeerReset", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the helper's stream was not reset")
	}
}

// TestHeldRelaysStaySmall: relays that moved a message each way and then
// wait do so in goroutines whose stacks did not grow. Sending into yamux
// grows a goroutine's stack to 4 KiB for good; RelayAsync goes on in a new
// goroutine after that. Stack in use per connection: 8.1 KiB without it,
// 4.0 KiB with it.
func TestHeldRelaysStaySmall(t *testing.T) {
	if raceEnabled {
		t.Skip("stack sizes under the race detector are not the ones measured here")
	}
	client, _, acc, stop := sessionPair(t)
	defer stop()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 1000
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	done := make(chan error, n)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	buf := make([]byte, 4)
	for range n {
		app, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		local, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		st, err := client.Dial(testDst)
		if err != nil {
			t.Fatal(err)
		}
		RelayAsync(NetConn(local), st, func(err error) { done <- err })
		peer := <-acc
		held = append(held, app, peer)
		if _, err := app.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("at the far end: %q, %v", buf, err)
		}
		if _, err := peer.Write([]byte("pong")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(app, buf); err != nil || string(buf) != "pong" {
			t.Fatalf("at the app: %q, %v", buf, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.StackInuse-before.StackInuse) / n
	t.Logf("%.0f bytes of stack per held connection, %.2f goroutines", per, float64(runtime.NumGoroutine()-g0)/n)
	if per > 6*1024 {
		t.Errorf("%.0f bytes of stack per held connection, want under 6 KiB (two grown goroutines hold 8)", per)
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	for range n {
		<-done
	}
}

// TestRelayAsync: done gets the relay's outcome once, after both sides are
// closed: nil for two clean ends, the error for an aborted one.
func TestRelayAsync(t *testing.T) {
	client, _, acc, stop := sessionPair(t)
	defer stop()
	for _, abort := range []bool{false, true} {
		app, local := tcpPair(t)
		st, err := client.Dial(testDst)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 2)
		RelayAsync(NetConn(local), st, func(err error) { done <- err })
		peer := <-acc
		app.Write([]byte("hello"))
		app.CloseWrite()
		if got, err := io.ReadAll(peer); err != nil || string(got) != "hello" {
			t.Fatalf("far end read %q, %v", got, err)
		}
		if abort {
			peer.Abort()
		} else {
			peer.Write([]byte("bye"))
			peer.CloseWrite()
			if got, err := io.ReadAll(app); err != nil || string(got) != "bye" {
				t.Fatalf("app read %q, %v", got, err)
			}
		}
		select {
		case err := <-done:
			if (err != nil) != abort {
				t.Fatalf("abort %v: done got %v", abort, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("done never called")
		}
		if _, err := local.Write([]byte("x")); err == nil {
			t.Fatal("the local side is still open after done")
		}
		peer.Close()
		select {
		case err := <-done:
			t.Fatalf("done called twice (%v)", err)
		default:
		}
	}
}
