//go:build linux

package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/k8stunnel/k8stunnel/internal/leakcheck"
	"github.com/k8stunnel/k8stunnel/mux"
)

var discard = slog.New(slog.DiscardHandler)

// bound is how long a test waits for something that should happen at once.
const bound = 10 * time.Second

// pair is the real data path in one process: a mux client session joined to
// Serve by net.Pipe, the way the SSH channel joins them in production.
type pair struct {
	client *mux.Session
	conn   net.Conn           // the client's end of the pipe, under its session
	armed  atomic.Bool        // the helper's writes to the pipe are to fail
	broken atomic.Bool        // they fail
	cancel context.CancelFunc // ends Serve's context
	served chan error
	err    error
	done   bool
	// exposed gets the streams the helper opens for exposed ports.
	exposed chan exposedConn
}

// newPair starts Serve with cfg and a client saying hello. The leak check is
// registered first, so it runs last: after the client is closed and Serve
// has returned.
func newPair(t *testing.T, cfg Config, hello mux.Hello) *pair {
	t.Helper()
	goroutineLeakCheck(t)
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	p := &pair{conn: a, cancel: cancel, served: make(chan error, 1)}
	go func() { p.served <- Serve(ctx, Stream(brokenWrites{b, &p.armed, &p.broken}), cfg) }()
	client, err := mux.NewClient(a, hello, discard)
	if err != nil {
		a.Close()
		cancel()
		<-p.served
		t.Fatalf("client handshake: %v", err)
	}
	p.client = client
	// The client accepts the streams that carry the helper's resets, and
	// those of exposed ports when it asked for any (see expose_test.go).
	if n := len(hello.Expose); n > 0 {
		p.exposed = make(chan exposedConn, 64)
		go client.ServeExposes(context.Background(), n, func(r mux.Request, st *mux.Stream) { p.exposed <- exposedConn{r, st} })
	} else {
		go client.Serve(context.Background(), nil)
	}
	t.Cleanup(func() {
		client.Close()
		cancel()
		p.wait(t)
	})
	return p
}

// brokenWrites is a transport whose writes fail, as a write to stdout does
// when sshd is gone: once armed is set, from the first write that carries
// an answer from a target on. Anything written before it goes through, so
// that one write is all the helper learns of the failure from.
type brokenWrites struct {
	net.Conn
	armed, broken *atomic.Bool
}

const answer = "an answer"

func (c brokenWrites) Write(b []byte) (int, error) {
	if c.armed.Load() && bytes.Contains(b, []byte(answer)) {
		c.broken.Store(true)
	}
	if c.broken.Load() {
		return 0, syscall.EPIPE
	}
	return c.Conn.Write(b)
}

// wait returns what Serve returned, failing the test if it does not return.
func (p *pair) wait(t *testing.T) error {
	t.Helper()
	if !p.done {
		select {
		case p.err = <-p.served:
			p.done = true
		case <-time.After(bound):
			t.Fatal("Serve did not return")
		}
	}
	return p.err
}

