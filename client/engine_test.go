package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/internal/leakcheck"
	"github.com/k8stunnel/k8stunnel/internal/logtest"
	"github.com/k8stunnel/k8stunnel/server"
	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/transport/transporttest"
)

// engineLog gets every record the engine logs (through logtest.Records).
type engineLog chan slog.Record

func (h engineLog) wait(t *testing.T, msg string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r := <-h:
			if r.Message == msg {
				return
			}
		case <-timeout:
			t.Fatalf("no log message %q", msg)
		}
	}
}

// fakeFirewall records the rule sets it is given.
type fakeFirewall struct {
	mu       sync.Mutex
	installs []firewall.Spec
	closed   bool
	marked   int
	// transparent counts TransparentSocket's sockets.
	transparent int
}

func (f *fakeFirewall) Install(_ context.Context, s firewall.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.installs = append(f.installs, s)
	return nil
}

// Done is nil: the fake cannot die.
func (f *fakeFirewall) Done() <-chan struct{} { return nil }

// MarkSocket counts the sockets it is given: no rules capture them here.
func (f *fakeFirewall) MarkSocket(context.Context, int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marked++
	return nil
}

// TransparentSocket counts the sockets it is given: no rules capture UDP
// here.
func (f *fakeFirewall) TransparentSocket(context.Context, int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.transparent++
	return nil
}

func (f *fakeFirewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// echoTarget is a service on loopback that echoes what it gets.
func echoTarget(t *testing.T) netip.AddrPort {
	t.Helper()
	return listenTarget(t, func(c *net.TCPConn) { io.Copy(c, c) })
}

// engine is one client on an in-memory transport whose helpers are the real
// server engine, relaying every accepted connection to target as if a rule
// had redirected it there.
type engine struct {
	c    *Client
	tr   *transporttest.Transport
	fw   *fakeFirewall
	logs engineLog
	run  chan error
	stop context.CancelFunc
	// cancel stops Run with a cause, as a signal does.
	cancel context.CancelCauseFunc
	// origDst, when set, replaces the fixed target.
	origDst atomic.Pointer[func(*net.TCPConn) (netip.AddrPort, error)]
}

func startEngine(t *testing.T, cfg Config, tr *transporttest.Transport, target netip.AddrPort) *engine {
	t.Helper()
	if tr.Serve == nil {
		tr.Serve = func(ctx context.Context, rwc io.ReadWriteCloser) {
			server.Serve(ctx, server.Stream(rwc), server.Config{Program: "test server"})
		}
	}
	e := &engine{tr: tr, fw: &fakeFirewall{}, logs: make(engineLog, 100), run: make(chan error, 1)}
	cfg.Transport = tr
	// A port of its own per test process; the client moves lower when taken.
	cfg.Listen = []string{"127.0.0.1:" + strconv.Itoa(30000+os.Getpid()%20000)}
	if cfg.Include == nil && !cfg.AutoCIDRs {
		cfg.Include = []firewall.Target{{Prefix: netip.MustParsePrefix("10.96.0.0/12")}}
	}
	if cfg.StartFirewall == nil {
		cfg.StartFirewall = func(context.Context) (Firewall, error) { return e.fw, nil }
	}
	cfg.Log = slog.New(logtest.Records(e.logs))
	ready := make(chan struct{})
	cfg.OnReady = func() { close(ready) }
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.origDst = func(conn *net.TCPConn) (netip.AddrPort, error) {
		if f := e.origDst.Load(); f != nil {
			return (*f)(conn)
		}
		return target, nil
	}
	e.c = c
	ctx, cancel := context.WithCancelCause(t.Context())
	e.stop, e.cancel = func() { cancel(nil) }, cancel
	go func() { e.run <- c.Run(ctx) }()
	select {
	case <-ready:
	case err := <-e.run:
		t.Fatalf("Run before ready: %v", err)
	}
	return e
}

// shutdown stops Run and checks that nothing it started is left.
func (e *engine) shutdown(t *testing.T) {
	t.Helper()
	e.stop()
	if err := <-e.run; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	e.tr.Wait() // every helper's session ended
	for i, l := range e.tr.Links() {
		select {
		case <-l.Done():
		default:
			t.Errorf("link %d still open after Run returned", i)
		}
	}
	e.fw.mu.Lock()
	closed := e.fw.closed
	e.fw.mu.Unlock()
	if !closed {
		t.Error("firewall not closed after Run returned")
	}
	checkNoEngineGoroutines(t)
}

// engineFrames are functions whose goroutines must all be gone once Run has
// returned: the engine's, the helper's, the mux's and the fake transport's.
var engineFrames = []string{
	"k8stunnel/client.(*Client)", "k8stunnel/client.(*link)",
	"k8stunnel/server.", "k8stunnel/mux.", "k8stunnel/proxy.", "k8stunnel/transport/transporttest.", "hashicorp/yamux.",
}

// checkNoEngineGoroutines fails when a goroutine of the engine outlives Run.
func checkNoEngineGoroutines(t *testing.T) {
	t.Helper()
	leakcheck.None(t, time.Second, "after Run returned", engineFrames...)
}

func (e *engine) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(int(e.c.Port())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q, %v; want the echo %q", buf, err, msg)
	}
}

