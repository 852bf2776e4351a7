//go:build unix

package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/k8stunnel/k8stunnel/internal/leakcheck"
	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/mux/muxtest"
)

var (
	testClusterDNS = netip.MustParseAddr("10.96.0.53")
	testNodeDNS    = netip.MustParseAddr("10.200.0.1")
)

// fakeDNS is a DNS server with a fixed zone that records what it was asked.
type fakeDNS struct {
	addr    netip.AddrPort // UDP and TCP
	records map[string][]dns.RR

	mu    sync.Mutex
	asked []asked
}

type asked struct {
	name string
	id   uint16
	from netip.AddrPort
	tcp  bool
}

// startFakeDNS serves records on 127.0.0.1, over TCP only or over UDP and
// TCP on one port. Names it does not have are NXDOMAIN; names it has
// without the asked type are NOERROR with no answer.
func startFakeDNS(t *testing.T, withUDP bool, records ...string) *fakeDNS {
	t.Helper()
	f := &fakeDNS{records: make(map[string][]dns.RR)}
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			t.Fatal(err)
		}
		name := dns.CanonicalName(rr.Header().Name)
		f.records[name] = append(f.records[name], rr)
	}
	tl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f.addr = tl.Addr().(*net.TCPAddr).AddrPort()
	servers := []*dns.Server{{Listener: tl, Handler: f}}
	if withUDP {
		ul, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(f.addr))
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, &dns.Server{PacketConn: ul, Handler: f})
	}
	for _, s := range servers {
		up := make(chan struct{})
		s.NotifyStartedFunc = func() { close(up) }
		go s.ActivateAndServe()
		<-up
		t.Cleanup(func() { s.Shutdown() })
	}
	return f
}

func (f *fakeDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	from, _ := netip.ParseAddrPort(w.RemoteAddr().String())
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	f.mu.Lock()
	f.asked = append(f.asked, asked{name: dns.CanonicalName(q.Name), id: req.Id, from: from, tcp: tcp})
	f.mu.Unlock()

	resp := new(dns.Msg).SetReply(req)
	resp.RecursionAvailable = true
	rrs, ok := f.records[dns.CanonicalName(q.Name)]
	if !ok {
		resp.Rcode = dns.RcodeNameError
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype {
			rr = dns.Copy(rr)
			rr.Header().Name = q.Name
			resp.Answer = append(resp.Answer, rr)
		}
	}
	if !tcp {
		resp.Truncate(dns.MinMsgSize)
	}
	w.WriteMsg(resp)
}

func (f *fakeDNS) log() []asked {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked)
}

func (f *fakeDNS) names() []string {
	var names []string
	for _, a := range f.log() {
		names = append(names, a.name)
	}
	return names
}

// tunnel is a real mux session pair standing in for the SSH link and the
// helper: its server end "dials from the node" by mapping the cluster's
// addresses to fake servers on loopback, answers StatusOK and relays.
type tunnel struct {
	routes  map[netip.AddrPort]netip.AddrPort
	client  *mux.Session
	release chan struct{} // closed at cleanup: stalled streams end

	mu    sync.Mutex
	dials []netip.AddrPort
	stall bool // new streams are accepted, then never read nor answered
}

func startTunnel(t *testing.T, routes map[netip.AddrPort]netip.AddrPort) *tunnel {
	t.Helper()
	client, server := muxtest.Pair(t)
	tn := &tunnel{routes: routes, client: client, release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		server.Serve(ctx, tn.serve)
	}()
	t.Cleanup(func() {
		cancel()
		close(tn.release)
		client.Close()
		server.Close()
		<-served
	})
	return tn
}

// serve is the helper's side of one stream.
func (tn *tunnel) serve(req mux.Request, st *mux.Stream) {
	tn.mu.Lock()
	stall := tn.stall
	tn.mu.Unlock()
	if stall {
		// A node that took the connection and went quiet: not even the
		// proxy's FIN gets an answer.
		st.WriteStatus(mux.StatusOK)
		<-tn.release
		st.Abort()
		st.Close()
		return
	}
	to, ok := tn.routes[req.Dst]
	if !ok {
		st.WriteStatus(mux.StatusUnreachable)
		st.Close()
		return
	}
	c, err := net.Dial("tcp", to.String())
	if err != nil {
		st.WriteStatus(mux.StatusRefused)
		st.Close()
		return
	}
	st.WriteStatus(mux.StatusOK)
	mux.Relay(mux.NetConn(c), st)
}

