// Package dnsproxy is k8stunnel's split DNS: a resolver on the laptop that
// sends cluster names through the tunnel and everything else where it went
// before. It lives apart from the tunnel engine because all it needs of it is
// a way to open a TCP connection from the node (Config.Dial).
//
// The proxy answers the queries the firewall captures on their way to the
// laptop's resolvers:
//
//   - names under the cluster domain go to the cluster DNS service, over TCP
//     on a tunnel stream that the helper dials from the node;
//   - everything else goes unchanged to the laptop's own resolvers, each
//     query from a fresh socket with a random port and ID, marked (MarkSocket)
//     so that the firewall's DNS rules let it through; with All it goes to the
//     node's resolvers through the tunnel instead;
//   - with Search, short names work: a one-label name is first asked of the
//     cluster DNS as NAME.NS.svc.DOMAIN for each search namespace, and a
//     two-label name (svc.ns) whose normal answer is a failure as
//     NAME.svc.DOMAIN. That mirrors what glibc does with a search line and the
//     default ndots:1 (dotless names try the search list first, dotted names
//     last), but leaves no resolv.conf to restore: a hit is answered with a
//     CNAME from the asked name to the cluster name, followed by its records.
//
// Nothing on the laptop is changed but the firewall rules, which the
// privileged helper removes even when the client is killed.
package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// DefaultClusterDomain is Kubernetes' default DNS domain.
const DefaultClusterDomain = "cluster.local"

const (
	// queryTimeout bounds one client query; glibc gives a server 5 s.
	queryTimeout = 5 * time.Second
	// attemptTimeout bounds one server when another could be tried after it.
	attemptTimeout = 2 * time.Second
	// maxIdleStreams is how many idle tunnel streams are kept per server for
	// the next queries (DNS over TCP carries many queries on one connection).
	maxIdleStreams = 4
	// maxStreamIdle drops idle streams before servers time them out (CoreDNS
	// closes idle TCP connections after a few seconds).
	maxStreamIdle = 5 * time.Second
	// searchTTL caps the TTL of the CNAME a short name is answered with.
	searchTTL = 5
	// portAttempts is how often a free port is looked for when the first
	// one picked for UDP is taken for TCP.
	portAttempts = 20
)

// Errors of New.
var (
	ErrNoDialer     = errors.New("dns proxy: no dialer")
	ErrNoClusterDNS = errors.New("no cluster DNS IP")
)

// hintError is an error the user can fix; Hint says how. Callers find it
// with errors.As and an interface{ Hint() string }, which keeps this package
// free of the CLI's error type.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }
func (e *hintError) Hint() string  { return e.hint }

// Config describes the DNS proxy.
type Config struct {
	// ClusterDomain is the cluster's DNS domain; "" means DefaultClusterDomain.
	ClusterDomain string
	// ClusterDNS is the cluster DNS service IP (kube-dns); required.
	ClusterDNS netip.Addr
	// NodeDNS are the node's resolvers, used with All. When none is known,
	// All sends everything to ClusterDNS, which forwards to them anyway.
	NodeDNS []netip.Addr
	// All sends names outside the cluster domain through the tunnel too.
	All bool
	// Search makes short names resolve: each entry is a namespace ("default")
	// or a domain under the cluster domain ("default.svc.cluster.local").
	Search []string
	// Upstreams are the laptop's resolvers: what the firewall captures
	// (Resolvers), and where names outside the cluster domain go unless All
	// is set. Empty means the nameservers of ResolvConf, read by New, so
	// they are those of when the tunnel starts.
	Upstreams []netip.AddrPort
	// ResolvConf is the laptop's resolv.conf; "" means ResolvConfPath.
	ResolvConf string
	// Listen are the addresses to serve on; empty means 127.0.0.1 and ::1
	// (when this host has IPv6), where REDIRECT sends the host's own packets.
	Listen []netip.Addr
	// Port to serve on, UDP and TCP; 0 picks a free one (see Proxy.Port).
	Port uint16
	// MarkSocket marks a socket for a query to Upstreams, before it is
	// connected, so the firewall's DNS rules do not capture the query (see
	// firewall.DNSMark); nil leaves the sockets unmarked, for tests with no
	// capture rules.
	MarkSocket func(ctx context.Context, fd int) error
	// DialUpstream, when set, connects to one of Upstreams instead of a
	// marking dialer: for a test that runs the proxy in another network
	// namespace. Like the default, it must make a fresh socket each time.
	DialUpstream func(ctx context.Context, network, addr string) (net.Conn, error)
	// Dial opens a TCP connection from the node to dst through the tunnel;
	// required. Close must release the connection, and a deadline in the
	// past must interrupt a Read or Write in progress: that is how a query
	// that timed out gives up its stream.
	Dial func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	Log  *slog.Logger
}

