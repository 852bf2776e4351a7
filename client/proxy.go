package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/proxy"
	"github.com/k8stunnel/k8stunnel/tui"
)

// Names says how the SOCKS and HTTP proxies resolve cluster names. What is
// unset is filled in from what the helper finds on the node.
type Names struct {
	// ClusterDNS is the cluster DNS service IP.
	ClusterDNS netip.Addr
	// ClusterDomain is the cluster's DNS domain; "" means the node's, else
	// cluster.local.
	ClusterDomain string
	// Search lets short names resolve, as dnsproxy.Config.Search.
	Search []string
}

var (
	errTunnelDown = errors.New("tunnel is down")
	errTooMany    = errors.New("too many connections")
)

// proxying reports whether a SOCKS or HTTP proxy is asked for.
func (c *Client) proxying() bool { return c.cfg.SOCKS != "" || c.cfg.HTTPProxy != "" }

// listenProxies binds the proxies' listeners. A proxy other hosts can reach
// lets them into the cluster: that needs an explicit address, and a warning.
func (c *Client) listenProxies() error {
	for _, p := range []struct {
		what, addr string
		ln         *net.Listener
	}{{"SOCKS proxy", c.cfg.SOCKS, &c.socksLn}, {"HTTP proxy", c.cfg.HTTPProxy, &c.httpLn}} {
		if p.addr == "" {
			continue
		}
		addr, loopback, err := proxy.ListenAddr(p.addr)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening for the %s: %w", p.what, err)
		}
		*p.ln = ln
		if !loopback {
			c.log.Warn("the "+p.what+" is open to other hosts: anyone who can reach it can reach the cluster", "listen", ln.Addr().String())
		}
	}
	return nil
}

// startProxies serves the proxies until ctx ends, once the helper has said
// what it found on the node (the cluster DNS and domain).
func (c *Client) startProxies(ctx context.Context, facts *mux.Facts) error {
	r, err := c.newResolver(facts)
	if err != nil {
		return err
	}
	c.resolver = r
	for _, s := range []struct {
		ln    net.Listener
		serve func(context.Context, net.Listener) error
	}{
		{c.socksLn, (&proxy.SOCKS{Dial: c, Log: c.log}).Serve},
		{c.httpLn, (&proxy.HTTP{Dial: c, Log: c.log}).Serve},
	} {
		if s.ln == nil {
			continue
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := s.serve(ctx, s.ln); err != nil {
				c.log.Error("proxy stopped", "listen", s.ln.Addr().String(), "err", err)
			}
		}()
	}
	return nil
}

// proxyReady is what the "tunnel ready" line says about the proxies.
func (c *Client) proxyReady() []any {
	var kv []any
	if c.socksLn != nil {
		kv = append(kv, "socks", c.socksLn.Addr().String())
	}
	if c.httpLn != nil {
		kv = append(kv, "http_proxy", c.httpLn.Addr().String())
	}
	if c.resolver != nil && c.resolver.server.IsValid() {
		kv = append(kv, "names", strings.TrimSuffix(c.resolver.domain, ".")+" via "+c.resolver.server.Addr().String())
	}
	return kv
}

// DialContext connects to addr ("host:port") from the node, as the proxies
// ask: an IP is dialled as it is, a cluster name is resolved with the cluster
// DNS through the tunnel, and any other name by the helper with the node's
// resolver, so the application sees what a pod would. It returns once the
// destination has accepted; a failure is the helper's *mux.DialError, or a
// *net.DNSError for a name that does not exist. It honours MaxConns, and
// fails at once while the tunnel is down.
func (c *Client) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("dialing %s: network %s is not supported, only tcp", addr, network)
	}
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %q: %w", addr, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("dialing %q: bad port", addr)
	}
	if n := c.active.Add(1); n > int64(c.cfg.MaxConns) {
		c.active.Add(-1)
		if now := time.Now().Unix(); c.capWarn.Swap(now) != now {
			c.log.Warn("too many connections; refusing new ones", "max", c.cfg.MaxConns)
		}
		return nil, errTooMany
	}
	st, err := c.dialHost(ctx, host, uint16(port))
	if err == nil {
		stop := context.AfterFunc(ctx, st.Abort)
		err = st.WaitDial()
		if !stop() {
			err = ctx.Err()
		}
		if err != nil {
			st.Close()
		}
	}
	if err != nil {
		c.active.Add(-1)
		c.log.Debug("proxy connect failed", "dst", addr, "err", err)
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	c.log.Debug("proxy connect", "dst", addr)
	return &proxyConn{tunnelConn: st, release: func() { c.active.Add(-1) }}, nil
}

