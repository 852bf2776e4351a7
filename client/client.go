// Package client is the laptop side of k8stunnel: it keeps a link to the node
// (an SSH connection, through the transport seam) with the helper running on
// it, accepts the connections the firewall redirects to it, and sends each one
// down a mux stream.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/tui"
)

// DefaultPort is where the client listens unless told otherwise; lower ports
// are tried when it is taken, as sshuttle does.
const DefaultPort = 12300

// Firewall is the part that needs root: the privileged helper in production
// (firewall.Helper), a fake in tests.
type Firewall interface {
	// Install replaces the installed rules with spec's. It returns when ctx
	// ends even if the privileged side never answers, so a hung helper
	// cannot hang a reconnect.
	Install(ctx context.Context, spec firewall.Spec) error
	// Close removes the rules and stops the privileged side. It takes no
	// context: it runs after Run's has ended, and bounds itself.
	Close() error
	// Done is closed when the privileged side dies on its own, which means
	// the rules went with it (or were orphaned). An implementation that
	// cannot die returns nil, which never fires.
	Done() <-chan struct{}
	// MarkSocket gives a socket of the DNS proxy, before it is connected,
	// the mark the DNS rules let through (firewall.DNSMark); setting it
	// takes root, so the privileged side may have to do it.
	MarkSocket(ctx context.Context, fd int) error
	// TransparentSocket makes a UDP socket transparent (IP_TRANSPARENT), as
	// the UDP capture's sockets must be, before it is bound; that takes
	// root too.
	TransparentSocket(ctx context.Context, fd int) error
}

// Config describes one tunnel.
type Config struct {
	// Transport makes the links to the node (sshtransport in production).
	Transport transport.Transport
	// Listen are the addresses to accept redirected connections on; empty
	// means 127.0.0.1 and [::1] (0.0.0.0 and [::] with Gateway) on
	// DefaultPort, or a lower free port.
	Listen []string
	// Gateway also captures the connections this host routes (containers,
	// VMs); see firewall.Spec.Gateway.
	Gateway bool
	Include []firewall.Target
	Exclude []firewall.Target
	// AutoCIDRs forwards the pod and service CIDRs the helper finds on the
	// node, in addition to Include.
	AutoCIDRs bool
	// DNS, when set, answers the laptop's DNS queries (see dnsproxy.Config).
	// What it leaves unset (cluster DNS IP and domain, the node's resolvers)
	// is filled in from what the helper finds on the node; Dial is the
	// client's own.
	DNS *dnsproxy.Config
	// Channels is how many channels of the link carry the streams; 0 means
	// as many as the link's round trip needs (see channelsFor): one on a
	// LAN. The extra channels' helpers hand them to the first's process
	// where it takes joins, and connections are then striped over them.
	Channels int
	// MaxConns caps concurrent relayed connections; past it new ones are reset.
	// 0 means DefaultMaxConns.
	MaxConns int
	// UDP also captures UDP to the all-ports CIDRs (see udp.go); UDPIdle is
	// how long a flow lives without a datagram (0 means DefaultUDPIdle),
	// MaxUDPFlows how many there may be (0 means DefaultMaxUDPFlows).
	UDP         bool
	UDPIdle     time.Duration
	MaxUDPFlows int
	// SOCKS and HTTPProxy, when set, are where (see proxy.ListenAddr) to
	// serve a SOCKS5 and an HTTP proxy whose connections go through the
	// tunnel. With either, Include may be empty and AutoCIDRs unset: then no
	// firewall part is started and nothing needs root.
	SOCKS, HTTPProxy string
	// Names says how the proxies resolve cluster names.
	Names Names
	// Expose (-R) asks the helper to listen on the node and carry what pods
	// connect there back to a target dialled here; see expose.go.
	Expose []Expose
	// StartFirewall starts the privileged part, when there are CIDRs to
	// forward. It is called before the link
	// is made, so a missing sudo fails fast, and again when the privileged
	// part dies on its own (see Run).
	StartFirewall func(ctx context.Context) (Firewall, error)
	// OnReady, when set, is called once: when the tunnel first comes up with
	// its rules installed (daemon mode reports success and writes its pidfile).
	OnReady func()
	// Program names this build in the handshake, e.g. "k8stunnel 0.1.0".
	Program string
	// StreamIDs (-vv) adds the stream and channel to the per-connection lines.
	StreamIDs bool
	Log       *slog.Logger
}

// These bound one connection attempt: the transport's Connect (dial, SSH
// handshake) and each channel's Open (helper upload and start). The first may upload the helper over a slow link.
const (
	firstConnectTimeout     = 60 * time.Second
	reconnectAttemptTimeout = 4 * time.Second
	// installTimeout bounds one Firewall.Install: iptables takes well under
	// a second, so a helper silent for this long is hung.
	installTimeout = 10 * time.Second
)