// Proxy is the DNS server the firewall sends captured queries to.
type Proxy struct {
	cfg        Config
	log        *slog.Logger
	domain     string   // the cluster domain, lower case, fully qualified
	suffixes   []string // what one-label names are tried under
	clusterDNS netip.AddrPort
	nodeDNS    []netip.AddrPort
	dial       func(context.Context, netip.AddrPort) (net.Conn, error)
	// attempt is attemptTimeout; a field so tests can shorten it.
	attempt time.Duration

	port     uint16
	udpLns   []*net.UDPConn
	tcpLns   []*net.TCPListener
	upstream *upstream
	streams  streamPool

	mu      sync.Mutex
	running bool
	closed  bool
	done    chan struct{} // closed by Close

	closeSockets sync.Once

	// queries and failures count answers, for `k8stunnel status`.
	queries, failures atomic.Int64
}

// Stats is how many queries were answered, and how many of those with
// SERVFAIL because no server answered.
func (p *Proxy) Stats() (queries, failures int64) { return p.queries.Load(), p.failures.Load() }

// New validates cfg and binds the proxy's sockets, so Port is known before
// the firewall rules are installed. Queries are answered once Run is called.
func New(cfg Config) (*Proxy, error) {
	if cfg.Dial == nil {
		return nil, ErrNoDialer
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if !cfg.ClusterDNS.IsValid() {
		return nil, &hintError{
			err:  fmt.Errorf("%w: none given and none found on the node", ErrNoClusterDNS),
			hint: "pass it: --cluster-dns $(kubectl -n kube-system get service kube-dns -o jsonpath='{.spec.clusterIP}')",
		}
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = DefaultClusterDomain
	}
	domain := dns.CanonicalName(cfg.ClusterDomain)
	if _, ok := dns.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("bad cluster domain %q: want a DNS name such as %s", cfg.ClusterDomain, DefaultClusterDomain)
	}
	if len(cfg.Upstreams) == 0 {
		if cfg.ResolvConf == "" {
			cfg.ResolvConf = ResolvConfPath
		}
		servers, _, err := ReadResolvConf(cfg.ResolvConf)
		if err != nil {
			return nil, err
		}
		cfg.Upstreams = servers
	}
	p := &Proxy{
		cfg:        cfg,
		log:        cfg.Log,
		domain:     domain,
		clusterDNS: netip.AddrPortFrom(cfg.ClusterDNS.Unmap(), 53),
		dial:       cfg.Dial,
		attempt:    attemptTimeout,
		upstream:   newUpstream(cfg.MarkSocket, cfg.DialUpstream),
		done:       make(chan struct{}),
	}
	for _, s := range cfg.Search {
		suffix, err := searchSuffix(s, domain)
		if err != nil {
			return nil, err
		}
		p.suffixes = append(p.suffixes, suffix)
	}
	for _, a := range cfg.NodeDNS {
		p.nodeDNS = append(p.nodeDNS, netip.AddrPortFrom(a.Unmap(), 53))
	}
	if cfg.All && len(p.nodeDNS) == 0 {
		p.log.Info("the node's resolvers are unknown; every DNS query goes to the cluster DNS", "cluster_dns", p.clusterDNS.Addr())
		p.nodeDNS = []netip.AddrPort{p.clusterDNS}
	}
	if err := p.listen(); err != nil {
		return nil, err
	}
	return p, nil
}

