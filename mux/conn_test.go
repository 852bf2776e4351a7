package mux

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// pipeSessions is a client and a server Session joined by net.Pipe, neither
// served yet; serverEnd is the server's end of the pipe.
func pipeSessions(t testing.TB) (client, server *Session, serverEnd net.Conn) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	a, b := net.Pipe()
	srvc := make(chan *Session, 1)
	errc := make(chan error, 1)
	go func() {
		s, err := NewServer(b, func(Hello) Hello { return Hello{} }, log)
		errc <- err
		srvc <- s
	}()
	client, err := NewClient(a, Hello{}, log)
	if err != nil {
		a.Close()
		b.Close()
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return client, <-srvc, b
}

// sessionPair is a client and a server Session joined by net.Pipe. Streams
// the server accepts arrive on accepted, already answered with StatusOK.
func sessionPair(t testing.TB) (client, server *Session, accepted <-chan *Stream, stop func()) {
	t.Helper()
	client, server, _ = pipeSessions(t)
	acc := make(chan *Stream, 1)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{}, 2)
	go func() {
		defer func() { served <- struct{}{} }()
		// The client must serve too: resets from the helper arrive as streams.
		client.Serve(ctx, nil)
	}()
	go func() {
		defer func() { served <- struct{}{} }()
		server.Serve(ctx, func(_ Request, st *Stream) {
			if err := st.WriteStatus(StatusOK); err != nil {
				st.Close()
				return
			}
			acc <- st
		})
	}()
	stop = func() {
		cancel()
		client.Close()
		server.Close()
		<-served
		<-served
	}
	return client, server, acc, stop
}

var testDst = netip.MustParseAddrPort("192.0.2.1:80")

func streamPair(t testing.TB) (c1, c2 *Stream, stop func()) {
	t.Helper()
	client, _, accepted, stopSessions := sessionPair(t)
	c1, err := client.Dial(testDst)
	if err != nil {
		stopSessions()
		t.Fatal(err)
	}
	c2 = <-accepted
	return c1, c2, func() {
		c1.Close()
		c2.Close()
		stopSessions()
	}
}

// TestStreamIsNetConn runs nettest on a dialled stream and the helper's end
// of it, both ways round: the dialled end's first Read also consumes the
// status byte.
func TestStreamIsNetConn(t *testing.T) {
	goroutineLeakCheck(t)
	t.Run("Dialled", func(t *testing.T) {
		nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
			c1, c2, stop := streamPair(t)
			return c1, c2, stop, nil
		})
	})
	t.Run("Accepted", func(t *testing.T) {
		nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
			c1, c2, stop := streamPair(t)
			return c2, c1, stop, nil
		})
	})
}

func TestStreamAddrs(t *testing.T) {
	c1, c2, stop := streamPair(t)
	defer stop()
	for _, tc := range []struct {
		name string
		addr net.Addr
		want string
	}{
		{"dialled remote", c1.RemoteAddr(), "192.0.2.1:80"},
		{"dialled local", c1.LocalAddr(), "stream 1"},
		{"accepted local", c2.LocalAddr(), "192.0.2.1:80"},
		{"accepted remote", c2.RemoteAddr(), "stream 1"},
	} {
		if tc.addr.Network() != "k8stunnel" || tc.addr.String() != tc.want {
			t.Errorf("%s: got %s %q, want k8stunnel %q", tc.name, tc.addr.Network(), tc.addr, tc.want)
		}
	}
}