// dial opens a stream to dst and registers its Close.
func (p *pair) dial(t *testing.T, dst netip.AddrPort) *mux.Stream {
	t.Helper()
	st, err := p.client.Dial(dst)
	if err != nil {
		t.Fatalf("opening stream to %v: %v", dst, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// goroutineLeakCheck fails the test if goroutines started during it are still
// there when its cleanups are done.
func goroutineLeakCheck(t *testing.T) { leakcheck.Check(t, bound) }

// timeoutError is a net.Error that timed out, as a resolver or a custom
// dialer might return it.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func dialErr(errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
}

// TestDialStatus checks that each way a dial fails reaches the client as the
// status a direct connection would have shown it.
func TestDialStatus(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want mux.Status
	}{
		{"refused", dialErr(syscall.ECONNREFUSED), mux.StatusRefused},
		{"host unreachable", dialErr(syscall.EHOSTUNREACH), mux.StatusUnreachable},
		{"network unreachable", dialErr(syscall.ENETUNREACH), mux.StatusUnreachable},
		{"context deadline", fmt.Errorf("dialing: %w", context.DeadlineExceeded), mux.StatusTimeout},
		{"socket deadline", &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}, mux.StatusTimeout},
		{"net.Error timeout", timeoutError{}, mux.StatusTimeout},
		{"generic", errors.New("no route in this test"), mux.StatusFailed},
		{"canceled", context.Canceled, mux.StatusFailed},
		{"no such host", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}}, mux.StatusNoName},
		{"resolver timeout", &net.DNSError{Err: "i/o timeout", Name: "x", IsTimeout: true}, mux.StatusTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type call struct{ network, addr string }
			calls := make(chan call, 1)
			p := newPair(t, Config{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				calls <- call{network, addr}
				return nil, tt.err
			}}, mux.Hello{})
			dst := netip.MustParseAddrPort("[2001:db8::1]:443")
			st := p.dial(t, dst)
			st.Write([]byte("early bytes")) // the application may write before the status
			_, err := st.Read(make([]byte, 1))
			var de *mux.DialError
			if !errors.As(err, &de) || de.Status != tt.want {
				t.Fatalf("first Read: %v, want a DialError %q", err, tt.want)
			}
			if c := <-calls; c != (call{"tcp", dst.String()}) {
				t.Errorf("Dial(%q, %q), want Dial(%q, %q)", c.network, c.addr, "tcp", dst.String())
			}
		})
	}
}

// TestDialName resolves names with the node's resolver, as a net.Dialer
// does: "localhost" reaches a local listener, and a name the resolver (a fake
// DNS server answering NXDOMAIN) does not know fails with StatusNoName.
func TestDialName(t *testing.T) {
	t.Run("localhost", func(t *testing.T) {
		dst, conns := target(t)
		p := newPair(t, Config{}, mux.Hello{})
		if !p.client.Peer.Names {
			t.Fatal("the helper's hello does not say Names")
		}
		st, err := p.client.DialName("localhost", dst.Port())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if err := st.WaitDial(); err != nil {
			t.Fatalf("WaitDial: %v", err)
		}
		c := accepted(t, conns)
		write(t, st, "ping")
		st.CloseWrite()
		if got := readAll(t, c, "the target"); got != "ping" {
			t.Fatalf("target read %q, want ping", got)
		}
	})
	t.Run("no such host", func(t *testing.T) {
		nx := nxDomainServer(t)
		resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, nx)
		}}
		p := newPair(t, Config{Dial: (&net.Dialer{Resolver: resolver}).DialContext}, mux.Hello{})
		st, err := p.client.DialName("nowhere.k8stunnel.test", 80)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		var de *mux.DialError
		if err := st.WaitDial(); !errors.As(err, &de) || de.Status != mux.StatusNoName {
			t.Fatalf("WaitDial: %v, want a DialError %q", err, mux.StatusNoName)
		}
	})
}

// nxDomainServer is a DNS server on loopback (UDP and TCP, one port) that
// answers every query with NXDOMAIN; it returns its address.
func nxDomainServer(t *testing.T) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	// The kernel picks a free UDP port, which may be taken for TCP (by
	// another package's tests running beside these): then another.
	for try := 0; ln == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if !errors.Is(err, syscall.EADDRINUSE) || try == 20 {
				t.Fatal(err)
			}
		}
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		w.WriteMsg(new(dns.Msg).SetRcode(req, dns.RcodeNameError))
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String()
}

// TestDialRefusedForReal dials a loopback port that is bound but not
// listening, so the kernel refuses it and nobody else can take the port.
func TestDialRefusedForReal(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))

	p := newPair(t, Config{}, mux.Hello{})
	_, err = p.dial(t, dst).Read(make([]byte, 1))
	var de *mux.DialError
	if !errors.As(err, &de) || de.Status != mux.StatusRefused {
		t.Fatalf("first Read: %v, want a DialError %q", err, mux.StatusRefused)
	}
}