// searchSuffix turns a --dns-search entry into the domain one-label names
// are tried under.
func searchSuffix(s, domain string) (string, error) {
	name := dns.CanonicalName(s)
	if _, ok := dns.IsDomainName(name); !ok || name == "." {
		return "", fmt.Errorf("bad search namespace %q", s)
	}
	switch {
	case dns.IsSubDomain(domain, name):
		return name, nil
	case dns.CountLabel(name) == 1:
		return name + "svc." + domain, nil
	}
	return "", fmt.Errorf("bad search namespace %q: want a namespace such as default, or a domain under %s", s, domain)
}

// Resolvers are the laptop's resolvers whose UDP and TCP traffic the firewall
// must redirect to Port: the firewall's DNS.
func (p *Proxy) Resolvers() []netip.AddrPort { return slices.Clone(p.cfg.Upstreams) }

// String says where names go, for the "tunnel ready" line, e.g.
// "cluster.local via 10.96.0.10, search default, others via 127.0.0.53:53".
func (p *Proxy) String() string {
	s := strings.TrimSuffix(p.domain, ".") + " via " + p.clusterDNS.Addr().String()
	if len(p.cfg.Search) > 0 {
		s += ", search " + strings.Join(p.cfg.Search, " ")
	}
	var others []string
	if p.cfg.All {
		for _, a := range p.nodeDNS {
			others = append(others, a.Addr().String())
		}
		return s + ", others via the node's " + strings.Join(others, " ")
	}
	for _, a := range p.cfg.Upstreams {
		others = append(others, a.String())
	}
	return s + ", others via " + strings.Join(others, " ")
}

// Port is where the proxy serves, UDP and TCP: the firewall's DNSPort.
func (p *Proxy) Port() uint16 { return p.port }

// listen binds UDP and TCP on every listen address, all on one port so one
// REDIRECT target serves both protocols and families.
func (p *Proxy) listen() error {
	addrs := p.cfg.Listen
	optional := len(addrs) == 0
	if optional {
		addrs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
	}
	for attempt := 1; ; attempt++ {
		err := p.listenOn(addrs, p.cfg.Port, optional)
		if err == nil || p.cfg.Port != 0 || !errors.Is(err, syscall.EADDRINUSE) || attempt == portAttempts {
			return err
		}
	}
}

func (p *Proxy) listenOn(addrs []netip.Addr, port uint16, optional bool) error {
	fail := func(err error) error {
		for _, u := range p.udpLns {
			u.Close()
		}
		for _, t := range p.tcpLns {
			t.Close()
		}
		p.udpLns, p.tcpLns = nil, nil
		return err
	}
	for _, a := range addrs {
		u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
		if err != nil {
			// A host without IPv6 has no ::1 to listen on, and needs none.
			if optional && a.Is6() && (errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT)) {
				continue
			}
			return fail(fmt.Errorf("listening for DNS on %v: %w", netip.AddrPortFrom(a, port), err))
		}
		p.udpLns = append(p.udpLns, u)
		if port == 0 {
			port = uint16(u.LocalAddr().(*net.UDPAddr).Port)
		}
		t, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
		if err != nil {
			return fail(fmt.Errorf("listening for DNS on %v/tcp: %w", netip.AddrPortFrom(a, port), err))
		}
		p.tcpLns = append(p.tcpLns, t)
	}
	p.port = port
	return nil
}

// closeAll closes every socket New opened.
func (p *Proxy) closeAll() {
	p.closeSockets.Do(func() {
		for _, u := range p.udpLns {
			u.Close()
		}
		for _, t := range p.tcpLns {
			t.Close()
		}
		p.streams.closeAll()
	})
}