// TestStreamErrors checks that a stream's death wins over a later deadline:
// a reset stays ErrPeerReset, a lost session ErrSessionLost, a closed
// stream net.ErrClosed, and only a deadline is a timeout.
func TestStreamErrors(t *testing.T) {
	goroutineLeakCheck(t)
	buf := make([]byte, 8)
	t.Run("deadline", func(t *testing.T) {
		c1, c2, stop := streamPair(t)
		defer stop()
		if _, err := c2.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		// Data is buffered, yet a past deadline must win, as on a socket.
		c1.SetReadDeadline(time.Now().Add(-time.Second))
		if _, err := c1.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read past the deadline: got %v, want os.ErrDeadlineExceeded", err)
		}
		c1.SetReadDeadline(time.Time{})
		if n, err := c1.Read(buf); err != nil || string(buf[:n]) != "x" {
			t.Fatalf("read after clearing the deadline: got %q, %v", buf[:n], err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		c1, c2, stop := streamPair(t)
		defer stop()
		done := make(chan error, 1)
		go func() { _, err := c1.Read(buf); done <- err }()
		c2.Abort()
		if err := <-done; !errors.Is(err, ErrPeerReset) {
			t.Fatalf("read on a reset stream: got %v, want ErrPeerReset", err)
		}
		c1.SetDeadline(time.Time{})
		if _, err := c1.Read(buf); !errors.Is(err, ErrPeerReset) {
			t.Fatalf("read after clearing the deadline: got %v, want ErrPeerReset", err)
		}
		if _, err := c1.Write(buf); !errors.Is(err, ErrPeerReset) {
			t.Fatalf("write on a reset stream: got %v, want ErrPeerReset", err)
		}
	})
	t.Run("session lost", func(t *testing.T) {
		client, _, accepted, stopSessions := sessionPair(t)
		defer stopSessions()
		c1, err := client.Dial(testDst)
		if err != nil {
			t.Fatal(err)
		}
		<-accepted
		done := make(chan error, 1)
		go func() { _, err := c1.Read(buf); done <- err }()
		client.Close()
		if err := <-done; !errors.Is(err, ErrSessionLost) {
			t.Fatalf("read on a lost session: got %v, want ErrSessionLost", err)
		}
		c1.SetDeadline(time.Now().Add(time.Hour))
		if _, err := c1.Write(buf); !errors.Is(err, ErrSessionLost) {
			t.Fatalf("write on a lost session: got %v, want ErrSessionLost", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		c1, c2, stop := streamPair(t)
		defer stop()
		done := make(chan error, 1)
		go func() { _, err := c1.Read(buf); done <- err }()
		c1.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read blocked across Close: got %v, want net.ErrClosed", err)
		}
		if _, err := c1.Write(buf); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write after Close: got %v, want net.ErrClosed", err)
		}
		// The peer sees a clean end, not a reset.
		if _, err := io.ReadAll(c2); err != nil {
			t.Fatalf("peer of a closed stream: got %v, want EOF", err)
		}
	})
}

// goroutineLeakCheck fails t if, once t's cleanups before it have run, more
// goroutines are left than there were at the start. yamux's goroutines end
// shortly after Close, not at once, so it polls for a while before failing.
func goroutineLeakCheck(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// Close returns only once every goroutine the session started has ended:
// the one waking streams on close, those sending resets, and those letting
// aborted streams linger for the peer's close.
func TestSessionCloseAwaitsItsGoroutines(t *testing.T) {
	h := newHarness(t, func(_ Request, st *Stream) {
		st.WriteStatus(StatusOK)
		io.Copy(io.Discard, st) // never closes: aborted streams linger
	})
	for range 20 {
		st, err := h.client.Dial(h.dst)
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("x"))
		st.Abort()
		st.Close()
	}
	h.client.Close()
	h.server.Close()
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "mux.(*Session).sendReset") ||
			strings.Contains(g, "mux.(*Stream).Close") {
			t.Errorf("goroutine left after Close returned:\n%s", g)
		}
	}
}