// dial is the proxy's Config.Dial: a stream on the client session.
func (tn *tunnel) dial(_ context.Context, dst netip.AddrPort) (net.Conn, error) {
	tn.mu.Lock()
	tn.dials = append(tn.dials, dst)
	tn.mu.Unlock()
	return tn.client.Dial(dst)
}

func (tn *tunnel) setStall(on bool) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	tn.stall = on
}

// down ends the session, as a lost SSH connection does.
func (tn *tunnel) down() { tn.client.Close() }

func (tn *tunnel) dialed() []netip.AddrPort {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return slices.Clone(tn.dials)
}

// noDial is a Dial for proxies that must never use it.
func noDial(context.Context, netip.AddrPort) (net.Conn, error) {
	return nil, errors.New("no tunnel in this test")
}

// bigRecords are enough A records not to fit a 512-byte UDP answer.
func bigRecords(name string) []string {
	var rs []string
	for i := 1; i <= 60; i++ {
		rs = append(rs, fmt.Sprintf("%s 30 IN A 10.1.0.%d", name, i))
	}
	return rs
}

type proxyFixture struct {
	proxy    *Proxy
	cluster  *fakeDNS
	upstream *fakeDNS
	node     *fakeDNS
	tunnel   *tunnel
}

// startProxy runs a proxy on 127.0.0.1 for the fake cluster, node and
// laptop resolvers; before, if given, changes the proxy before it runs.
func startProxy(t *testing.T, cfg Config, before ...func(*Proxy)) *proxyFixture {
	t.Helper()
	fx := &proxyFixture{
		cluster: startFakeDNS(t, false, append(bigRecords("big.default.svc.cluster.local."),
			"web.default.svc.cluster.local. 30 IN A 10.96.0.10",
			"api.other.svc.cluster.local. 30 IN A 10.96.0.20")...),
		upstream: startFakeDNS(t, true, append(bigRecords("big.example.test."),
			"example.test. 300 IN A 192.0.2.7")...),
		node: startFakeDNS(t, false, "example.test. 300 IN A 198.51.100.7"),
	}
	fx.tunnel = startTunnel(t, map[netip.AddrPort]netip.AddrPort{
		netip.AddrPortFrom(testClusterDNS, 53): fx.cluster.addr,
		netip.AddrPortFrom(testNodeDNS, 53):    fx.node.addr,
	})
	cfg.ClusterDNS = testClusterDNS
	cfg.Listen = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	if cfg.Upstreams == nil {
		cfg.Upstreams = []netip.AddrPort{fx.upstream.addr}
	}
	cfg.Dial = fx.tunnel.dial
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fx.proxy = p
	for _, f := range before {
		f(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		checkNoProxyGoroutines(t)
	})
	return fx
}

// checkNoProxyGoroutines fails when a goroutine of the proxy outlives Run.
func checkNoProxyGoroutines(t *testing.T) {
	t.Helper()
	leakcheck.None(t, 2*time.Second, "after Run returned", "dnsproxy.(*Proxy)", "dnsproxy.(*upstream)", "dnsproxy.(*dnsStream)")
}

// ask queries the proxy over net ("udp" or "tcp").
func (fx *proxyFixture) ask(t *testing.T, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 10 * time.Second}
	m := new(dns.Msg).SetQuestion(name, qtype)
	resp, _, err := c.Exchange(m, fmt.Sprintf("127.0.0.1:%d", fx.proxy.Port()))
	if err != nil {
		t.Fatalf("asking the proxy for %s over %s: %v", name, network, err)
	}
	return resp
}

