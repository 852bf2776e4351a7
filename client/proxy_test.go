package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"
	xproxy "golang.org/x/net/proxy"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/server"
	"github.com/k8stunnel/k8stunnel/transport/transporttest"
)

const testClusterDNS = "10.96.0.53:53"

// clusterDNS plays the cluster's DNS on loopback (TCP): svc.ns.svc.cluster.local
// names in records have an A record each, every other name is NXDOMAIN.
func clusterDNS(t *testing.T, records map[string]string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		q := req.Question[0]
		a, ok := records[q.Name]
		if !ok {
			w.WriteMsg(new(dns.Msg).SetRcode(req, dns.RcodeNameError))
			return
		}
		resp := new(dns.Msg).SetReply(req)
		if q.Qtype == dns.TypeA {
			resp.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.ParseIP(a)}}
		}
		w.WriteMsg(resp)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// TestEngineProxyOnly runs the engine with a SOCKS and an HTTP proxy and no
// CIDR: no firewall is started and no redirect listener bound, and the
// tunnel dialer reaches IPs, cluster names (through the cluster DNS in the
// tunnel, short forms too) and other names (through the node's resolver).
func TestEngineProxyOnly(t *testing.T) {
	target := echoTarget(t)
	port := strconv.Itoa(int(target.Port()))
	dnsAddr := clusterDNS(t, map[string]string{"web.default.svc.cluster.local.": "127.0.0.1"})
	tr := &transporttest.Transport{Serve: func(ctx context.Context, rwc io.ReadWriteCloser) {
		server.Serve(ctx, server.Stream(rwc), server.Config{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == testClusterDNS {
				addr = dnsAddr
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}})
	}}
	cfg := Config{
		Transport: tr,
		SOCKS:     "127.0.0.1:0",
		HTTPProxy: "127.0.0.1:0",
		Names:     Names{ClusterDNS: netip.MustParseAddrPort(testClusterDNS).Addr(), Search: []string{"default"}},
		MaxConns:  3,
		StartFirewall: func(context.Context) (Firewall, error) {
			t.Error("the firewall was started without a CIDR")
			return nil, errors.New("no firewall in this test")
		},
		Log: slog.New(slog.DiscardHandler),
	}
	ready := make(chan struct{})
	cfg.OnReady = func() { close(ready) }
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.listeners) != 0 || c.Port() != 0 {
		t.Errorf("redirect listeners bound without a CIDR: %v", c.listeners)
	}
	ctx, cancel := context.WithCancel(t.Context())
	run := make(chan error, 1)
	go func() { run <- c.Run(ctx) }()
	select {
	case <-ready:
	case err := <-run:
		t.Fatalf("Run before ready: %v", err)
	}

	dial := func(addr string) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		return c.DialContext(dctx, "tcp", addr)
	}
	for _, addr := range []string{
		target.String(),
		"web.default.svc.cluster.local:" + port,
		"WEB.default.svc.cluster.local.:" + port,
		"web:" + port,
		"web.default:" + port,
		"localhost:" + port, // not the cluster's: the node resolves it
	} {
		conn, err := dial(addr)
		if err != nil {
			t.Errorf("dialing %s: %v", addr, err)
			continue
		}
		echo(t, conn, "hi")
		conn.Close()
	}
	var dnsErr *net.DNSError
	for _, addr := range []string{"nothing.default.svc.cluster.local:80", "bad_name!:80"} {
		if _, err := dial(addr); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Errorf("dialing %s: %v, want a not-found DNSError", addr, err)
		}
	}
	var de *mux.DialError
	closed := freeAddr(t)
	if _, err := dial(closed); !errors.As(err, &de) || de.Status != mux.StatusRefused {
		t.Errorf("dialing the closed port %s: %v, want refused", closed, err)
	}

	// MaxConns counts proxied connections; a closed one gives its place back.
	var open []net.Conn
	for range 3 {
		conn, err := dial(target.String())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, conn)
	}
	if _, err := dial(target.String()); !errors.Is(err, errTooMany) {
		t.Errorf("a 4th connection with MaxConns 3: %v, want errTooMany", err)
	}
	open[0].Close()
	conn, err := dial(target.String())
	if err != nil {
		t.Fatalf("after closing one: %v", err)
	}
	open[0] = conn
	for _, c := range open {
		c.Close()
	}

	// The SOCKS proxy uses that dialer.
	socks, err := xproxy.SOCKS5("tcp", c.socksLn.Addr().String(), nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := socks.Dial("tcp", "web.default.svc.cluster.local:"+port)
	if err != nil {
		t.Fatalf("through the SOCKS proxy: %v", err)
	}
	echo(t, sc, "socks")
	sc.Close()

	cancel()
	if err := <-run; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	tr.Wait()
	checkNoEngineGoroutines(t)
	if _, err := c.DialContext(t.Context(), "tcp", target.String()); !errors.Is(err, errTunnelDown) {
		t.Errorf("dialing after Run returned: %v, want errTunnelDown", err)
	}
	if conn, err := net.Dial("tcp", c.socksLn.Addr().String()); err == nil {
		conn.Close()
		t.Error("the SOCKS listener is still open after Run returned")
	}
}