// Run answers queries until ctx ends or Close is called, and returns once
// every socket is closed and every query in flight has been answered or
// abandoned.
func (p *Proxy) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.closed || p.running {
		p.mu.Unlock()
		return nil
	}
	p.running = true
	p.mu.Unlock()
	defer p.closeAll()

	base, cancel := context.WithCancel(ctx)
	defer cancel()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) { p.answer(base, w, req) })

	var servers []*dns.Server
	for _, u := range p.udpLns {
		// UDPSize is the read buffer for queries; the default 512 would cut
		// off a large EDNS query.
		servers = append(servers, &dns.Server{PacketConn: u, Handler: handler, UDPSize: dns.MaxMsgSize})
	}
	for _, t := range p.tcpLns {
		servers = append(servers, &dns.Server{Listener: t, Handler: handler})
	}
	exits := make(chan error, len(servers))
	var started []*dns.Server
	var runErr error
	for _, s := range servers {
		// Shutdown fails on a server that has not started yet, so each one is
		// known to be up before the next starts.
		up := make(chan struct{})
		s.NotifyStartedFunc = func() { close(up) }
		go func() { exits <- s.ActivateAndServe() }()
		select {
		case <-up:
			started = append(started, s)
		case err := <-exits:
			runErr = fmt.Errorf("serving DNS: %w", err)
		}
		if runErr != nil {
			break
		}
	}
	pending := len(started)
	if runErr == nil {
		p.log.Debug("dns proxy ready", "port", p.port)
		select {
		case <-ctx.Done():
		case <-p.done:
		case err := <-exits:
			pending--
			runErr = fmt.Errorf("serving DNS: %w", err)
		}
	}
	cancel()
	for _, s := range started {
		s.Shutdown()
	}
	for ; pending > 0; pending-- {
		<-exits
	}
	p.closeAll()
	return runErr
}

// Close stops Run, or releases the sockets when Run was never called. Safe
// to call twice.
func (p *Proxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	close(p.done)
	if !p.running {
		p.closeAll()
	}
	return nil
}

// answer serves one query. Failures become SERVFAIL, so the application
// gets an answer at once instead of waiting for its own timeout.
func (p *Proxy) answer(base context.Context, w dns.ResponseWriter, req *dns.Msg) {
	// miekg/dns checks the header's counts, not that the question is there:
	// a 12-byte header claiming one question arrives with none.
	switch {
	case len(req.Question) != 1:
		w.WriteMsg(new(dns.Msg).SetRcodeFormatError(req))
		return
	case req.Opcode != dns.OpcodeQuery:
		w.WriteMsg(new(dns.Msg).SetRcode(req, dns.RcodeNotImplemented))
		return
	}
	ctx, cancel := context.WithTimeout(base, queryTimeout)
	defer cancel()
	_, overUDP := w.LocalAddr().(*net.UDPAddr)
	proto := "tcp"
	if overUDP {
		proto = "udp"
	}
	q := req.Question[0]
	start := time.Now()
	resp, route, err := p.resolve(ctx, req, !overUDP)
	p.queries.Add(1)
	if err != nil {
		p.failures.Add(1)
		p.log.Debug("dns query failed", "name", q.Name, "type", dns.Type(q.Qtype), "proto", proto, "via", route, "err", err)
		resp = new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
	} else {
		p.log.Debug("dns", "name", q.Name, "type", dns.Type(q.Qtype), "proto", proto, "via", route,
			"rcode", dns.RcodeToString[resp.Rcode], "answers", len(resp.Answer), "took", time.Since(start).Round(time.Millisecond))
	}
	resp.Id = req.Id
	// A UDP client gets what fits its buffer, with TC set when records had to
	// go, so it asks again over TCP and then gets everything.
	size := dns.MaxMsgSize
	if overUDP {
		size = dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
	}
	resp.Truncate(size)
	if err := w.WriteMsg(resp); err != nil {
		p.log.Debug("dns answer not sent", "name", q.Name, "err", err)
	}
}