// answers renders the answer section compactly: "CNAME x." or "A 1.2.3.4".
func answers(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.Hdr.Name+" A "+rr.A.String())
		case *dns.CNAME:
			out = append(out, rr.Hdr.Name+" CNAME "+rr.Target)
		default:
			out = append(out, rr.String())
		}
	}
	return out
}

func TestProxySplit(t *testing.T) {
	fx := startProxy(t, Config{})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			resp := fx.ask(t, network, "web.default.svc.cluster.local.", dns.TypeA)
			if got, want := answers(resp), []string{"web.default.svc.cluster.local. A 10.96.0.10"}; !slices.Equal(got, want) {
				t.Errorf("cluster name: answers %q, want %q", got, want)
			}
			resp = fx.ask(t, network, "Example.Test.", dns.TypeA)
			if got, want := answers(resp), []string{"Example.Test. A 192.0.2.7"}; !slices.Equal(got, want) {
				t.Errorf("other name: answers %q, want %q (from the laptop's resolver)", got, want)
			}
			resp = fx.ask(t, network, "missing.default.svc.cluster.local.", dns.TypeA)
			if resp.Rcode != dns.RcodeNameError {
				t.Errorf("missing cluster name: rcode %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
			}
		})
	}
	if got := fx.cluster.names(); slices.Contains(got, "example.test.") {
		t.Errorf("the cluster DNS was asked for a name outside the cluster domain: %q", got)
	}
	if got := fx.upstream.names(); slices.ContainsFunc(got, func(n string) bool { return strings.HasSuffix(n, "cluster.local.") }) {
		t.Errorf("the laptop's resolver was asked for a cluster name: %q", got)
	}
	for _, d := range fx.tunnel.dialed() {
		if d != netip.AddrPortFrom(testClusterDNS, 53) {
			t.Errorf("dialled %v through the tunnel, want only the cluster DNS", d)
		}
	}
	if up := fx.upstream.log(); len(up) != 2 || up[0].tcp || !up[1].tcp {
		t.Errorf("the laptop's resolver saw %+v, want one UDP and then one TCP query, as the client asked", up)
	}
}