// DefaultMaxConns is the default cap on concurrent connections. Each costs
// one descriptor here and one on the node.
const DefaultMaxConns = 16384

// Client runs one tunnel.
type Client struct {
	cfg       Config
	log       *slog.Logger
	listeners []*net.TCPListener
	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool
	port      uint16
	include   []firewall.Target // Include plus what AutoCIDRs found
	// origDst is originalDst; tests, which have no redirecting rules, replace it.
	origDst func(*net.TCPConn) (netip.AddrPort, error)
	// localNets, when set, stands in for the laptop's own networks in tests.
	localNets func() []netip.Prefix
	dns       *dnsproxy.Proxy // nil without DNS
	// transparent is set when there are CIDRs to capture: only then are
	// there a firewall and redirect listeners.
	transparent     bool
	socksLn, httpLn net.Listener // nil unless asked for
	resolver        *resolver    // the proxies' cluster names; set by Run
	exp             exposes
	// dialLocal dials the laptop-side targets of Expose.
	dialLocal func(ctx context.Context, network, addr string) (net.Conn, error)
	// udpLns are the UDP capture's sockets, on udpPort; none without UDP.
	udpLns  []*net.UDPConn
	udpPort uint16
	udp     udpFlows
	// fwNow is the running privileged part, which makes the UDP flows'
	// sockets transparent; replaced when it is restarted.
	fwNow atomic.Pointer[Firewall]

	mu    sync.Mutex
	links *link // nil while disconnected

	active  atomic.Int64
	capWarn atomic.Int64 // unix time of the last "too many connections" line
	// What Stats reports; bytes are counted as they pass, in the relay.
	connsTotal, bytesSent, bytesReceived, reconnects atomic.Int64
	started                                          time.Time
	state                                            string    // guarded by mu
	stateSince                                       time.Time // guarded by mu
	// fwLost is set while the privileged part is gone: its rules may still
	// send connections here, so the port is held and they are reset.
	fwLost atomic.Bool
	wg     sync.WaitGroup
}