func TestEngineReconnects(t *testing.T) {
	tr := &transporttest.Transport{
		// The first reconnect finds the node still away.
		Fail: func(attempt int) error {
			if attempt == 2 {
				return errors.New("node rebooting")
			}
			return nil
		},
	}
	e := startEngine(t, Config{Channels: 2}, tr, echoTarget(t))

	app := e.dial(t)
	echo(t, app, "hello")
	e.fw.mu.Lock()
	spec := e.fw.installs[0]
	e.fw.mu.Unlock()
	server := firewall.Target{Prefix: netip.MustParsePrefix("192.0.2.1/32")}
	if spec.Port != e.c.Port() || len(spec.Exclude) != 1 || spec.Exclude[0] != server {
		t.Errorf("firewall spec %+v, want port %d and the link's server %v excluded", spec, e.c.Port(), server)
	}

	tr.Links()[0].Kill(errors.New("cable cut"))
	// The app learns at once that its connection is gone, by a reset rather
	// than a clean end it could mistake for a complete answer.
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := app.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("app read after the link died = %v, want a reset", err)
	}
	e.logs.wait(t, "tunnel lost; new connections are reset until it is back")
	e.logs.wait(t, "reconnect failed; retrying")
	e.logs.wait(t, "tunnel restored")

	echo(t, e.dial(t), "again")
	links := tr.Links()
	if len(links) != 2 {
		t.Fatalf("%d links, want 2", len(links))
	}
	for i, l := range links {
		if n := l.Opens(); n != 2 {
			t.Errorf("link %d has %d channels, want 2", i, n)
		}
	}
	e.shutdown(t)
}

func TestEngineStopsOnPermanentError(t *testing.T) {
	errChanged := transport.Permanent("host key changed")
	tr := &transporttest.Transport{
		Fail: func(attempt int) error {
			if attempt > 1 {
				return errChanged
			}
			return nil
		},
	}
	e := startEngine(t, Config{}, tr, echoTarget(t))
	echo(t, e.dial(t), "hello")

	tr.Links()[0].Kill(errors.New("cable cut"))
	select {
	case err := <-e.run:
		if !errors.Is(err, errChanged) {
			t.Errorf("Run = %v, want the permanent error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still retrying after a permanent error")
	}
	if n := len(tr.Links()); n != 1 {
		t.Errorf("%d links, want 1", n)
	}
	e.run <- nil // shutdown's Run result
	e.shutdown(t)
}

func TestEngineNeedsTransport(t *testing.T) {
	_, err := New(Config{Include: []firewall.Target{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}},
		StartFirewall: func(context.Context) (Firewall, error) { return &fakeFirewall{}, nil }})
	if err == nil {
		t.Error("New without a Transport succeeded")
	}
}

// While the link is down, a new connection is reset at once instead of
// hanging until the node is back.
func TestEngineResetsWhileDown(t *testing.T) {
	release := make(chan struct{})
	tr := &transporttest.Transport{
		Fail: func(attempt int) error {
			if attempt == 2 {
				<-release
			}
			return nil
		},
	}
	e := startEngine(t, Config{}, tr, echoTarget(t))
	echo(t, e.dial(t), "hello")

	tr.Links()[0].Kill(errors.New("cable cut"))
	e.logs.wait(t, "tunnel lost; new connections are reset until it is back")
	e.expectReset(t) // a connection made while the link is down
	close(release)
	e.logs.wait(t, "tunnel restored")
	echo(t, e.dial(t), "back")
	e.shutdown(t)
}