// resolve finds the answer to req and says which way it went.
func (p *Proxy) resolve(ctx context.Context, req *dns.Msg, overTCP bool) (*dns.Msg, string, error) {
	name := dns.CanonicalName(req.Question[0].Name)
	if dns.IsSubDomain(p.domain, name) {
		resp, err := p.exchangeTunnel(ctx, p.clusterDNS, req)
		return resp, "cluster", err
	}
	labels := dns.CountLabel(name)
	if labels == 1 && len(p.suffixes) > 0 {
		var names []string
		for _, s := range p.suffixes {
			names = append(names, name+s)
		}
		if resp := p.search(ctx, req, names); resp != nil {
			return resp, "search", nil
		}
	}
	resp, route, err := p.forward(ctx, req, overTCP)
	if labels == 2 && len(p.suffixes) > 0 && (err != nil || resp.Rcode != dns.RcodeSuccess) {
		if alt := p.search(ctx, req, []string{name + "svc." + p.domain}); alt != nil {
			return alt, "search", nil
		}
	}
	return resp, route, err
}

// forward sends a name outside the cluster domain where it belongs.
func (p *Proxy) forward(ctx context.Context, req *dns.Msg, overTCP bool) (*dns.Msg, string, error) {
	if p.cfg.All {
		resp, err := tryEach(ctx, p.attempt, p.nodeDNS, func(ctx context.Context, s netip.AddrPort) (*dns.Msg, error) {
			return p.exchangeTunnel(ctx, s, req)
		})
		return resp, "node", err
	}
	// The client's transport is kept: a truncated UDP answer goes back
	// truncated, and the client's retry over TCP goes upstream over TCP.
	network := "udp"
	if overTCP {
		network = "tcp"
	}
	resp, err := tryEach(ctx, p.attempt, p.cfg.Upstreams, func(ctx context.Context, s netip.AddrPort) (*dns.Msg, error) {
		return p.upstream.exchange(ctx, network, s, req)
	})
	return resp, "upstream", err
}

// tryEach asks the servers in order until one answers. Every server but the
// last gets attempt, so a dead first resolver does not eat the whole query's
// time.
func tryEach(ctx context.Context, attempt time.Duration, servers []netip.AddrPort, ask func(context.Context, netip.AddrPort) (*dns.Msg, error)) (*dns.Msg, error) {
	var errs []error
	for i, s := range servers {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if i < len(servers)-1 {
			actx, cancel = context.WithTimeout(ctx, attempt)
		}
		resp, err := ask(actx, s)
		cancel()
		if err == nil {
			return resp, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no resolver to ask")
	}
	return nil, errors.Join(errs...)
}

// search asks the cluster DNS for each of names in turn, and answers req
// with the first that exists; nil when none does.
func (p *Proxy) search(ctx context.Context, req *dns.Msg, names []string) *dns.Msg {
	for _, n := range names {
		sctx, cancel := context.WithTimeout(ctx, p.attempt)
		q := req.Copy()
		q.Question[0].Name = n
		found, err := p.exchangeTunnel(sctx, p.clusterDNS, q)
		cancel()
		if err != nil {
			p.log.Debug("dns search failed", "name", n, "err", err)
			continue
		}
		if found.Rcode == dns.RcodeSuccess {
			return aliasAnswer(req, n, found)
		}
	}
	return nil
}

// aliasAnswer answers req with a CNAME from the asked name to target plus
// found's records, the shape of answer libc and curl accept for an alias. A
// name that exists without records of the asked type gets the CNAME alone.
func aliasAnswer(req *dns.Msg, target string, found *dns.Msg) *dns.Msg {
	ttl := uint32(searchTTL)
	for _, rr := range found.Answer {
		ttl = min(ttl, rr.Header().Ttl)
	}
	resp := new(dns.Msg).SetReply(req)
	resp.RecursionAvailable = found.RecursionAvailable
	resp.Answer = append([]dns.RR{&dns.CNAME{
		Hdr:    dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl},
		Target: target,
	}}, found.Answer...)
	resp.Ns = found.Ns
	resp.Extra = found.Extra
	return resp
}