// TestDialTimeout checks that DialTimeout bounds the dial, and that the 10 s
// default applies when it is 0.
func TestDialTimeout(t *testing.T) {
	t.Run("set", func(t *testing.T) {
		p := newPair(t, Config{
			DialTimeout: 20 * time.Millisecond,
			Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			},
		}, mux.Hello{})
		_, err := p.dial(t, netip.MustParseAddrPort("192.0.2.1:80")).Read(make([]byte, 1))
		var de *mux.DialError
		if !errors.As(err, &de) || de.Status != mux.StatusTimeout {
			t.Fatalf("first Read: %v, want a DialError %q", err, mux.StatusTimeout)
		}
	})
	t.Run("default", func(t *testing.T) {
		left := make(chan time.Duration, 1)
		p := newPair(t, Config{Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d, ok := ctx.Deadline()
			if !ok {
				left <- -1
			} else {
				left <- time.Until(d)
			}
			return nil, errors.New("not dialing in this test")
		}}, mux.Hello{})
		p.dial(t, netip.MustParseAddrPort("192.0.2.1:80")).Read(make([]byte, 1))
		if l := <-left; l <= 5*time.Second || l > 10*time.Second {
			t.Errorf("dial deadline %v away, want the 10 s default", l)
		}
	})
}

// target is a loopback listener standing in for a pod.
func target(t *testing.T) (netip.AddrPort, <-chan *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan *net.TCPConn, 1)
	go func() {
		defer close(conns)
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		conns <- c
	}()
	t.Cleanup(func() {
		ln.Close()
		if c := <-conns; c != nil {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort(), conns
}

// accepted returns the target's connection, closed when the test ends.
func accepted(t *testing.T, conns <-chan *net.TCPConn) *net.TCPConn {
	t.Helper()
	select {
	case c := <-conns:
		if c == nil {
			t.Fatal("target accepted nothing")
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(bound):
		t.Fatal("the helper did not connect to the target")
	}
	return nil
}

func readAll(t *testing.T, r io.Reader, what string) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %s: %v", what, err)
	}
	return string(b)
}

func write(t *testing.T, w io.Writer, s string) {
	t.Helper()
	if _, err := io.WriteString(w, s); err != nil {
		t.Fatalf("writing %q: %v", s, err)
	}
}

// TestHalfClose checks that a FIN from either end reaches the other as EOF
// while the answer still flows back, through the default dialer.
func TestHalfClose(t *testing.T) {
	t.Run("client first", func(t *testing.T) {
		dst, conns := target(t)
		p := newPair(t, Config{}, mux.Hello{})
		st := p.dial(t, dst)
		write(t, st, "GET / HTTP/1.0\r\n\r\n")
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c := accepted(t, conns)
		if got := readAll(t, c, "the request at the target"); got != "GET / HTTP/1.0\r\n\r\n" {
			t.Fatalf("target got %q", got)
		}
		write(t, c, "HTTP/1.0 200 OK\r\n\r\nbody")
		c.CloseWrite()
		if got := readAll(t, st, "the answer at the client"); got != "HTTP/1.0 200 OK\r\n\r\nbody" {
			t.Fatalf("client got %q", got)
		}
	})
	t.Run("target first", func(t *testing.T) {
		dst, conns := target(t)
		p := newPair(t, Config{}, mux.Hello{})
		st := p.dial(t, dst)
		c := accepted(t, conns)
		write(t, c, "220 banner\r\n")
		c.CloseWrite()
		if got := readAll(t, st, "the banner at the client"); got != "220 banner\r\n" {
			t.Fatalf("client got %q", got)
		}
		write(t, st, "QUIT\r\n")
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, c, "the answer at the target"); got != "QUIT\r\n" {
			t.Fatalf("target got %q", got)
		}
	})
}