// TestProxyUpstreamRandomises: like a stub resolver, the proxy asks the
// laptop's resolver each time from a fresh socket, so a blind spoofer must
// guess a random port as well as a random ID; one fixed port let one win in
// about a second. Each socket is marked before it is connected, so the
// firewall lets every packet of it through.
func TestProxyUpstreamRandomises(t *testing.T) {
	const n = 20
	var mu sync.Mutex
	var marked, connected int
	mark := func(_ context.Context, fd int) error {
		mu.Lock()
		defer mu.Unlock()
		marked++
		if _, err := syscall.Getpeername(fd); err == nil {
			connected++
		}
		return nil
	}
	fx := startProxy(t, Config{MarkSocket: mark})
	for _, network := range []string{"udp", "tcp"} {
		before := len(fx.upstream.log())
		for range n {
			// The client's ID is always the same; the proxy's must not be.
			m := new(dns.Msg).SetQuestion("example.test.", dns.TypeA)
			m.Id = 0x1234
			resp, _, err := (&dns.Client{Net: network, Timeout: 10 * time.Second}).Exchange(m, fmt.Sprintf("127.0.0.1:%d", fx.proxy.Port()))
			if err != nil || resp.Id != 0x1234 || len(resp.Answer) != 1 {
				t.Fatalf("over %s: %v, %v; want an answer with the client's ID 0x1234", network, resp, err)
			}
		}
		ports, ids := map[uint16]bool{}, map[uint16]bool{}
		for _, a := range fx.upstream.log()[before:] {
			ports[a.from.Port()] = true
			ids[a.id] = true
		}
		t.Logf("%d queries over %s to the laptop's resolver: %d source ports, %d IDs", n, network, len(ports), len(ids))
		if len(ports) < n-2 || len(ids) < n-2 {
			t.Errorf("%d queries over %s came from %d source ports with %d IDs, want at least %d of each", n, network, len(ports), len(ids), n-2)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if marked != 2*n || connected != 0 {
		t.Errorf("MarkSocket called %d times (%d on connected sockets), want %d, each before connect", marked, connected, 2*n)
	}
}

// A socket that cannot be marked would be captured again: the query fails
// rather than go out unmarked.
func TestProxyUpstreamMarkFails(t *testing.T) {
	fx := startProxy(t, Config{MarkSocket: func(context.Context, int) error { return errors.New("no helper") }})
	for _, network := range []string{"udp", "tcp"} {
		if resp := fx.ask(t, network, "example.test.", dns.TypeA); resp.Rcode != dns.RcodeServerFailure {
			t.Errorf("over %s: rcode %s, want SERVFAIL", network, dns.RcodeToString[resp.Rcode])
		}
	}
	if n := len(fx.upstream.log()); n != 0 {
		t.Errorf("the laptop's resolver got %d unmarked queries", n)
	}
}

// Answers with another ID or to another question are dropped; the real one
// that follows them is taken.
func TestProxyUpstreamDropsForgeries(t *testing.T) {
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	go func() {
		buf := make([]byte, dns.MaxMsgSize)
		for {
			n, from, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			req := new(dns.Msg)
			if req.Unpack(buf[:n]) != nil {
				continue
			}
			reply := func(id uint16, name, a string) {
				m := new(dns.Msg).SetReply(req)
				m.Id = id
				m.Question[0].Name = name
				rr, _ := dns.NewRR(name + " 30 IN A " + a)
				m.Answer = []dns.RR{rr}
				b, _ := m.Pack()
				u.WriteToUDPAddrPort(b, from)
			}
			q := req.Question[0].Name
			u.WriteToUDPAddrPort([]byte{1, 2, 3}, from)
			reply(req.Id+1, q, "203.0.113.1")
			reply(req.Id, "other.test.", "203.0.113.2")
			reply(req.Id, q, "192.0.2.7")
		}
	}()
	fx := startProxy(t, Config{Upstreams: []netip.AddrPort{u.LocalAddr().(*net.UDPAddr).AddrPort()}})
	resp := fx.ask(t, "udp", "example.test.", dns.TypeA)
	if got, want := answers(resp), []string{"example.test. A 192.0.2.7"}; !slices.Equal(got, want) {
		t.Errorf("answers %q, want %q: the forgeries before it must be dropped", got, want)
	}
}

func TestProxyString(t *testing.T) {
	fx := startProxy(t, Config{Search: []string{"default"}})
	want := fmt.Sprintf("cluster.local via 10.96.0.53, search default, others via %v", fx.upstream.addr)
	if got := fx.proxy.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestProxyReusesStreams(t *testing.T) {
	fx := startProxy(t, Config{})
	for range 5 {
		fx.ask(t, "udp", "web.default.svc.cluster.local.", dns.TypeA)
	}
	if n := len(fx.tunnel.dialed()); n != 1 {
		t.Errorf("5 queries in a row opened %d streams, want 1", n)
	}
}

func TestProxyRetriesClosedStream(t *testing.T) {
	fx := startProxy(t, Config{})
	fx.ask(t, "udp", "web.default.svc.cluster.local.", dns.TypeA)
	// The answer can reach us before the proxy has put its stream back in
	// the idle list: wait for it there, or the stream below is not closed.
	idle := func() int {
		fx.proxy.streams.mu.Lock()
		defer fx.proxy.streams.mu.Unlock()
		n := 0
		for _, list := range fx.proxy.streams.idle {
			n += len(list)
		}
		return n
	}
	for deadline := time.Now().Add(5 * time.Second); idle() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first query's stream never went back to the idle list")
		}
	}
	// The server (or a reconnect) ends the idle stream.
	fx.proxy.streams.mu.Lock()
	for _, list := range fx.proxy.streams.idle {
		for _, s := range list {
			s.conn.Close()
		}
	}
	fx.proxy.streams.mu.Unlock()
	resp := fx.ask(t, "udp", "web.default.svc.cluster.local.", dns.TypeA)
	if len(resp.Answer) != 1 || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("after the idle stream died: %v", resp)
	}
	if n := len(fx.tunnel.dialed()); n != 2 {
		t.Errorf("opened %d streams, want 2 (the first, then a fresh one)", n)
	}
}