// TestDialName sends a name to a helper that says it takes names: the
// helper's end sees the name and port, both ends' addresses name them, and
// WaitDial reports the helper's answer before any data.
func TestDialName(t *testing.T) {
	goroutineLeakCheck(t)
	log := slog.New(slog.DiscardHandler)
	a, b := net.Pipe()
	srvc := make(chan *Session, 1)
	go func() {
		s, _ := NewServer(b, func(Hello) Hello { return Hello{Names: true} }, log)
		srvc <- s
	}()
	client, err := NewClient(a, Hello{}, log)
	if err != nil {
		t.Fatal(err)
	}
	server := <-srvc
	defer func() {
		client.Close()
		server.Close()
	}()
	reqs := make(chan Request, 2)
	go server.Serve(context.Background(), func(req Request, st *Stream) {
		defer st.Close()
		reqs <- req
		if req.Host == "nowhere.example" {
			st.WriteStatus(StatusNoName)
			return
		}
		if got := st.LocalAddr().String(); got != "web.default:8080" {
			t.Errorf("helper's local address %q, want web.default:8080", got)
		}
		st.WriteStatus(StatusOK)
		st.Write([]byte("hi"))
	})

	st, err := client.DialName("web.default", 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.WaitDial(); err != nil {
		t.Fatalf("WaitDial: %v", err)
	}
	if req := <-reqs; req.Host != "web.default" || req.Port != 8080 || req.Target() != "web.default:8080" {
		t.Errorf("helper got %+v", req)
	}
	if got := st.RemoteAddr().String(); got != "web.default:8080" {
		t.Errorf("dialled remote address %q, want web.default:8080", got)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v after WaitDial", buf, err)
	}

	bad, err := client.DialName("nowhere.example", 80)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	var de *DialError
	if err := bad.WaitDial(); !errors.As(err, &de) || de.Status != StatusNoName {
		t.Fatalf("WaitDial for a name that does not resolve: %v, want StatusNoName", err)
	}
	if _, err := bad.Read(buf); !errors.As(err, &de) {
		t.Fatalf("Read after a failed WaitDial: %v, want the same DialError", err)
	}
	if _, err := client.DialName("a b", 80); !errors.Is(err, ErrBadName) {
		t.Fatalf("DialName of a bad name: %v, want ErrBadName", err)
	}
}

// A helper that does not say Names must never get a connect-by-name: it
// would drop the stream as an unknown kind.
func TestDialNameNeedsHelperSupport(t *testing.T) {
	client, _, _, stop := sessionPair(t)
	defer stop()
	if _, err := client.DialName("web.default", 80); !errors.Is(err, ErrNoNames) {
		t.Fatalf("got %v, want ErrNoNames", err)
	}
}

// A peer that opens streams and never sends their header must hold neither
// the goroutines waiting for them for long nor, past maxStrays of them, the
// session: yamux keeps every stream the peer keeps open.
func TestSilentStreams(t *testing.T) {
	client, server, _, stop := sessionPair(t)
	defer stop()
	client.requestTimeout.Store(int64(50 * time.Millisecond))
	before := runtime.NumGoroutine()
	for range 1000 {
		if _, err := server.ys.OpenStream(); err != nil {
			break // the client has closed the session
		}
	}
	select {
	case <-client.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("the session is still open with %d silent streams", client.NumStreams())
	}
	for deadline := time.Now().Add(time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines a second after the session closed, %d before the silent streams", runtime.NumGoroutine(), before)
		}
	}
}

// TestCloseWithManyBlockedReaders: yamux v0.1.2's Stream.Read, woken by the
// session's end while its stream is still open, loops back to waiting,
// wakes at once on the closed session and loops again, without ever
// sleeping, until yamux marks the stream closed, which it does only after
// its receive loop has ended. On one P (the client's and the helper's) each
// spinning reader held the P for a whole 10 ms time slice before that loop
// could run: after 10 000 held connections, SIGTERM took over 10 s in one
// bench run of four. Both ways a session ends: we close it, or its
// transport dies under it.
func TestCloseWithManyBlockedReaders(t *testing.T) {
	for _, how := range []string{"closed", "transport lost"} {
		t.Run(how, func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			client, server, b := pipeSessions(t)
			defer server.Close()
			go server.Serve(context.Background(), func(_ Request, st *Stream) { st.WriteStatus(StatusOK) })
			const n = 2000
			done := make(chan struct{}, n)
			for range n {
				st, err := client.Dial(testDst)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.WaitDial(); err != nil {
					t.Fatal(err)
				}
				go func() {
					st.Read(make([]byte, 1))
					done <- struct{}{}
				}()
			}
			time.Sleep(200 * time.Millisecond) // all waiting in yamux's Read
			start := time.Now()
			if how == "closed" {
				go client.Close()
			} else {
				b.Close()
			}
			for range n {
				select {
				case <-done:
				case <-time.After(60 * time.Second):
					t.Fatal("readers still blocked 60 s after the end")
				}
			}
			client.Close()
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("%d readers took %v to return, want well under a second", n, took.Round(time.Millisecond))
			}
		})
	}
}