// TestReset checks that an abort on either end reaches the other as an
// error, never as a clean end.
func TestReset(t *testing.T) {
	t.Run("target resets", func(t *testing.T) {
		dst, conns := target(t)
		p := newPair(t, Config{}, mux.Hello{})
		st := p.dial(t, dst)
		c := accepted(t, conns)
		// Reset only once the relay runs: a reset that beats the dial's own
		// completion fails the dial instead (StatusFailed).
		write(t, c, "x")
		if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		c.SetLinger(0)
		c.Close()
		_, err := io.ReadAll(st)
		if !errors.Is(err, mux.ErrPeerReset) {
			t.Fatalf("client read %v, want %v", err, mux.ErrPeerReset)
		}
	})
	t.Run("client aborts", func(t *testing.T) {
		dst, conns := target(t)
		p := newPair(t, Config{}, mux.Hello{})
		st := p.dial(t, dst)
		c := accepted(t, conns)
		write(t, c, "hello") // the client reads the status: the relay has started
		if _, err := io.ReadFull(st, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		st.Abort()
		st.Close()
		c.SetReadDeadline(time.Now().Add(bound))
		_, err := io.ReadAll(c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("target read %v, want %v", err, syscall.ECONNRESET)
		}
	})
}

// TestFacts checks that the helper looks on the node only when asked.
func TestFacts(t *testing.T) {
	facts := &mux.Facts{ServiceCIDRs: []string{"10.96.0.0/12"}, DNS: []string{"10.96.0.10"}, Sources: []string{"test"}}
	tests := []struct {
		name     string
		ask      bool
		discover bool // cfg.Discover is set
		want     *mux.Facts
		calls    int32
	}{
		{"asked", true, true, facts, 1},
		{"not asked", false, true, nil, 0},
		{"asked, nothing to look with", true, false, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			cfg := Config{Program: "k8stunnel test"}
			if tt.discover {
				cfg.Discover = func() *mux.Facts { calls.Add(1); return facts }
			}
			p := newPair(t, cfg, mux.Hello{Program: "client", Discover: tt.ask})
			if got := p.client.Peer; got.Program != "k8stunnel test" || !reflect.DeepEqual(got.Facts, tt.want) {
				t.Errorf("helper said %+v with facts %+v, want program %q and facts %+v", got, got.Facts, "k8stunnel test", tt.want)
			}
			if n := calls.Load(); n != tt.calls {
				t.Errorf("Discover called %d times, want %d", n, tt.calls)
			}
		})
	}
}

// TestServeEnds checks both ways a session ends: the context, and the client
// going away.
func TestServeEnds(t *testing.T) {
	t.Run("context canceled", func(t *testing.T) {
		p := newPair(t, Config{}, mux.Hello{})
		p.cancel()
		if err := p.wait(t); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		select {
		case <-p.client.Done():
		case <-time.After(bound):
			t.Fatal("the client's session outlived Serve")
		}
	})
	t.Run("client closed", func(t *testing.T) {
		p := newPair(t, Config{}, mux.Hello{})
		p.client.Close()
		if err := p.wait(t); err != nil {
			t.Fatalf("Serve: %v", err)
		}
	})
}

// TestServeEndsItsWork checks that when Serve returns, nothing it started is
// left behind: not a dial in flight, not a relay whose stream side is done
// and whose target is quiet.
func TestServeEndsItsWork(t *testing.T) {
	t.Run("dial in flight", func(t *testing.T) {
		entered, returned := make(chan struct{}), make(chan struct{})
		near, far := net.Pipe()
		t.Cleanup(func() { near.Close(); far.Close() })
		p := newPair(t, Config{
			DialTimeout: time.Hour,
			Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				defer close(returned)
				close(entered)
				<-ctx.Done()
				// A dial that completes just as the session ends.
				return near, nil
			},
		}, mux.Hello{})
		p.dial(t, netip.MustParseAddrPort("192.0.2.1:80"))
		<-entered
		p.client.Close()
		p.wait(t)
		select {
		case <-returned:
		default:
			t.Fatal("Serve returned with a dial in flight")
		}
		far.SetReadDeadline(time.Now())
		if _, err := far.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("the late connection: read %v after Serve returned, want it closed", err)
		}
	})
	t.Run("quiet target", func(t *testing.T) {
		near, far := net.Pipe()
		t.Cleanup(func() { near.Close(); far.Close() })
		fin := make(chan struct{})
		p := newPair(t, Config{Dial: func(context.Context, string, string) (net.Conn, error) {
			return finConn{near, fin}, nil
		}}, mux.Hello{})
		p.dial(t, netip.MustParseAddrPort("192.0.2.1:80")).CloseWrite()
		select {
		case <-fin:
		case <-time.After(bound):
			t.Fatal("the client's FIN did not reach the target")
		}
		p.client.Close()
		p.wait(t)
		// The target must not be left waiting for an answer to a session
		// that is gone. A deadline in the past: closed is checked first.
		far.SetReadDeadline(time.Now())
		if _, err := far.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("target read %v after Serve returned, want it closed", err)
		}
	})
}