func TestProxyTruncation(t *testing.T) {
	fx := startProxy(t, Config{})
	for _, name := range []string{"big.default.svc.cluster.local.", "big.example.test."} {
		t.Run(name, func(t *testing.T) {
			resp := fx.ask(t, "udp", name, dns.TypeA)
			if !resp.Truncated || len(resp.Answer) >= 60 {
				t.Errorf("over UDP: TC=%v with %d answers, want TC and fewer than 60", resp.Truncated, len(resp.Answer))
			}
			resp.Compress = true // as it was on the wire
			if n := resp.Len(); n > dns.MinMsgSize {
				t.Errorf("over UDP without EDNS: %d bytes, want at most %d", n, dns.MinMsgSize)
			}
			resp = fx.ask(t, "tcp", name, dns.TypeA)
			if resp.Truncated || len(resp.Answer) != 60 {
				t.Errorf("over TCP: TC=%v with %d answers, want all 60", resp.Truncated, len(resp.Answer))
			}
		})
	}
	// A client with a large EDNS buffer gets everything over UDP.
	m := new(dns.Msg).SetQuestion("big.default.svc.cluster.local.", dns.TypeA).SetEdns0(4096, false)
	resp, _, err := (&dns.Client{Net: "udp", UDPSize: 4096}).Exchange(m, fmt.Sprintf("127.0.0.1:%d", fx.proxy.Port()))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Truncated || len(resp.Answer) != 60 {
		t.Errorf("over UDP with EDNS 4096: TC=%v with %d answers, want all 60", resp.Truncated, len(resp.Answer))
	}
}

func TestProxySearch(t *testing.T) {
	fx := startProxy(t, Config{Search: []string{"default"}})
	tests := []struct {
		name  string
		qtype uint16
		want  []string
		rcode int
		// cluster are the names the cluster DNS must have been asked, in order.
		cluster []string
	}{
		{"web.", dns.TypeA, []string{"web. CNAME web.default.svc.cluster.local.", "web.default.svc.cluster.local. A 10.96.0.10"},
			dns.RcodeSuccess, []string{"web.default.svc.cluster.local."}},
		// The name exists but has no AAAA: the alias alone, so a client asking A and AAAA gets a consistent picture.
		{"web.", dns.TypeAAAA, []string{"web. CNAME web.default.svc.cluster.local."}, dns.RcodeSuccess,
			[]string{"web.default.svc.cluster.local."}},
		{"api.other.", dns.TypeA, []string{"api.other. CNAME api.other.svc.cluster.local.", "api.other.svc.cluster.local. A 10.96.0.20"},
			dns.RcodeSuccess, []string{"api.other.svc.cluster.local."}},
		// A dotted name the laptop's resolver knows never reaches the cluster.
		{"example.test.", dns.TypeA, []string{"example.test. A 192.0.2.7"}, dns.RcodeSuccess, nil},
		{"nothere.", dns.TypeA, nil, dns.RcodeNameError, []string{"nothere.default.svc.cluster.local."}},
		{"no.where.", dns.TypeA, nil, dns.RcodeNameError, []string{"no.where.svc.cluster.local."}},
		// Three labels are never expanded.
		{"a.b.c.", dns.TypeA, nil, dns.RcodeNameError, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name+dns.Type(tt.qtype).String(), func(t *testing.T) {
			before := len(fx.cluster.log())
			resp := fx.ask(t, "udp", tt.name, tt.qtype)
			if got := answers(resp); !slices.Equal(got, tt.want) || resp.Rcode != tt.rcode {
				t.Errorf("answers %q rcode %s, want %q rcode %s", got, dns.RcodeToString[resp.Rcode], tt.want, dns.RcodeToString[tt.rcode])
			}
			if got := fx.cluster.names()[before:]; !slices.Equal(got, tt.cluster) {
				t.Errorf("the cluster DNS was asked %q, want %q", got, tt.cluster)
			}
		})
	}
}