// dialHost opens a connection to host, an IP or a name. To an address (a
// name the DNS proxy knows becomes one) it is striped as a redirected
// connection is (link.dial); a name for the node to resolve takes one
// stream.
func (c *Client) dialHost(ctx context.Context, host string, port uint16) (tunnelConn, error) {
	l := c.link()
	if l == nil {
		return nil, errTunnelDown
	}
	dial := func(a netip.Addr) (tunnelConn, error) {
		st, _, _, err := l.dial(netip.AddrPortFrom(a, port))
		return st, err
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Zone() == "" {
		return dial(a.Unmap())
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if !mux.ValidName(name) {
		return nil, &net.DNSError{Err: "not a valid host name", Name: host, IsNotFound: true}
	}
	if c.resolver != nil {
		a, ok, err := c.resolver.lookup(ctx, name)
		if err != nil {
			return nil, err
		}
		if ok {
			return dial(a)
		}
	}
	sess, _ := l.pick()
	st, err := sess.DialName(name, port)
	switch {
	case errors.Is(err, mux.ErrNoNames):
		return nil, &tui.HintError{Err: err, Hint: "use the same k8stunnel version on the node (drop --remote-cmd, or update what it runs)"}
	case err != nil:
		return nil, err
	}
	return st, nil
}

// proxyConn is a proxied connection: a stream (or stripe) that gives back
// its place under MaxConns when closed. It is still a mux.Conn, so the
// proxies relay with the stream's half-close and reset.
type proxyConn struct {
	tunnelConn
	once    sync.Once
	release func()
}

func (p *proxyConn) Close() error {
	p.once.Do(p.release)
	return p.tunnelConn.Close()
}

// lookupTimeout bounds resolving one name through the tunnel.
const lookupTimeout = 5 * time.Second

// resolver finds cluster names with the cluster DNS, over DNS-over-TCP on
// a tunnel stream, as the DNS proxy does.
type resolver struct {
	server netip.AddrPort // the cluster DNS; invalid when unknown
	domain string         // fully qualified, lower case
	search []string       // suffixes one-label names are tried under
	dial   func(context.Context, netip.AddrPort) (net.Conn, error)
}

func (c *Client) newResolver(facts *mux.Facts) (*resolver, error) {
	cfg, err := dnsWithFacts(dnsproxy.Config{ClusterDNS: c.cfg.Names.ClusterDNS, ClusterDomain: c.cfg.Names.ClusterDomain}, facts)
	if err != nil {
		return nil, err
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = dnsproxy.DefaultClusterDomain
	}
	r := &resolver{domain: dns.CanonicalName(cfg.ClusterDomain), dial: c.dialDNS}
	if _, ok := dns.IsDomainName(r.domain); !ok || r.domain == "." {
		return nil, fmt.Errorf("bad cluster domain %q: want a DNS name such as %s", cfg.ClusterDomain, dnsproxy.DefaultClusterDomain)
	}
	for _, s := range c.cfg.Names.Search {
		suffix, err := dnsproxy.SearchSuffix(s, r.domain)
		if err != nil {
			return nil, err
		}
		r.search = append(r.search, suffix)
	}
	if cfg.ClusterDNS.IsValid() {
		r.server = netip.AddrPortFrom(cfg.ClusterDNS, 53)
	} else {
		c.log.Warn("the cluster DNS IP is unknown (not given, not found on the node); the proxies leave cluster names to the node's resolver",
			"hint", "pass it: --cluster-dns $(kubectl -n kube-system get service kube-dns -o jsonpath='{.spec.clusterIP}')")
	}
	return r, nil
}

// lookup resolves name if it is the cluster's: under the cluster domain, or
// a short form (svc with a search namespace, svc.ns) the cluster DNS knows.
// ok false means it is not, and the node's resolver should have it.
func (r *resolver) lookup(ctx context.Context, name string) (a netip.Addr, ok bool, err error) {
	if !r.server.IsValid() {
		return netip.Addr{}, false, nil
	}
	fq := dns.Fqdn(name)
	if dns.IsSubDomain(r.domain, fq) {
		a, err := r.query(ctx, fq)
		if err == nil && !a.IsValid() {
			err = &net.DNSError{Err: "no such host", Name: name, Server: r.server.String(), IsNotFound: true}
		}
		return a, true, err
	}
	if len(r.search) == 0 {
		return netip.Addr{}, false, nil
	}
	// Tried before the node's resolver, as in a pod (ndots:5).
	var names []string
	switch dns.CountLabel(fq) {
	case 1:
		for _, s := range r.search {
			names = append(names, fq+s)
		}
	case 2:
		names = []string{fq + "svc." + r.domain}
	}
	for _, n := range names {
		if a, err := r.query(ctx, n); err == nil && a.IsValid() {
			return a, true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// query asks the cluster DNS for name's A record, then its AAAA record, on
// one tunnel stream; an invalid address means the name has neither.
func (r *resolver) query(ctx context.Context, name string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	c, err := r.dial(ctx, r.server)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolving %s: %w", name, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	dc := &dns.Conn{Conn: c}
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		req := new(dns.Msg).SetQuestion(name, qtype)
		if err := dc.WriteMsg(req); err != nil {
			return netip.Addr{}, fmt.Errorf("resolving %s: %w", name, ctxErr(ctx, err))
		}
		resp, err := dc.ReadMsg()
		if err != nil {
			return netip.Addr{}, fmt.Errorf("resolving %s: %w", name, ctxErr(ctx, err))
		}
		if resp.Id != req.Id {
			return netip.Addr{}, fmt.Errorf("resolving %s: the answer is to another query", name)
		}
		switch resp.Rcode {
		case dns.RcodeNameError:
			return netip.Addr{}, nil // no such name, of any type
		case dns.RcodeSuccess:
		default:
			return netip.Addr{}, fmt.Errorf("resolving %s: the cluster DNS answered %s", name, dns.RcodeToString[resp.Rcode])
		}
		for _, rr := range resp.Answer {
			switch rr := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
					return a, nil
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
					return a.Unmap(), nil
				}
			}
		}
	}
	return netip.Addr{}, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