// New validates cfg and binds the listeners, so the port is known before
// anything else happens.
func New(cfg Config) (*Client, error) {
	if cfg.Transport == nil {
		return nil, errors.New("no transport")
	}
	transparent := len(cfg.Include) > 0 || cfg.AutoCIDRs
	if !transparent && cfg.SOCKS == "" && cfg.HTTPProxy == "" {
		return nil, errors.New("no CIDRs to forward and no proxy to serve")
	}
	if !transparent && cfg.DNS != nil {
		return nil, errors.New("DNS capture needs CIDRs to forward (the proxies resolve cluster names by themselves)")
	}
	if transparent && runtime.GOOS != "linux" {
		return nil, firewall.ErrNeedsLinux
	}
	if transparent && cfg.StartFirewall == nil {
		return nil, errors.New("no firewall")
	}
	if len(cfg.Expose) > mux.MaxExposes {
		return nil, fmt.Errorf("at most %d -R per tunnel", mux.MaxExposes)
	}
	if cfg.Channels < 0 {
		cfg.Channels = 0
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.UDPIdle <= 0 {
		cfg.UDPIdle = DefaultUDPIdle
	}
	if cfg.MaxUDPFlows <= 0 {
		cfg.MaxUDPFlows = DefaultMaxUDPFlows
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DNS != nil {
		d := *cfg.DNS
		if d.Log == nil {
			d.Log = cfg.Log
		}
		cfg.DNS = &d
	}
	c := &Client{cfg: cfg, log: cfg.Log, origDst: originalDst, transparent: transparent, state: StateStarting, stateSince: time.Now()}
	c.exp.conns = make([]atomic.Int64, len(cfg.Expose))
	c.dialLocal = (&net.Dialer{}).DialContext
	if transparent {
		if err := c.listen(); err != nil {
			return nil, err
		}
		if cfg.UDP {
			if err := c.udpListen(); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	if err := c.listenProxies(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the listeners New bound, for a Client whose Run is never
// called or has returned (Run closes them too). It does not stop a running
// Run; end Run's context for that. Safe to call twice.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		var errs []error
		for _, l := range c.listeners {
			if err := l.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, l := range c.udpLns {
			l.Close()
		}
		for _, l := range []net.Listener{c.socksLn, c.httpLn} {
			if l != nil {
				l.Close() // Run's proxies may have closed it already
			}
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Port is the port the listeners are bound to.
func (c *Client) Port() uint16 { return c.port }

func (c *Client) listen() error {
	addrs := c.cfg.Listen
	explicit := len(addrs) > 0
	if !explicit {
		addrs = []string{"127.0.0.1:" + strconv.Itoa(DefaultPort), "[::1]:" + strconv.Itoa(DefaultPort)}
		if c.cfg.Gateway {
			// REDIRECT sends routed connections to the address they arrived
			// on, which can be any of the host's. Connections made to the
			// listener itself, not redirected, are dropped (see handle).
			addrs = []string{"0.0.0.0:" + strconv.Itoa(DefaultPort), "[::]:" + strconv.Itoa(DefaultPort)}
		}
	}
	var parsed []netip.AddrPort
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return fmt.Errorf("bad listen address %q: want IP:PORT", a)
		}
		parsed = append(parsed, ap)
	}
	base := parsed[0].Port()
	if base == 0 {
		// Any free port: the kernel picks one for the first address.
		ls, err := listenAll(parsed, 0, !explicit)
		if err != nil {
			return err
		}
		c.listeners, c.port = ls, uint16(ls[0].Addr().(*net.TCPAddr).Port)
		return nil
	}
	// Try the port and up to 100 below it; every listener shares one port so
	// one chain covers both families.
	for port := base; port > 0 && port+100 > base; port-- {
		ls, err := listenAll(parsed, port, !explicit)
		if err == nil {
			c.listeners, c.port = ls, port
			if port != base {
				c.log.Info("listen port taken, using a lower one", "wanted", base, "port", port)
			}
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
	}
	return fmt.Errorf("listening on port %d: no free port within 100 below it", base)
}

// listenAll binds every address on port, or none. With optional set, an
// address family this host lacks (no IPv6 loopback) is skipped.
func listenAll(addrs []netip.AddrPort, port uint16, optional bool) ([]*net.TCPListener, error) {
	var ls []*net.TCPListener
	for _, a := range addrs {
		// No TCP keepalive on accepted connections: four setsockopt calls each,
		// for a peer that is a local process.
		lc := net.ListenConfig{KeepAlive: -1}
		if port == 0 && len(ls) > 0 {
			port = uint16(ls[0].Addr().(*net.TCPAddr).Port) // the one chain needs one port
		}
		// tcp6 is v6-only, so [::] and 0.0.0.0 can both be bound.
		network := "tcp4"
		if a.Addr().Is6() {
			network = "tcp6"
		}
		nl, err := lc.Listen(context.Background(), network, netip.AddrPortFrom(a.Addr(), port).String())
		l, _ := nl.(*net.TCPListener)
		if err != nil {
			if optional && a.Addr().Is6() && errors.Is(err, syscall.EADDRNOTAVAIL) {
				continue
			}
			for _, l := range ls {
				l.Close()
			}
			return nil, fmt.Errorf("listening on %v: %w", netip.AddrPortFrom(a.Addr(), port), err)
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return nil, errors.New("no address to listen on")
	}
	return ls, nil
}

// Run keeps the tunnel up until ctx ends. It returns an error when the first
// connection fails or the firewall cannot be set up; later outages are
// retried. When it returns, every rule it installed is gone.
func (c *Client) Run(ctx context.Context) (err error) {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.closed.Load() {
		return fmt.Errorf("running the tunnel: %w", net.ErrClosed)
	}
	c.mu.Lock()
	c.started = time.Now()
	c.mu.Unlock()
	// Deferred first, so it runs last: one line saying why the tunnel ended
	// and whether its rules are gone. Before the tunnel was up, the error
	// says it all, and the caller shows it.
	ready, removed := false, false
	defer func() {
		switch {
		case !ready:
		case !removed:
			c.log.Error("tunnel stopped; its firewall rules may be left behind", "err", err)
		case err != nil:
			c.log.Error("tunnel stopped; firewall rules removed", "err", err)
		default:
			c.log.Info("tunnel stopped; firewall rules removed", "reason", context.Cause(parent))
		}
	}()
	defer func() {
		cancel() // first: what Run started sees it is ending, not failing
		c.Close()
		c.setLink(nil)
		c.stopExposes()
		c.wg.Wait()
		c.closeUDP()
	}()
	// Deferred before the firewall's removal, so it runs after it: until the
	// capture rules are gone, captured queries still get answers.
	defer func() {
		if c.dns != nil {
			c.dns.Close()
		}
	}()

	var server netip.Addr
	var fw Firewall
	if c.transparent {
		if fw, err = c.cfg.StartFirewall(ctx); err != nil {
			return err
		}
		c.setFirewall(fw)
		if err := c.udpTransparent(ctx, fw); err != nil {
			fw.Close()
			return &tui.HintError{Err: fmt.Errorf("setting up the UDP capture: %w", err), Hint: "forward TCP only with --no-udp"}
		}
		defer func() {
			if fw == nil {
				err, removed = c.removeOrphanedRules(server, err)
				return
			}
			cerr := fw.Close()
			if cerr != nil && err == nil {
				err = fmt.Errorf("removing firewall rules: %w", cerr)
			}
			removed = cerr == nil
		}()
	} else {
		removed = true // there are none
	}

	l, err := c.connect(ctx, firstConnectTimeout, true)
	if err != nil {
		return err
	}
	server = l.server
	if err := c.useFacts(l.facts); err != nil {
		l.close()
		return err
	}
	if c.cfg.DNS != nil {
		p, err := c.startDNS(l.facts, fw)
		if err != nil {
			l.close()
			return err
		}
		c.dns = p
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := p.Run(ctx); err != nil {
				c.log.Error("DNS stopped", "err", err)
			}
		}()
	}
	if c.transparent {
		if err := c.install(ctx, fw, server); err != nil {
			l.close()
			return fmt.Errorf("installing firewall rules: %w", err)
		}
	}
	if c.proxying() {
		if err := c.startProxies(ctx, l.facts); err != nil {
			l.close()
			return err
		}
	}
	c.setLink(l)
	c.setState(StateConnected)
	for _, ln := range c.listeners {
		c.wg.Add(1)
		go c.acceptLoop(ctx, ln)
	}
	for _, ln := range c.udpLns {
		c.wg.Add(1)
		go c.udpLoop(ctx, ln)
	}
	readyAttrs := []any{"remote", l.target}
	if c.transparent {
		readyAttrs = append(readyAttrs, "port", c.port, "forward", targetsString(c.include))
	}
	if c.dns != nil {
		readyAttrs = append(readyAttrs, "dns", c.dns.String())
	}
	readyAttrs = append(readyAttrs, c.proxyReady()...)
	c.log.Info("tunnel ready", readyAttrs...)
	ready = true
	if c.cfg.OnReady != nil {
		c.cfg.OnReady()
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-firewallDone(fw):
			// Killed, it removed nothing: its rules may still send the CIDRs
			// here, and to a port we let go any local user could listen on.
			if fw = c.restartFirewall(ctx, server); fw == nil {
				return nil // ctx ended; the deferred removal has the last word
			}
			continue
		case <-l.done:
		}
		c.setLink(nil)
		c.setState(StateReconnecting)
		c.log.Warn("tunnel lost; new connections are reset until it is back", "err", l.err())
		l, err = c.reconnect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if c.transparent && l.server != server {
			// The node's address changed (DNS): keep its traffic out of the tunnel.
			server = l.server
			if err := c.install(ctx, fw, server); err != nil {
				l.close()
				return fmt.Errorf("updating firewall rules: %w", err)
			}
		}
		c.setLink(l)
		c.reconnects.Add(1)
		c.setState(StateConnected)
		c.log.Info("tunnel restored", "remote", l.target)
	}
}

// setFirewall makes fw the privileged part the UDP flows ask, through a copy
// of its own: Run's variable changes as the part is restarted.
func (c *Client) setFirewall(fw Firewall) { c.fwNow.Store(&fw) }

// firewallDone is fw.Done, or nil (never ready) without a firewall.
func firewallDone(fw Firewall) <-chan struct{} {
	if fw == nil {
		return nil
	}
	return fw.Done()
}

// firewallRetry is how often a lost privileged part is started again; a
// variable so tests can make it fast.
var firewallRetry = 5 * time.Second

// restartFirewall runs while the privileged part is gone: the port stays
// bound and every connection to it is reset, while a new one is started and
// given the rules, every firewallRetry until it works. It returns the new one,
// or nil when ctx ends first.
func (c *Client) restartFirewall(ctx context.Context, server netip.Addr) Firewall {
	c.fwLost.Store(true)
	c.setState(StateFirewallLost)
	c.log.Error("the firewall helper exited unexpectedly; resetting connections until it is back",
		"port", c.port, "hint", "if it does not come back, stop k8stunnel and run: sudo k8stunnel cleanup")
	lastErr := ""
	for {
		fw, err := c.startInstalled(ctx, server)
		if err == nil {
			c.fwLost.Store(false)
			// A link lost meanwhile is noticed by Run's next turn.
			c.setState(StateConnected)
			c.log.Info("firewall helper restarted; rules restored")
			return fw
		}
		if err.Error() != lastErr {
			c.log.Warn("restarting the firewall helper", "err", err, "retry_in", firewallRetry)
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(firewallRetry):
		}
	}
}

// removeOrphanedRules runs on exit when the privileged part died and could
// not be restarted: one last helper replaces the rules it left behind with
// ours and removes them. If that fails too the user is told how to repair it,
// since the rules then point at a port nobody holds.
func (c *Client) removeOrphanedRules(server netip.Addr, runErr error) (_ error, removed bool) {
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	fw, err := c.startInstalled(ctx, server)
	if err == nil {
		err = fw.Close()
	}
	if err == nil {
		c.log.Info("removed the rules the lost firewall helper left behind")
		return runErr, true
	}
	lost := &tui.HintError{
		Err:  fmt.Errorf("the firewall helper exited unexpectedly and could not be restarted (%v); its rules may be left behind", err),
		Hint: "remove them with: sudo k8stunnel cleanup",
	}
	if runErr != nil {
		return errors.Join(runErr, lost), false
	}
	return lost, false
}

// startInstalled starts a new privileged part and gives it the rules; on
// failure none is left running.
func (c *Client) startInstalled(ctx context.Context, server netip.Addr) (Firewall, error) {
	fw, err := c.cfg.StartFirewall(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.install(ctx, fw, server); err != nil {
		fw.Close()
		return nil, err
	}
	c.setFirewall(fw)
	return fw, nil
}

// install installs the rule set for server, bounded by installTimeout.
func (c *Client) install(ctx context.Context, fw Firewall, server netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, installTimeout)
	defer cancel()
	return fw.Install(ctx, c.spec(server))
}

// spec is the rule set: what the user asked for, minus the SSH server itself,
// so the tunnel's own connection is never captured (even with 0/0).
func (c *Client) spec(server netip.Addr) firewall.Spec {
	ex := append([]firewall.Target(nil), c.cfg.Exclude...)
	if server.IsValid() { // a link with no address of its own (ProxyCommand, -e) exempts nothing
		ex = append(ex, firewall.Target{Prefix: netip.PrefixFrom(server, server.BitLen())})
	}
	s := firewall.Spec{Port: c.port, Include: c.include, Exclude: ex, Gateway: c.cfg.Gateway}
	for _, ln := range c.listeners {
		s.Listen = append(s.Listen, ln.Addr().(*net.TCPAddr).AddrPort())
	}
	if c.dns != nil {
		s.DNS, s.DNSPort = c.dns.Resolvers(), c.dns.Port()
	}
	s.UDPPort = c.udpPort
	return s
}

// useFacts settles what to forward: Include, plus with AutoCIDRs the CIDRs
// the helper found, each announced with where it came from.
func (c *Client) useFacts(f *mux.Facts) error {
	c.include = slices.Clone(c.cfg.Include)
	if !c.cfg.AutoCIDRs {
		return nil
	}
	if f == nil {
		f = &mux.Facts{}
	}
	for _, s := range f.Sources {
		c.log.Info("found on the node: " + s)
	}
	for _, s := range slices.Concat(f.ServiceCIDRs, f.PodCIDRs) {
		t, err := firewall.ParseTarget(s)
		if err != nil {
			c.log.Warn("ignoring a CIDR from the node", "cidr", s, "err", err)
			continue
		}
		if slices.Contains(c.include, t) {
			continue
		}
		if err := checkNodeCIDR(t.Prefix, c.laptopNets()); err != nil {
			return untrustedFact(err, "name the CIDRs to forward as arguments instead of relying on -N, "+
				"e.g. k8stunnel -r NODE 10.96.0.0/12 10.244.0.0/16")
		}
		c.include = append(c.include, t)
	}
	if len(c.include) == 0 {
		return &tui.HintError{
			Err: errors.New("-N found no pod or service CIDR on the node (no kubeadm manifests, kubelet, k3s or flannel files)"),
			Hint: "name them as arguments, e.g. k8stunnel -r NODE 10.96.0.0/12 10.244.0.0/16 " +
				"(kubectl cluster-info dump | grep -m2 -e service-cluster-ip-range -e cluster-cidr shows yours)",
		}
	}
	if len(f.ServiceCIDRs) == 0 && len(c.cfg.Include) == 0 {
		c.log.Warn("-N found no service CIDR on the node; service IPs are not forwarded. Pass the range as an argument, e.g. 10.96.0.0/12")
	}
	return nil
}

// reconnect retries with backoff until it gets a link or ctx ends. Each
// attempt is bounded well below the TCP connect timeout: after an outage the
// node should be back in use within seconds of answering again, not after
// the SYN retransmission backoff of a dial that started while it was away.
func (c *Client) reconnect(ctx context.Context) (*link, error) {
	backoff := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		l, err := c.connect(ctx, reconnectAttemptTimeout, false)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, transport.ErrPermanent) {
			// A changed host key: someone else may be answering for the node,
			// and retrying would never fix that.
			return nil, err
		}
		// One line for the first failure; the rest only with -v.
		level := slog.LevelDebug
		if attempt == 1 {
			level = slog.LevelInfo
		}
		c.log.Log(ctx, level, "reconnect failed; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (c *Client) setLink(l *link) {
	c.mu.Lock()
	old := c.links
	c.links = l
	c.mu.Unlock()
	if l == nil && old != nil {
		old.close()
	}
}

// link is the current link; nil when the tunnel is down.
func (c *Client) link() *link {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.links
}

// session picks the least busy session of the current link, and says which
// channel it is on; nil when the tunnel is down.
func (c *Client) session() (*mux.Session, int) {
	l := c.link()
	if l == nil {
		return nil, 0
	}
	return l.pick()
}

func (c *Client) acceptLoop(ctx context.Context, ln *net.TCPListener) {
	defer c.wg.Done()
	for {
		conn, err := ln.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			c.log.Warn("accept failed", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		c.wg.Add(1)
		go c.handle(conn)
	}
}

// handle relays one redirected connection.
func (c *Client) handle(conn *net.TCPConn) {
	defer c.wg.Done()
	c.connsTotal.Add(1)
	local := &counted{Conn: mux.NetConn(conn), c: c}
	dst, err := c.origDst(conn)
	if err != nil {
		c.log.Debug("dropping connection", "from", conn.RemoteAddr(), "err", err)
		local.Abort()
		return
	}
	if dst.String() == conn.LocalAddr().String() {
		// Someone connected to the listener itself, not through a rule.
		c.log.Debug("dropping connection that was not redirected", "from", conn.RemoteAddr())
		local.Abort()
		return
	}
	l := c.link()
	if c.fwLost.Load() {
		c.log.Debug("firewall helper lost, resetting", "dst", dst)
		local.Abort()
		return
	}
	if l == nil {
		c.log.Debug("tunnel down, resetting", "dst", dst)
		local.Abort()
		return
	}
	// Counted only now: a connection reset above never was active, also
	// not for the moment between its reset and this function's return.
	if n := c.active.Add(1); n > int64(c.cfg.MaxConns) {
		c.active.Add(-1)
		if now := time.Now().Unix(); c.capWarn.Swap(now) != now {
			c.log.Warn("too many connections; resetting new ones", "max", c.cfg.MaxConns)
		}
		local.Abort()
		return
	}
	st, id, channel, err := l.dial(dst)
	if err != nil {
		c.active.Add(-1)
		c.log.Debug("opening stream", "dst", dst, "err", err)
		local.Abort()
		return
	}
	desc := fmt.Sprintf("%v -> %v", conn.RemoteAddr(), dst)
	var ids []any
	if c.cfg.StreamIDs {
		ids = []any{"stream", id.String(), "channel", channel}
	}
	if sc, ok := st.(*mux.Striped); ok {
		ids = append(ids, "parts", sc.Parts())
	}
	c.log.Debug(desc, ids...)
	start := time.Now()
	// The relay goes on in goroutines of its own and this one ends: its
	// stack grew for the work above and would stay that size for as long
	// as the connection is held (see mux.RelayAsync).
	c.wg.Add(1)
	mux.RelayAsync(local, st, func(err error) {
		defer c.wg.Done()
		c.active.Add(-1)
		end := endReason(err, local.readErr, local.writeErr)
		attrs := append([]any{"took", time.Since(start).Round(time.Millisecond), "sent", local.sent,
			"received", local.received, "end", end}, ids...)
		if end == "failed" {
			attrs = append(attrs, "err", err)
		}
		c.log.Debug(desc+" closed", attrs...)
	})
}

// endReason says how a relayed connection ended, for its close line: err is
// what Relay returned, appErrs the first failures of reading and writing the
// application's side. Those come first: once one side fails Relay aborts
// both, and the other side then reports only that it was closed.
func endReason(err error, appErrs ...error) string {
	for _, e := range appErrs {
		if e != nil && !errors.Is(e, net.ErrClosed) {
			return "reset by app"
		}
	}
	var de *mux.DialError
	switch {
	case err == nil:
		return "eof"
	case errors.As(err, &de):
		switch de.Status {
		case mux.StatusRefused:
			return "refused"
		case mux.StatusUnreachable:
			return "unreachable"
		case mux.StatusTimeout:
			return "timed out"
		}
	case errors.Is(err, mux.ErrPeerReset):
		return "reset by target"
	case errors.Is(err, mux.ErrSessionLost):
		return "tunnel lost"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timed out"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset by app"
	}
	return "failed"
}

// link is one transport link and the mux sessions on its channels.
type link struct {
	tl       transport.Link
	target   string
	server   netip.Addr
	sessions atomic.Pointer[[]*mux.Session] // grows after connect; read on every dial
	facts    *mux.Facts                     // what the helper found on the node, if asked
	done     chan struct{}

	once    sync.Once
	mu      sync.Mutex
	closed  bool // guarded by mu: add turns sessions away
	lastErr error
	next    atomic.Uint32
}

// channels is the link's sessions, one per channel; the first is the one
// whose helper answered the hello's facts and exposes.
func (l *link) channels() []*mux.Session {
	if p := l.sessions.Load(); p != nil {
		return *p
	}
	return nil
}

// add gives the link another session; false once the link is closed, and
// then the caller still owns s.
func (l *link) add(s *mux.Session) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	ss := append(slices.Clone(l.channels()), s)
	l.sessions.Store(&ss)
	return true
}

// dial opens what carries a redirected connection to dst, and says which
// stream and channel it starts on. When several channels end in the first
// helper's process (a long link), the connection is striped over all of
// them, its first chunk on each in turn: one transfer then gets every
// channel's window, not one's. Otherwise it is one stream on the least
// busy channel.
func (l *link) dial(dst netip.AddrPort) (tunnelConn, net.Addr, int, error) {
	if js := l.joined(); len(js) > 1 && js[0].Peer.Stripes {
		i := int(l.next.Add(1)) % len(js)
		// From channel i on, at most as many as a stripe has parts.
		parts := make([]*mux.Session, min(len(js), mux.MaxStripeParts))
		for k := range parts {
			parts[k] = js[(i+k)%len(js)]
		}
		sc, err := mux.DialStriped(parts, dst)
		if err != nil {
			return nil, nil, 0, err
		}
		return sc, sc.Primary().LocalAddr(), i, nil
	}
	sess, channel := l.pick()
	st, err := sess.Dial(dst)
	if err != nil {
		return nil, nil, 0, err
	}
	return st, st.LocalAddr(), channel, nil
}

// tunnelConn is a connection through the tunnel: one stream, or a stripe of
// them (*mux.Stream, *mux.Striped).
type tunnelConn interface {
	net.Conn
	mux.Conn
	// WaitDial waits for the helper's answer to the connect request.
	WaitDial() error
}

// joined is the link's sessions that the first channel's helper process
// serves: the first, and each extra one handed to it (Hello.Joined). A
// connection striped over several sessions needs them in one process.
func (l *link) joined() []*mux.Session {
	ss := l.channels()
	if len(ss) == 0 {
		return nil
	}
	joined := []*mux.Session{ss[0]}
	for _, s := range ss[1:] {
		if s.Peer.Joined {
			joined = append(joined, s)
		}
	}
	return joined
}

func (l *link) pick() (*mux.Session, int) {
	ss := l.channels()
	if len(ss) == 1 {
		return ss[0], 0
	}
	best := int(l.next.Add(1)) % len(ss)
	for i, s := range ss {
		if s.NumStreams() < ss[best].NumStreams() {
			best = i
		}
	}
	return ss[best], best
}

func (l *link) fail(err error) {
	l.mu.Lock()
	if l.lastErr == nil {
		l.lastErr = err
	}
	l.mu.Unlock()
	l.close()
}

func (l *link) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

func (l *link) close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		for _, s := range l.channels() {
			s.Close()
		}
		l.tl.Close()
		close(l.done)
	})
}

// connect makes one link, starts the helper on each channel and watches
// them: the link is done when any of them ends. setup bounds the attempt;
// what it starts lives until ctx ends or the link fails. first is the
// tunnel's first connect, which waits for the extra channels.
func (c *Client) connect(ctx context.Context, setup time.Duration, first bool) (*link, error) {
	sctx, cancel := context.WithTimeout(ctx, setup)
	defer cancel()
	tl, err := c.cfg.Transport.Connect(sctx)
	if err != nil {
		return nil, err
	}
	l := &link{tl: tl, target: tl.Remote(), server: tl.Server(), done: make(chan struct{})}
	// Closing the link unblocks every step below when time is up.
	stop := context.AfterFunc(sctx, func() { tl.Close() })
	defer stop()
	n := max(c.cfg.Channels, 1)
	for i := 0; i < n; i++ {
		ch, err := tl.Open(sctx)
		if err != nil {
			tl.Close()
			return nil, err
		}
		hello := mux.Hello{Program: c.cfg.Program, Discover: i == 0 && (c.cfg.AutoCIDRs || c.cfg.DNS != nil || c.proxying())}
		if i == 0 {
			c.exposeHello(&hello)
		} else {
			// Into the first helper's process, when it takes joins: a
			// connection can then be striped over every channel.
			hello.Join = l.channels()[0].Peer.JoinAt
		}
		sess, err := mux.NewClient(ch, hello, c.log)
		if err != nil {
			ch.Close()
			if sctx.Err() != nil {
				err = fmt.Errorf("no answer in %v", setup)
			}
			err = ch.Explain(err)
			tl.Close()
			return nil, fmt.Errorf("starting the helper on the node: %w", err)
		}
		ch.Started()
		l.add(sess)
		if i == 0 {
			l.facts = sess.Peer.Facts
			if err := c.checkExposed(sess.Peer.Exposed, l.target); err != nil {
				sess.Close()
				tl.Close()
				return nil, err
			}
		}
	}
	if !stop() {
		return nil, fmt.Errorf("connecting to %s: no answer in %v", l.target, setup)
	}
	if n > 1 {
		c.log.Debug("channels up", "channels", n, "joined", len(l.joined()))
	}
	for i, s := range l.channels() {
		c.serve(ctx, l, s, i == 0)
	}
	if c.cfg.Channels == 0 {
		// The link's first keepalive went out with the connection and came
		// back while the helper started. The channels a long round trip asks
		// for are a speed-up, not a need: the link is up without them. The
		// first connect waits for them (the user is waiting for the tunnel
		// anyway, and a transfer started at once should find them); a
		// reconnect does not: traffic is waiting.
		if more := channelsFor(rttOf(tl)) - 1; more > 0 {
			if first {
				c.grow(ctx, l, more)
			} else {
				c.wg.Go(func() { c.grow(ctx, l, more) })
			}
		}
	}
	go func() {
		select {
		case <-tl.Done():
			l.fail(tl.Err())
		case <-l.done:
		}
	}()
	return l, nil
}

// serve runs the helper's side of session s of link l: the helper opens
// streams to reset ours, and with -R (first only) to carry pods' connections
// back; any other is refused. The link fails when any of its sessions ends.
func (c *Client) serve(ctx context.Context, l *link, s *mux.Session, first bool) {
	go func() {
		c.serveSession(ctx, s, first)
		l.fail(mux.ErrSessionLost)
	}()
}

// extraChannelsTimeout bounds the wait for the channels a link's round trip
// asks for beyond its first; a variable for tests.
var extraChannelsTimeout = 10 * time.Second

// grow opens n more channels for link l, all at once, and adds each that
// comes up within extraChannelsTimeout. One that fails is left out: a round
// trip measured on a busy machine can make a LAN look long, and nothing must
// then wait or fail for helpers the link never needed.
func (c *Client) grow(runCtx context.Context, l *link, n int) {
	ctx, cancel := context.WithTimeout(runCtx, extraChannelsTimeout)
	defer cancel()
	go func() {
		// The link's end stops the growth too.
		select {
		case <-l.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	// Each extra channel's helper hands its channel to the first's process
	// when that one takes joins; one that cannot serves it alone.
	hello := mux.Hello{Program: c.cfg.Program, Join: l.channels()[0].Peer.JoinAt}
	var added atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			ch, err := l.tl.Open(ctx)
			if err != nil {
				c.log.Debug("extra channel not opened", "err", err)
				return
			}
			stop := context.AfterFunc(ctx, func() { ch.Close() })
			sess, err := mux.NewClient(ch, hello, c.log)
			if !stop() || err != nil {
				if err == nil {
					sess.Close()
					err = context.Cause(ctx)
				}
				ch.Close()
				c.log.Debug("extra channel not started", "err", ch.Explain(err))
				return
			}
			ch.Started()
			if !l.add(sess) {
				sess.Close()
				return
			}
			added.Add(1)
			c.serve(runCtx, l, sess, false)
		})
	}
	wg.Wait()
	c.log.Debug("long link: more channels", "rtt", rttOf(l.tl), "wanted", n+1, "channels", 1+added.Load(), "joined", len(l.joined()))
}

// One SSH channel moves at most its window per round trip: 2 MiB in
// x/crypto/ssh and in OpenSSH, so ~335 Mbit/s at 50 ms whatever runs on top.
// By default a link gets enough channels for their windows together to cover
// autoRate, about what one channel moves on a LAN, at the round trip measured
// when it connects. Below ~8 ms one channel covers it: a LAN gets one helper
// and pays nothing for more. Connections go to the channel with the fewest
// streams, so with a spare channel or two a few parallel transfers (and an
// idle control connection beside them, as iperf3 and FTP have) each get one.
const (
	sshWindow       = 2 << 20
	autoRate        = 2e9 / 8 // bytes per second
	maxAutoChannels = 8
)

// channelsFor is how many channels a link whose round trip is rtt gets by
// default; 0, not measured, gives one.
func channelsFor(rtt time.Duration) int {
	n := int(math.Ceil(rtt.Seconds() * autoRate / sshWindow))
	return max(1, min(n, maxAutoChannels))
}

func rttOf(tl transport.Link) time.Duration {
	if r, ok := tl.(transport.RTTReporter); ok {
		return r.RTT()
	}
	return 0
}

func targetsString(ts []firewall.Target) string {
	s := ""
	for i, t := range ts {
		if i > 0 {
			s += " "
		}
		s += t.String()
	}
	return s
}