func TestProxyAll(t *testing.T) {
	fx := startProxy(t, Config{All: true, NodeDNS: []netip.Addr{testNodeDNS}})
	resp := fx.ask(t, "udp", "example.test.", dns.TypeA)
	if got, want := answers(resp), []string{"example.test. A 198.51.100.7"}; !slices.Equal(got, want) {
		t.Errorf("answers %q, want %q from the node's resolver", got, want)
	}
	resp = fx.ask(t, "udp", "web.default.svc.cluster.local.", dns.TypeA)
	if len(resp.Answer) != 1 {
		t.Errorf("cluster name with All: %v", resp)
	}
	if n := len(fx.upstream.log()); n != 0 {
		t.Errorf("the laptop's resolver got %d queries with All, want 0", n)
	}
}

func TestProxyTunnelDown(t *testing.T) {
	fx := startProxy(t, Config{})
	// A stream left idle by an earlier query dies with the session too.
	fx.ask(t, "tcp", "web.default.svc.cluster.local.", dns.TypeA)
	fx.tunnel.down()
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			start := time.Now()
			resp := fx.ask(t, network, "web.default.svc.cluster.local.", dns.TypeA)
			if resp.Rcode != dns.RcodeServerFailure {
				t.Errorf("rcode %s, want SERVFAIL while the tunnel is down", dns.RcodeToString[resp.Rcode])
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("SERVFAIL took %v, want it at once", d)
			}
			// The laptop's own DNS keeps working.
			if resp := fx.ask(t, network, "example.test.", dns.TypeA); len(resp.Answer) != 1 {
				t.Errorf("other name while the tunnel is down: %v", resp)
			}
		})
	}
	// What `k8stunnel status` shows: every answer counted, SERVFAILs apart.
	if q, f := fx.proxy.Stats(); q != 5 || f != 2 {
		t.Errorf("Stats = %d queries, %d failures; want 5 and 2", q, f)
	}
}

func TestProxyGivesUpSlowStream(t *testing.T) {
	// The stream to the cluster DNS goes quiet: the search attempt times
	// out, the stream is given up, and the name goes to the laptop's
	// resolver as usual.
	const attempt = 200 * time.Millisecond
	fx := startProxy(t, Config{Search: []string{"default"}}, func(p *Proxy) { p.attempt = attempt })
	fx.tunnel.setStall(true)
	start := time.Now()
	resp := fx.ask(t, "udp", "slow.", dns.TypeA)
	if resp.Rcode != dns.RcodeNameError {
		t.Errorf("rcode %s, want NXDOMAIN from the laptop's resolver", dns.RcodeToString[resp.Rcode])
	}
	if d := time.Since(start); d > attempt+time.Second {
		t.Errorf("took %v, want about %v (one attempt timeout)", d, attempt)
	}
	// The hung stream is not reused: the next cluster query gets a new one.
	fx.tunnel.setStall(false)
	if resp := fx.ask(t, "udp", "web.default.svc.cluster.local.", dns.TypeA); len(resp.Answer) != 1 {
		t.Errorf("cluster name after a hung query: %v", resp)
	}
	if n := len(fx.tunnel.dialed()); n != 2 {
		t.Errorf("opened %d streams, want 2 (the hung one, then a fresh one)", n)
	}
}

func TestProxyUpstreamFailover(t *testing.T) {
	// Nothing answers on the first resolver's port: the second one must.
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	up := startFakeDNS(t, true, "example.test. 300 IN A 192.0.2.7")
	const attempt = 200 * time.Millisecond
	fx := startProxy(t, Config{Upstreams: []netip.AddrPort{deadAddr, up.addr}}, func(p *Proxy) { p.attempt = attempt })
	start := time.Now()
	resp := fx.ask(t, "udp", "example.test.", dns.TypeA)
	if len(resp.Answer) != 1 {
		t.Fatalf("answers %q, want the second resolver's", answers(resp))
	}
	if d := time.Since(start); d < attempt || d > attempt+time.Second {
		t.Errorf("took %v, want about %v (one attempt timeout)", d, attempt)
	}
}