// finConn is a target that takes a FIN and stays silent, its socket open.
type finConn struct {
	net.Conn
	fin chan struct{}
}

func (c finConn) CloseWrite() error { close(c.fin); return nil }

// TestHandshakeFails checks that Serve reports a session that never started.
func TestHandshakeFails(t *testing.T) {
	t.Run("no hello", func(t *testing.T) {
		goroutineLeakCheck(t)
		a, b := net.Pipe()
		a.Close()
		if err := Serve(context.Background(), Stream(b), Config{}); !errors.Is(err, mux.ErrNoHello) {
			t.Fatalf("Serve: %v, want %v", err, mux.ErrNoHello)
		}
	})
}

// TestStdio runs a session over Stdio with pipes in place of the ones sshd
// would give the helper.
func TestStdio(t *testing.T) {
	goroutineLeakCheck(t)
	inR, inW := pipe(t)
	outR, outW := pipe(t)
	oldIn, oldOut := os.Stdin, os.Stdout
	os.Stdin, os.Stdout = inR, outW
	t.Cleanup(func() { os.Stdin, os.Stdout = oldIn, oldOut })

	rwc := Stdio()
	// Pipes are read and written through rawio, on descriptions of their
	// own: the Fd calls below make the originals blocking, which under a
	// raw read of a shared description would stop this session.
	if s := rwc.(*pipes); s.r == io.Reader(s.pin) || s.w == io.Writer(s.pout) {
		t.Error("stdin or stdout is not read or written through rawio")
	}
	if max := pipeMaxSize(t); max >= pipeSize || os.Geteuid() == 0 {
		for _, f := range []*os.File{inR, outW} {
			if n, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0); err != nil || n != pipeSize {
				t.Errorf("pipe size %d, %v; want %d", n, err, pipeSize)
			}
		}
	}

	near, far := net.Pipe()
	t.Cleanup(func() { near.Close(); far.Close() })
	served := make(chan error, 1)
	go func() {
		served <- Serve(context.Background(), rwc, Config{Dial: func(context.Context, string, string) (net.Conn, error) {
			return near, nil
		}})
	}()
	client, err := mux.NewClient(sshChannel{outR, inW}, mux.Hello{}, discard)
	if err != nil {
		t.Fatal(err)
	}
	st, err := client.Dial(netip.MustParseAddrPort("192.0.2.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, st, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(far, got); err != nil || string(got) != "ping" {
		t.Fatalf("target read %q, %v", got, err)
	}
	write(t, far, "pong")
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v", got, err)
	}
	client.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(bound):
		t.Fatal("Serve did not return")
	}
	// The session's end closes the helper's stdin and stdout.
	if _, err := inR.Read(make([]byte, 1)); !errors.Is(err, os.ErrClosed) {
		t.Errorf("stdin read after Serve: %v, want %v", err, os.ErrClosed)
	}
	if _, err := outW.Write([]byte{0}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("stdout write after Serve: %v, want %v", err, os.ErrClosed)
	}
}

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func pipeMaxSize(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sshChannel is the client's end of the helper's stdio.
type sshChannel struct {
	r io.ReadCloser
	w io.WriteCloser
}

func (c sshChannel) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c sshChannel) Write(b []byte) (int, error) { return c.w.Write(b) }
func (c sshChannel) Close() error {
	c.w.Close()
	return c.r.Close()
}

