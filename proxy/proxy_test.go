package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/internal/leakcheck"
	"github.com/k8stunnel/k8stunnel/mux"
)

// bound is how long a test waits for what should happen at once.
const bound = 10 * time.Second

// fakeDialer stands in for the tunnel: targets in fail fail with that
// error, every other one is connected to echo (or to route's address), and
// every target asked for is recorded.
type fakeDialer struct {
	echo  string            // address of an echo server
	route map[string]string // target → real address
	fail  map[string]error

	mu    sync.Mutex
	asked []string
}

func (d *fakeDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.asked = append(d.asked, addr)
	d.mu.Unlock()
	if err, ok := d.fail[addr]; ok {
		return nil, err
	}
	to := d.echo
	if r, ok := d.route[addr]; ok {
		to = r
	}
	return (&net.Dialer{}).DialContext(ctx, network, to)
}

func (d *fakeDialer) last() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.asked) == 0 {
		return ""
	}
	return d.asked[len(d.asked)-1]
}

// What a tunnel stream reports, and what a net.Dialer would.
var (
	errRefused     = &mux.DialError{Status: mux.StatusRefused}
	errUnreachable = &mux.DialError{Status: mux.StatusUnreachable}
	errTimeout     = &mux.DialError{Status: mux.StatusTimeout}
	errNoName      = &mux.DialError{Status: mux.StatusNoName}
	errDown        = errors.New("tunnel is down")
	errNetUnreach  = &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}
	errDNS         = &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}}
)

func newFakeDialer(t *testing.T) *fakeDialer {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return &fakeDialer{
		echo: ln.Addr().String(),
		fail: map[string]error{
			"10.96.0.1:81":    errRefused,
			"10.244.9.1:80":   errUnreachable,
			"10.99.0.1:80":    errNetUnreach,
			"192.0.2.1:80":    errTimeout,
			"nowhere.test:80": errNoName,
			"gone.test:80":    errDNS,
			"down.test:80":    errDown,
		},
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// start runs serve on a loopback listener until the test ends, and checks
// that it then returns.
func start(t *testing.T, serve func(context.Context, net.Listener) error) string {
	t.Helper()
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(bound):
			t.Error("Serve did not return after its context ended")
		}
	})
	return ln.Addr().String()
}

// socksConnect sends a greeting and a CONNECT for the address bytes addr
// (ATYP first) and returns the reply code and the connection.
func socksConnect(t *testing.T, proxy string, cmd byte, addr []byte, port uint16) (byte, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(bound))
	req := []byte{5, 1, 0, 5, cmd, 0}
	req = append(req, addr...)
	req = append(req, byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var resp [2 + 10]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	if resp[0] != 5 || resp[1] != 0 {
		t.Fatalf("method reply % x, want 05 00", resp[:2])
	}
	if resp[2] != 5 || resp[4] != 0 {
		t.Fatalf("reply % x is not a SOCKS5 reply", resp[2:])
	}
	c.SetDeadline(time.Time{})
	return resp[3], c
}

func ipv4(a, b, c, d byte) []byte { return []byte{atypIPv4, a, b, c, d} }
func name(s string) []byte        { return append([]byte{atypName, byte(len(s))}, s...) }

func checkEcho(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(bound))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo: read %q, %v", buf, err)
	}
}

func TestSOCKS(t *testing.T) {
	leakcheck.Check(t, bound)
	d := newFakeDialer(t)
	addr := start(t, (&SOCKS{Dial: d}).Serve)

	v6 := append([]byte{atypIPv6}, net.ParseIP("fd00::1")...)
	for _, tt := range []struct {
		name   string
		addr   []byte
		port   uint16
		target string
	}{
		{"ipv4", ipv4(10, 96, 0, 10), 80, "10.96.0.10:80"},
		{"ipv6", v6, 443, "[fd00::1]:443"},
		{"domain", name("web.default.svc.cluster.local"), 8080, "web.default.svc.cluster.local:8080"},
		{"domain with the final dot", name("web.default.svc.cluster.local."), 80, "web.default.svc.cluster.local:80"},
		{"address as a domain", name("fd00::1"), 80, "[fd00::1]:80"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep, c := socksConnect(t, addr, cmdConnect, tt.addr, tt.port)
			if rep != repOK {
				t.Fatalf("reply %d, want 0", rep)
			}
			if got := d.last(); got != tt.target {
				t.Errorf("dialled %q, want %q", got, tt.target)
			}
			checkEcho(t, c)
		})
	}

	for _, tt := range []struct {
		name string
		cmd  byte
		addr []byte
		port uint16
		want byte
	}{
		{"refused", cmdConnect, ipv4(10, 96, 0, 1), 81, repRefused},
		{"host unreachable", cmdConnect, ipv4(10, 244, 9, 1), 80, repHostUnreach},
		{"network unreachable", cmdConnect, ipv4(10, 99, 0, 1), 80, repNetUnreach},
		{"timeout", cmdConnect, ipv4(192, 0, 2, 1), 80, repTTLExpired},
		{"no such host", cmdConnect, name("nowhere.test"), 80, repHostUnreach},
		{"no such host from a resolver", cmdConnect, name("gone.test"), 80, repHostUnreach},
		{"other failure", cmdConnect, name("down.test"), 80, repFailure},
		{"empty name", cmdConnect, name(""), 80, repHostUnreach},
		{"bad name", cmdConnect, name("a:b]/c"), 80, repHostUnreach},
		{"bind", 2, ipv4(10, 96, 0, 10), 80, repCmdUnsupp},
		{"udp associate", 3, ipv4(10, 96, 0, 10), 80, repCmdUnsupp},
		{"unknown address type", cmdConnect, []byte{9, 1, 2, 3, 4}, 80, repAtypUnsupp},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			rep, c := socksConnect(t, addr, tt.cmd, tt.addr, tt.port)
			if rep != tt.want {
				t.Fatalf("reply %d, want %d", rep, tt.want)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("reply after %v, want it within 1s", d)
			}
			c.SetReadDeadline(time.Now().Add(bound))
			if n, err := c.Read(make([]byte, 1)); err == nil {
				t.Errorf("read %d bytes after a failure reply, want the connection closed", n)
			}
		})
	}

	t.Run("no acceptable method", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(bound))
		c.Write([]byte{5, 1, 2}) // username/password only
		b, _ := io.ReadAll(c)
		if !bytes.Equal(b, []byte{5, 0xff}) {
			t.Fatalf("got % x, want 05 ff and the connection closed", b)
		}
	})
}