func TestNewErrors(t *testing.T) {
	up := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	missing := filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no dial", Config{ClusterDNS: testClusterDNS, Upstreams: up, Listen: lo}, "no dialer"},
		{"no cluster dns", Config{Dial: noDial, Upstreams: up, Listen: lo}, "--cluster-dns"},
		{"bad domain", Config{Dial: noDial, ClusterDNS: testClusterDNS, ClusterDomain: "a..b", Upstreams: up, Listen: lo}, "bad cluster domain"},
		{"bad search", Config{Dial: noDial, ClusterDNS: testClusterDNS, Search: []string{"corp.example.com"}, Upstreams: up, Listen: lo}, "want a namespace"},
		{"no resolv.conf", Config{Dial: noDial, ClusterDNS: testClusterDNS, ResolvConf: missing, Listen: lo}, "reading the laptop's resolvers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg)
			if err == nil {
				p.Close()
				t.Fatalf("no error, want one mentioning %q", tt.want)
			}
			msg := err.Error()
			var h interface{ Hint() string }
			if errors.As(err, &h) {
				msg += "\nhint: " + h.Hint()
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q, want it to mention %q", msg, tt.want)
			}
		})
	}
}

func TestSearchSuffix(t *testing.T) {
	for in, want := range map[string]string{
		"default":                   "default.svc.cluster.local.",
		"My-NS":                     "my-ns.svc.cluster.local.",
		"default.svc.cluster.local": "default.svc.cluster.local.",
	} {
		got, err := searchSuffix(in, "cluster.local.")
		if err != nil || got != want {
			t.Errorf("searchSuffix(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestProxyLifecycle(t *testing.T) {
	cfg := Config{ClusterDNS: testClusterDNS, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")},
		Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Dial: noDial}

	// Close without Run frees the ports.
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	port := p.Port()
	if port == 0 {
		t.Fatal("port 0, want one picked")
	}
	p.Close()
	p.Close()
	if err := p.Run(context.Background()); err != nil {
		t.Errorf("Run after Close: %v", err)
	}
	c2 := cfg
	c2.Port = port
	p2, err := New(c2)
	if err != nil {
		t.Fatalf("ports not freed by Close: %v", err)
	}

	// Close stops Run.
	done := make(chan error, 1)
	go func() { done <- p2.Run(context.Background()) }()
	p2.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still running 5s after Close")
	}
}

func TestNewReadsResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("nameserver 127.0.0.53\nnameserver 192.168.1.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{ClusterDNS: testClusterDNS, ResolvConf: path, Dial: noDial,
		Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("192.168.1.1:53")}
	if got := p.Resolvers(); !slices.Equal(got, want) {
		t.Errorf("Resolvers() = %v, want %v from %s", got, want, path)
	}
	if cfg.Upstreams != nil {
		t.Errorf("New changed the caller's config: Upstreams %v", cfg.Upstreams)
	}
}

func TestReadResolvConf(t *testing.T) {
	tests := []struct {
		name, text string
		servers    []string
		search     []string
	}{
		{"stub", "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n",
			[]string{"127.0.0.53:53"}, []string{"corp.example"}},
		{"several", "nameserver 192.168.1.1\nnameserver ::1\nnameserver 192.168.1.1\nnameserver not-an-ip\n",
			[]string{"192.168.1.1:53", "[::1]:53"}, nil},
		{"none means localhost", "search lan\n", []string{"127.0.0.1:53"}, []string{"lan"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			servers, search, err := ReadResolvConf(path)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range servers {
				got = append(got, s.String())
			}
			if !slices.Equal(got, tt.servers) || !slices.Equal(search, tt.search) {
				t.Errorf("got %q search %q, want %q search %q", got, search, tt.servers, tt.search)
			}
		})
	}
	if _, _, err := ReadResolvConf(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("no error for a missing file")
	}
}

func TestProxyListenRetry(t *testing.T) {
	// A port free for UDP but taken for TCP fails one attempt; the next
	// attempt must start clean, with nothing of the failed one closed twice
	// or left closed.
	lo := netip.MustParseAddr("127.0.0.1")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := uint16(l.Addr().(*net.TCPAddr).Port)
	p := &Proxy{}
	if err := p.listenOn([]netip.Addr{lo}, taken, false); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("port %d taken for TCP: err %v, want EADDRINUSE", taken, err)
	}
	if len(p.udpLns) != 0 || len(p.tcpLns) != 0 {
		t.Fatalf("failed attempt left sockets: %d udp, %d tcp", len(p.udpLns), len(p.tcpLns))
	}
	// Port 0 takes a random free UDP port that can still be taken for TCP;
	// New retries that, and so does this test.
	for attempt := 0; ; attempt++ {
		err := p.listenOn([]netip.Addr{lo}, 0, false)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == 10 {
			t.Fatal(err)
		}
	}
	if p.streams.closed {
		t.Error("a failed attempt closed the stream pool")
	}
	p.closeAll()
	if _, _, err := p.udpLns[0].ReadFrom(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("closeAll left the socket of the second attempt open: %v", err)
	}
}