// When the session ends before the client finished, however it ends, every
// target must see a reset: a FIN would tell a pod-side server that a
// truncated upload was complete.
func TestUnfinishedUploadsAreReset(t *testing.T) {
	for _, tt := range []struct {
		name string
		end  func(p *pair, targets []*net.TCPConn)
	}{
		{"session lost", func(p *pair, _ []*net.TCPConn) { p.client.Close() }},
		{"helper stopped", func(p *pair, _ []*net.TCPConn) { p.cancel() }}, // a signal ends Serve's context
		{"session error", func(p *pair, _ []*net.TCPConn) {
			// A frame of an unknown yamux version: the helper's session
			// fails with a protocol error while the pipe stays open.
			p.conn.Write([]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
		}},
		{"write error", func(p *pair, targets []*net.TCPConn) {
			// The pod answers and the helper cannot pass it on. Nothing
			// else is written: that one failed write must end the session.
			p.armed.Store(true)
			targets[0].Write([]byte(answer))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPair(t, Config{}, mux.Hello{})
			const uploads = 20
			var targets []*net.TCPConn
			for range uploads {
				dst, conns := target(t)
				st := p.dial(t, dst)
				write(t, st, "part of an upload")
				c := accepted(t, conns)
				c.SetReadDeadline(time.Now().Add(bound))
				if _, err := io.ReadFull(c, make([]byte, len("part of an upload"))); err != nil {
					t.Fatal(err)
				}
				targets = append(targets, c)
			}
			tt.end(p, targets)
			// The helper exits when Serve returns, and the kernel would then
			// close what is still open with a FIN: by then every target must
			// have been reset. One non-blocking read each says what arrived.
			p.wait(t)
			for i, c := range targets {
				if err := pendingError(c); !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("upload %d: target has %v when Serve returned, want a reset", i, err)
				}
			}
		})
	}
}

// pendingError reads c once without waiting: ECONNRESET when a reset came,
// nil for a FIN (a read of 0), EAGAIN when nothing came yet.
func pendingError(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		_, rerr = unix.Read(int(fd), make([]byte, 1))
		return true
	})
	return errors.Join(err, rerr)
}

// TestStripe: a striped connection is dialled once, when all its parts are
// in, and carries several chunks each way in order; a dial that fails
// reaches the client as part 0's status and resets the other parts.
func TestStripe(t *testing.T) {
	t.Run("relays", func(t *testing.T) {
		dst, conns := target(t)
		p := newPair(t, Config{}, mux.Hello{})
		if !p.client.Peer.Stripes {
			t.Fatal("the helper's hello does not offer stripes")
		}
		// Three parts on one session: the table pairs them as it pairs
		// parts that come over several sessions of one process.
		sc, err := mux.DialStriped([]*mux.Session{p.client, p.client, p.client}, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		if err := sc.WaitDial(); err != nil {
			t.Fatal(err)
		}
		c := accepted(t, conns)
		up := strings.Repeat("u", 4*mux.StripeChunk+7)
		go func() {
			io.WriteString(sc, up)
			sc.CloseWrite()
		}()
		if got := readAll(t, c, "the upload at the target"); got != up {
			t.Fatalf("target got %d bytes, want %d in order", len(got), len(up))
		}
		down := strings.Repeat("0123456789", mux.StripeChunk/2)
		go func() {
			io.WriteString(c, down)
			c.CloseWrite()
		}()
		if got := readAll(t, sc, "the download at the client"); got != down {
			t.Fatalf("client got %d bytes, want %d in order", len(got), len(down))
		}
	})
	t.Run("dial fails", func(t *testing.T) {
		p := newPair(t, Config{Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, dialErr(syscall.ECONNREFUSED)
		}}, mux.Hello{})
		sc, err := mux.DialStriped([]*mux.Session{p.client, p.client}, netip.MustParseAddrPort("10.96.0.10:80"))
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		var de *mux.DialError
		if err := sc.WaitDial(); !errors.As(err, &de) || de.Status != mux.StatusRefused {
			t.Fatalf("got %v, want connection refused", err)
		}
	})
}