// A SOCKS connection ends when Serve's context does, even a quiet one.
func TestSOCKSServeEndsConnections(t *testing.T) {
	leakcheck.Check(t, bound)
	d := newFakeDialer(t)
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&SOCKS{Dial: d}).Serve(ctx, ln) }()
	rep, c := socksConnect(t, ln.Addr().String(), cmdConnect, ipv4(10, 96, 0, 10), 80)
	if rep != repOK {
		t.Fatalf("reply %d", rep)
	}
	idle, err := net.Dial("tcp", ln.Addr().String()) // never says anything
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	cancel()
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatal("Serve did not return")
	}
	c.SetReadDeadline(time.Now().Add(bound))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Fatalf("relayed connection after Serve returned: %v, want it closed", err)
	}
}

// httpConnect sends CONNECT target through the proxy and returns the
// response and the connection.
func httpConnect(t *testing.T, proxy, target string) (*http.Response, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(bound))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading the CONNECT response: %v", err)
	}
	c.SetDeadline(time.Time{})
	if resp.StatusCode == http.StatusOK && br.Buffered() > 0 {
		t.Fatalf("%d bytes after the response before any were sent", br.Buffered())
	}
	return resp, c
}

func TestHTTPConnect(t *testing.T) {
	leakcheck.Check(t, bound)
	d := newFakeDialer(t)
	addr := start(t, (&HTTP{Dial: d}).Serve)

	resp, c := httpConnect(t, addr, "web.default.svc.cluster.local:443")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %s, want 200", resp.Status)
	}
	if got := d.last(); got != "web.default.svc.cluster.local:443" {
		t.Errorf("dialled %q", got)
	}
	checkEcho(t, c)

	for _, tt := range []struct {
		target string
		want   int
	}{
		{"10.96.0.1:81", http.StatusBadGateway},
		{"10.244.9.1:80", http.StatusBadGateway},
		{"nowhere.test:80", http.StatusBadGateway},
		{"down.test:80", http.StatusBadGateway},
		{"192.0.2.1:80", http.StatusGatewayTimeout},
		{"no-port.test", http.StatusBadRequest},
	} {
		t.Run(tt.target, func(t *testing.T) {
			start := time.Now()
			resp, _ := httpConnect(t, addr, tt.target)
			if resp.StatusCode != tt.want {
				t.Fatalf("CONNECT %s: %s, want %d", tt.target, resp.Status, tt.want)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("answer after %v, want it within 1s", d)
			}
		})
	}
}

func TestHTTPForward(t *testing.T) {
	leakcheck.Check(t, bound)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s host=%s proxy-conn=%q", r.Method, r.URL.RequestURI(), r.Host, r.Header.Get("Proxy-Connection"))
	}))
	t.Cleanup(web.Close)
	d := newFakeDialer(t)
	d.route = map[string]string{"web.default.svc.cluster.local:80": web.Listener.Addr().String()}
	addr := start(t, (&HTTP{Dial: d}).Serve)

	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: bound}

	resp, err := client.Get("http://web.default.svc.cluster.local/path?q=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `GET /path?q=1 host=web.default.svc.cluster.local proxy-conn=""`; resp.StatusCode != 200 || string(body) != want {
		t.Fatalf("got %s %q, want 200 %q", resp.Status, body, want)
	}

	for _, tt := range []struct {
		url  string
		want int
	}{
		{"http://10.96.0.1:81/", http.StatusBadGateway},
		{"http://nowhere.test/", http.StatusBadGateway},
		{"http://192.0.2.1/", http.StatusGatewayTimeout},
	} {
		resp, err := client.Get(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s: %s, want %d", tt.url, resp.Status, tt.want)
		}
	}

	// Not a proxy request: a browser pointed at the proxy as if it were a site.
	resp, err = http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET / of the proxy itself: %s, want 400", resp.Status)
	}
}

