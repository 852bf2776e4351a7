package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/server"
	"github.com/k8stunnel/k8stunnel/transport/transporttest"
)

func TestEndReason(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	for _, tc := range []struct {
		appErr, err error
		want        string
	}{
		{nil, nil, "eof"},
		{reset, net.ErrClosed, "reset by app"},
		{net.ErrClosed, net.ErrClosed, "failed"},
		{net.ErrClosed, mux.ErrPeerReset, "reset by target"},
		{nil, &mux.DialError{Status: mux.StatusRefused}, "refused"},
		{nil, &mux.DialError{Status: mux.StatusUnreachable}, "unreachable"},
		{nil, &mux.DialError{Status: mux.StatusTimeout}, "timed out"},
		{nil, &mux.DialError{Status: mux.StatusFailed}, "failed"},
		{nil, fmt.Errorf("reading: %w", mux.ErrSessionLost), "tunnel lost"},
		{nil, os.ErrDeadlineExceeded, "timed out"},
		{nil, errors.New("something else"), "failed"},
	} {
		if got := endReason(tc.err, tc.appErr, net.ErrClosed); got != tc.want {
			t.Errorf("endReason(%v, %v) = %q, want %q", tc.appErr, tc.err, got, tc.want)
		}
	}
}

// closeLine waits for the close line of the connection to dst and returns
// its attributes as text.
func (h engineLog) closeLine(t *testing.T, dst netip.AddrPort) (string, map[string]string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r := <-h:
			if !strings.HasSuffix(r.Message, " -> "+dst.String()+" closed") {
				continue
			}
			attrs := map[string]string{}
			r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
			return r.Message, attrs
		case <-timeout:
			t.Fatalf("no close line for %v", dst)
		}
	}
}

// Each way a connection ends is named on its close line, with its bytes.
func TestEngineCloseLines(t *testing.T) {
	refusing := netip.MustParseAddrPort("192.0.2.9:1")
	tr := &transporttest.Transport{Serve: func(ctx context.Context, rwc io.ReadWriteCloser) {
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == refusing.String() {
				return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
		server.Serve(ctx, server.Stream(rwc), server.Config{Program: "test server", Dial: dial})
	}}
	echoAddr := echoTarget(t)
	e := startEngine(t, Config{StreamIDs: true}, tr, echoAddr)
	to := func(dst netip.AddrPort) {
		f := func(*net.TCPConn) (netip.AddrPort, error) { return dst, nil }
		e.origDst.Store(&f)
	}

	// eof: both sides end cleanly.
	app := e.dial(t)
	echo(t, app, "hello")
	app.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, app)
	msg, attrs := e.logs.closeLine(t, echoAddr)
	if want := app.LocalAddr().String() + " -> " + echoAddr.String() + " closed"; msg != want ||
		attrs["end"] != "eof" || attrs["sent"] != "5" || attrs["received"] != "5" ||
		attrs["stream"] == "" || attrs["channel"] != "0" || attrs["took"] == "" {
		t.Errorf("close line %q %v, want %q with end=eof, 5 bytes each way, took, stream and channel", msg, attrs, want)
	}
	app.Close()

	// refused: the node could not connect.
	to(refusing)
	e.expectReset(t)
	if _, attrs := e.logs.closeLine(t, refusing); attrs["end"] != "refused" {
		t.Errorf("refused target: end=%q, want refused", attrs["end"])
	}

	// reset by target: it closes with a RST.
	rst := listenTarget(t, func(c *net.TCPConn) { c.Read(make([]byte, 1)); c.SetLinger(0); c.Close() })
	to(rst)
	app = e.dial(t)
	app.Write([]byte("x"))
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	app.Read(make([]byte, 1))
	app.Close()
	if _, attrs := e.logs.closeLine(t, rst); attrs["end"] != "reset by target" {
		t.Errorf("target sent a RST: end=%q, want reset by target", attrs["end"])
	}

	// reset by app: the application aborts while the target still talks.
	talker := listenTarget(t, func(c *net.TCPConn) {
		for {
			if _, err := c.Write(make([]byte, 1<<10)); err != nil {
				return
			}
		}
	})
	to(talker)
	app = e.dial(t)
	if _, err := io.ReadFull(app, make([]byte, 1<<10)); err != nil {
		t.Fatal(err)
	}
	app.(*net.TCPConn).SetLinger(0)
	app.Close()
	if _, attrs := e.logs.closeLine(t, talker); attrs["end"] != "reset by app" {
		t.Errorf("app sent a RST: end=%q, want reset by app (%v)", attrs["end"], attrs)
	}
	e.shutdown(t)
}

// listenTarget serves each connection to a loopback port with handle.
func listenTarget(t *testing.T, handle func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); handle(c) })
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