// rawExchange sends b to the proxy over network and returns the answer.
func (fx *proxyFixture) rawExchange(t *testing.T, network string, b []byte) *dns.Msg {
	t.Helper()
	c, err := net.Dial(network, fmt.Sprintf("127.0.0.1:%d", fx.proxy.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	co := &dns.Conn{Conn: c}
	if _, err := co.Write(b); err != nil {
		t.Fatal(err)
	}
	m, err := co.ReadMsg()
	if err != nil {
		t.Fatalf("no answer over %s to % x: %v", network, b, err)
	}
	return m
}

// A header that promises a question and carries none once crashed the
// client; it, and other malformed queries, get a resolver's answer, and the
// proxy goes on serving.
func TestProxyMalformedQueries(t *testing.T) {
	fx := startProxy(t, Config{})
	notify := new(dns.Msg).SetQuestion("web.default.svc.cluster.local.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	notifyBytes, err := notify.Pack()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		b     []byte
		rcode int
	}{
		{"no question", []byte{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0}, dns.RcodeFormatError},
		{"notify", notifyBytes, dns.RcodeNotImplemented},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(tt.name+" over "+network, func(t *testing.T) {
				m := fx.rawExchange(t, network, tt.b)
				if m.Rcode != tt.rcode || m.Id != binary.BigEndian.Uint16(tt.b) {
					t.Errorf("answer rcode %s id %#x, want %s id %#x", dns.RcodeToString[m.Rcode], m.Id,
						dns.RcodeToString[tt.rcode], binary.BigEndian.Uint16(tt.b))
				}
				if got := answers(fx.ask(t, network, "web.default.svc.cluster.local.", dns.TypeA)); !slices.Equal(got, []string{"web.default.svc.cluster.local. A 10.96.0.10"}) {
					t.Errorf("after it, a good query got %v", got)
				}
			})
		}
	}
}

// FuzzProxyQuery sends arbitrary bytes to the proxy: whatever comes, it must
// not crash, and a good query right after must still be answered.
func FuzzProxyQuery(f *testing.F) {
	f.Add([]byte{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0})
	for _, name := range []string{"web.default.svc.cluster.local.", "example.test.", "web."} {
		b, _ := new(dns.Msg).SetQuestion(name, dns.TypeA).Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fx := startProxy(t, Config{Search: []string{"default"}})
		for _, network := range []string{"udp", "tcp"} {
			c, err := net.Dial(network, fmt.Sprintf("127.0.0.1:%d", fx.proxy.Port()))
			if err != nil {
				t.Fatal(err)
			}
			co := &dns.Conn{Conn: c}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := co.Write(b); err == nil {
				// An answer or none (junk is dropped): both are fine.
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				co.ReadMsg()
			}
			c.Close()
			if got := answers(fx.ask(t, network, "web.default.svc.cluster.local.", dns.TypeA)); !slices.Equal(got, []string{"web.default.svc.cluster.local. A 10.96.0.10"}) {
				t.Fatalf("after % x over %s, a good query got %v", b, network, got)
			}
		}
	})
}