func TestListenAddr(t *testing.T) {
	for _, tt := range []struct {
		in       string
		addr     string
		loopback bool
		bad      bool
	}{
		{in: "1080", addr: "127.0.0.1:1080", loopback: true},
		{in: "127.0.0.1:3128", addr: "127.0.0.1:3128", loopback: true},
		{in: "localhost:3128", addr: "127.0.0.1:3128", loopback: true},
		{in: "[::1]:1080", addr: "[::1]:1080", loopback: true},
		{in: "0.0.0.0:1080", addr: "0.0.0.0:1080"},
		{in: ":1080", addr: ":1080"},
		{in: "192.168.1.5:1080", addr: "192.168.1.5:1080"},
		{in: "", bad: true},
		{in: "70000", bad: true},
		{in: "example.com:1080", bad: true},
		{in: "127.0.0.1", bad: true},
		{in: "127.0.0.1:http", bad: true},
	} {
		addr, loopback, err := ListenAddr(tt.in)
		if tt.bad {
			if err == nil || !strings.Contains(err.Error(), "want PORT or IP:PORT") {
				t.Errorf("ListenAddr(%q) = %q, %v; want an error", tt.in, addr, err)
			}
			continue
		}
		if err != nil || addr != tt.addr || loopback != tt.loopback {
			t.Errorf("ListenAddr(%q) = %q, %v, %v; want %q, %v", tt.in, addr, loopback, err, tt.addr, tt.loopback)
		}
	}
}

// rw is a client's connection for the fuzzer: what it sends, and what it got.
type rw struct {
	io.Reader
	out bytes.Buffer
}

func (c *rw) Write(b []byte) (int, error) { return c.out.Write(b) }

// FuzzSOCKS feeds arbitrary bytes to the handshake: it must never panic,
// answer with anything but a method reply, or accept a target that is not
// host:port.
func FuzzSOCKS(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 10, 96, 0, 10, 0, 80})
	f.Add(append([]byte{5, 1, 0, 5, 1, 0, 3, 3, 'w', 'e', 'b'}, 0, 80))
	f.Add(append(append([]byte{5, 1, 0, 5, 1, 0, 4}, net.ParseIP("fd00::1")...), 1, 187))
	f.Add([]byte{5, 1, 2})
	f.Add([]byte{4, 1, 0, 80, 10, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &rw{Reader: bytes.NewReader(in)}
		target, rep, err := handshake(c)
		if out := c.out.Bytes(); len(out) > 0 && !bytes.Equal(out, []byte{5, 0}) && !bytes.Equal(out, []byte{5, 0xff}) {
			t.Fatalf("wrote % x during the handshake", out)
		}
		if err != nil {
			if target != "" {
				t.Fatalf("error %v with target %q", err, target)
			}
			return
		}
		if rep != repOK {
			t.Fatalf("no error but reply %d", rep)
		}
		if _, _, err := net.SplitHostPort(target); err != nil {
			t.Fatalf("target %q: %v", target, err)
		}
	})
}

// panicSpotter is a log handler that remembers whether net/http reported a
// handler panic: the server recovers those, so they would otherwise pass.
type panicSpotter struct {
	mu     sync.Mutex
	panics []string
}

func (h *panicSpotter) Enabled(context.Context, slog.Level) bool { return true }
func (h *panicSpotter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *panicSpotter) WithGroup(string) slog.Handler            { return h }
func (h *panicSpotter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		h.mu.Lock()
		h.panics = append(h.panics, r.Message)
		h.mu.Unlock()
	}
	return nil
}

// FuzzHTTPProxy sends arbitrary bytes to a running HTTP proxy as a client
// would: no request may panic its handler, and the proxy must still answer a
// good CONNECT afterwards.
func FuzzHTTPProxy(f *testing.F) {
	f.Add([]byte("CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\nhello"))
	f.Add([]byte("GET http://10.96.0.1/ HTTP/1.1\r\nHost: 10.96.0.1\r\n\r\n"))
	f.Add([]byte("CONNECT 10.96.0.1:81 HTTP/1.1\r\n\r\n"))
	f.Add([]byte("CONNECT [::1 HTTP/1.1\r\nHost: [::1\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST http://x:80/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
	spot := &panicSpotter{}
	f.Fuzz(func(t *testing.T, in []byte) {
		d := newFakeDialer(t)
		addr := start(t, (&HTTP{Dial: d, Log: slog.New(spot)}).Serve)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, io.LimitReader(c, 1<<20))

		resp, good := httpConnect(t, addr, "web:80")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a good CONNECT after %q: %s", in, resp.Status)
		}
		good.Close()
		spot.mu.Lock()
		defer spot.mu.Unlock()
		if len(spot.panics) > 0 {
			t.Fatalf("%q: the handler panicked: %s", in, spot.panics[0])
		}
	})
}
