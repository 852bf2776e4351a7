package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/internal/logtest"
	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/server"
	"github.com/k8stunnel/k8stunnel/transport/transporttest"
	"github.com/k8stunnel/k8stunnel/tui"
)

// The fake firewalls with a twist are kept here, together, as wrappers of
// fakeFirewall, so a change to the Firewall interface touches one place.

// failingFirewall fails the Install calls fail says to (n counts from 1).
type failingFirewall struct {
	*fakeFirewall
	mu   sync.Mutex
	n    int
	fail func(n int) error
}

func (f *failingFirewall) Install(ctx context.Context, s firewall.Spec) error {
	f.mu.Lock()
	f.n++
	n := f.n
	f.mu.Unlock()
	if err := f.fail(n); err != nil {
		return err
	}
	return f.fakeFirewall.Install(ctx, s)
}

// dyingFirewall is a firewall whose privileged part can die.
type dyingFirewall struct {
	*fakeFirewall
	done chan struct{}
}

func (f *dyingFirewall) Done() <-chan struct{} { return f.done }

func (f *fakeFirewall) specs() []firewall.Spec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.installs)
}

func (f *fakeFirewall) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

func prefix(s string) firewall.Target { return firewall.Target{Prefix: netip.MustParsePrefix(s)} }

// discovering serves channels with the real helper, which reports facts when
// asked for them.
func discovering(facts *mux.Facts) func(context.Context, io.ReadWriteCloser) {
	return func(ctx context.Context, rwc io.ReadWriteCloser) {
		server.Serve(ctx, server.Stream(rwc), server.Config{Program: "test server", Discover: func() *mux.Facts { return facts }})
	}
}

// runFailing runs a client that must fail before it is ready, and checks that
// it leaves no link, rule or goroutine behind.
func runFailing(t *testing.T, cfg Config, tr *transporttest.Transport, fw *fakeFirewall) error {
	t.Helper()
	if tr.Serve == nil {
		tr.Serve = discovering(nil)
	}
	cfg.Transport = tr
	cfg.Listen = []string{freeAddr(t)}
	if cfg.Include == nil && !cfg.AutoCIDRs {
		cfg.Include = []firewall.Target{prefix("10.96.0.0/12")}
	}
	if cfg.StartFirewall == nil {
		cfg.StartFirewall = func(context.Context) (Firewall, error) { return fw, nil }
	}
	cfg.OnReady = func() { t.Error("ready despite the failure") }
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(t.Context()) }()
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if err == nil {
		t.Fatal("Run = nil, want an error")
	}
	tr.Wait()
	for i, l := range tr.Links() {
		select {
		case <-l.Done():
		default:
			t.Errorf("link %d still open after Run failed", i)
		}
	}
	if fw != nil && len(tr.Links()) > 0 && !fw.isClosed() {
		t.Error("firewall not closed after Run failed")
	}
	if _, err := net.Dial("tcp", c.listeners[0].Addr().String()); err == nil {
		t.Error("listener still open after Run failed")
	}
	checkNoEngineGoroutines(t)
	return err
}

// expectReset dials the engine and wants the connection reset. The reset can
// come before the connect has completed on our side, and then the dial itself
// reports it.
func (e *engine) expectReset(t *testing.T) {
	t.Helper()
	app, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(int(e.c.Port())))
	if err == nil {
		defer app.Close()
		app.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = app.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection got %v, want a reset", err)
	}
}

// drain returns the log messages so far.
func (h engineLog) drain() []string {
	var ms []string
	for {
		select {
		case r := <-h:
			ms = append(ms, r.Message)
		default:
			return ms
		}
	}
}

func TestEngineMaxConns(t *testing.T) {
	e := startEngine(t, Config{MaxConns: 1}, &transporttest.Transport{}, echoTarget(t))
	first := e.dial(t)
	echo(t, first, "hold the only slot")
	e.logs.drain()

	// Each reset is logged before it is sent, so once both are seen the
	// warnings are all in.
	before := time.Now().Unix()
	e.expectReset(t)
	e.expectReset(t)
	after := time.Now().Unix()
	warns := 0
	for _, m := range e.logs.drain() {
		if m == "too many connections; resetting new ones" {
			warns++
		}
	}
	if warns == 0 || (before == after && warns != 1) {
		t.Errorf("%d warnings for two resets within a second, want 1", warns)
	}

	first.Close()
	// The slot is given back when the relay has seen the close.
	for deadline := time.Now().Add(10 * time.Second); e.c.active.Load() != 0; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatal("the closed connection still holds its slot")
		}
	}
	echo(t, e.dial(t), "a slot again")
	e.shutdown(t)
}

func TestEngineDropsUnroutable(t *testing.T) {
	e := startEngine(t, Config{}, &transporttest.Transport{}, echoTarget(t))

	self := func(c *net.TCPConn) (netip.AddrPort, error) { return c.LocalAddr().(*net.TCPAddr).AddrPort(), nil }
	e.origDst.Store(&self)
	e.expectReset(t)
	e.logs.wait(t, "dropping connection that was not redirected")

	broken := func(*net.TCPConn) (netip.AddrPort, error) { return netip.AddrPort{}, errors.New("no rule") }
	e.origDst.Store(&broken)
	e.expectReset(t)
	e.logs.wait(t, "dropping connection")

	e.origDst.Store(nil)
	echo(t, e.dial(t), "routed")
	if n := e.c.active.Load(); n != 1 {
		t.Errorf("%d active connections, want 1: the dropped ones must not count", n)
	}
	e.shutdown(t)
}

func TestEngineAutoCIDRs(t *testing.T) {
	facts := &mux.Facts{
		ServiceCIDRs: []string{"10.43.0.0/16"},
		PodCIDRs:     []string{"10.42.0.0/16", "not-a-cidr"},
		Sources:      []string{"k3s config"},
	}
	tr := &transporttest.Transport{Serve: discovering(facts)}
	// The service CIDR given by hand as well is not added twice.
	e := startEngine(t, Config{AutoCIDRs: true, Include: []firewall.Target{prefix("10.43.0.0/16")}}, tr, echoTarget(t))
	e.logs.wait(t, "found on the node: k3s config")
	e.logs.wait(t, "ignoring a CIDR from the node")
	e.logs.wait(t, "tunnel ready")
	specs := e.fw.specs()
	want := []firewall.Target{prefix("10.43.0.0/16"), prefix("10.42.0.0/16")}
	if len(specs) != 1 || !slices.Equal(specs[0].Include, want) {
		t.Errorf("firewall specs %+v, want one including %v", specs, want)
	}
	echo(t, e.dial(t), "hello")
	e.shutdown(t)
}

func TestEngineAutoCIDRsNoServiceCIDR(t *testing.T) {
	tr := &transporttest.Transport{Serve: discovering(&mux.Facts{PodCIDRs: []string{"10.244.0.0/16"}})}
	e := startEngine(t, Config{AutoCIDRs: true}, tr, echoTarget(t))
	e.logs.wait(t, "-N found no service CIDR on the node; service IPs are not forwarded. Pass the range as an argument, e.g. 10.96.0.0/12")
	if specs := e.fw.specs(); len(specs) != 1 || !slices.Equal(specs[0].Include, []firewall.Target{prefix("10.244.0.0/16")}) {
		t.Errorf("firewall specs %+v, want the pod CIDR only", specs)
	}
	e.shutdown(t)
}

func TestEngineAutoCIDRsNoneFound(t *testing.T) {
	for name, facts := range map[string]*mux.Facts{"empty": {}, "none": nil, "bad": {PodCIDRs: []string{"nope"}}} {
		t.Run(name, func(t *testing.T) {
			fw := &fakeFirewall{}
			err := runFailing(t, Config{AutoCIDRs: true}, &transporttest.Transport{Serve: discovering(facts)}, fw)
			var he *tui.HintError
			if !errors.As(err, &he) || !strings.Contains(he.Hint, "k8stunnel -r NODE") {
				t.Errorf("Run = %v (%T), want the HintError naming CIDRs by hand", err, err)
			}
			if n := len(fw.specs()); n != 0 {
				t.Errorf("%d rule sets installed, want none", n)
			}
		})
	}
}

func TestSpec(t *testing.T) {
	c := &Client{port: 12345, include: []firewall.Target{prefix("10.96.0.0/12")},
		cfg: Config{Exclude: make([]firewall.Target, 1, 4)}}
	c.cfg.Exclude[0] = prefix("10.96.0.1/32")
	s4 := c.spec(netip.MustParseAddr("192.0.2.7"))
	s6 := c.spec(netip.MustParseAddr("2001:db8::7"))
	if want := []firewall.Target{prefix("10.96.0.1/32"), prefix("192.0.2.7/32")}; !slices.Equal(s4.Exclude, want) {
		t.Errorf("Exclude %v, want %v", s4.Exclude, want)
	}
	// The second call must not have written over the first one's slice.
	if want := []firewall.Target{prefix("10.96.0.1/32"), prefix("2001:db8::7/128")}; !slices.Equal(s6.Exclude, want) ||
		s4.Exclude[1] != prefix("192.0.2.7/32") {
		t.Errorf("Exclude %v then %v, want each with its own server", s4.Exclude, s6.Exclude)
	}
	if s4.Port != 12345 || !slices.Equal(s4.Include, c.include) || s4.DNSPort != 0 || len(s4.DNS) != 0 {
		t.Errorf("spec %+v, want port 12345, the include and no DNS", s4)
	}
}

func TestNewValidates(t *testing.T) {
	fw := func(context.Context) (Firewall, error) { return &fakeFirewall{}, nil }
	inc := []firewall.Target{prefix("10.0.0.0/8")}
	tr := &transporttest.Transport{}
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no transport", Config{Include: inc, StartFirewall: fw}, "no transport"},
		{"no CIDRs", Config{Transport: tr, StartFirewall: fw}, "no CIDRs to forward"},
		{"no firewall", Config{Transport: tr, Include: inc}, "no firewall"},
		{"DNS without CIDRs", Config{Transport: tr, SOCKS: "127.0.0.1:0", DNS: &dnsproxy.Config{}}, "DNS capture needs CIDRs"},
		{"bad proxy address", Config{Transport: tr, SOCKS: "example.com:1080"}, `bad proxy address "example.com:1080"`},
		{"bad listen", Config{Transport: tr, Include: inc, StartFirewall: fw, Listen: []string{"localhost:80"}}, `bad listen address "localhost:80"`},
		{"foreign address", Config{Transport: tr, Include: inc, StartFirewall: fw, Listen: []string{"192.0.2.1:12300"}}, "listening on 192.0.2.1:12300"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if err == nil {
				closeListeners(c)
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want %q", err, tt.want)
			}
		})
	}
	// A proxy alone needs neither CIDRs nor a firewall.
	c, err := New(Config{Transport: tr, HTTPProxy: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("New with only a proxy: %v", err)
	}
	c.Close()
	// AutoCIDRs stands in for CIDRs, and the zero values get defaults.
	c, err = New(Config{Transport: tr, AutoCIDRs: true, StartFirewall: fw, Listen: []string{freeAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer closeListeners(c)
	if c.cfg.Channels != 0 || c.cfg.MaxConns != DefaultMaxConns || c.log == nil || c.Port() == 0 {
		t.Errorf("defaults: channels %d, max conns %d, port %d", c.cfg.Channels, c.cfg.MaxConns, c.Port())
	}
}

// freeAddr is a loopback address with a port free a moment ago; New does not
// take port 0, and moves lower should someone have taken it since.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func closeListeners(c *Client) {
	for _, l := range c.listeners {
		l.Close()
	}
}

func TestListenFallsBack(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	logs := make(engineLog, 10)
	c, err := New(Config{Transport: &transporttest.Transport{}, Include: []firewall.Target{prefix("10.0.0.0/8")},
		StartFirewall: func(context.Context) (Firewall, error) { return &fakeFirewall{}, nil },
		Listen:        []string{"127.0.0.1:" + strconv.Itoa(port)}, Log: slog.New(logtest.Records(logs))})
	if err != nil {
		t.Fatal(err)
	}
	defer closeListeners(c)
	if p := int(c.Port()); p >= port || p < port-100 {
		t.Errorf("port %d, want one just below the taken %d", p, port)
	}
	if got := c.listeners[0].Addr().(*net.TCPAddr).Port; got != int(c.Port()) {
		t.Errorf("listening on %d, Port says %d", got, c.Port())
	}
	logs.wait(t, "listen port taken, using a lower one")
}

// Without Listen the client takes the default port or one below it, on
// loopback of each family this host has.
func TestListenDefault(t *testing.T) {
	c, err := New(Config{Transport: &transporttest.Transport{}, Include: []firewall.Target{prefix("10.0.0.0/8")},
		StartFirewall: func(context.Context) (Firewall, error) { return &fakeFirewall{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer closeListeners(c)
	if p := c.Port(); p > DefaultPort || p <= DefaultPort-100 {
		t.Errorf("port %d, want %d or a little below", p, DefaultPort)
	}
	if a := c.listeners[0].Addr().(*net.TCPAddr); !a.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("first listener on %v, want 127.0.0.1", a)
	}
}

// An optional IPv6 address this host lacks is skipped; a required one, or
// nothing left to listen on, is an error.
func TestListenAllOptionalIPv6(t *testing.T) {
	v4 := netip.MustParseAddrPort("127.0.0.1:0")
	absent := netip.MustParseAddrPort("[2001:db8::1]:0") // documentation prefix: on no host
	ls, err := listenAll([]netip.AddrPort{v4, absent}, 0, true)
	if err != nil {
		t.Fatalf("optional absent IPv6: %v", err)
	}
	for _, l := range ls {
		l.Close()
	}
	if len(ls) != 1 {
		t.Errorf("%d listeners, want the IPv4 one only", len(ls))
	}
	if _, err := listenAll([]netip.AddrPort{absent}, 0, true); err == nil || err.Error() != "no address to listen on" {
		t.Errorf("only an absent optional address: %v, want no address to listen on", err)
	}
	if _, err := listenAll([]netip.AddrPort{v4, absent}, 0, false); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Errorf("required absent IPv6: %v, want EADDRNOTAVAIL", err)
	}
}

func TestEngineStartFirewallFails(t *testing.T) {
	errSudo := errors.New("sudo: a password is required")
	tr := &transporttest.Transport{}
	err := runFailing(t, Config{StartFirewall: func(context.Context) (Firewall, error) { return nil, errSudo }}, tr, nil)
	if !errors.Is(err, errSudo) {
		t.Errorf("Run = %v, want the firewall's error", err)
	}
	if n := len(tr.Links()); n != 0 {
		t.Errorf("%d links made, want none before the firewall is up", n)
	}
}

func TestEngineInstallFails(t *testing.T) {
	errRules := errors.New("iptables: no chain")
	fw := &fakeFirewall{}
	ff := &failingFirewall{fakeFirewall: fw, fail: func(int) error { return errRules }}
	tr := &transporttest.Transport{}
	err := runFailing(t, Config{StartFirewall: func(context.Context) (Firewall, error) { return ff, nil }}, tr, fw)
	if !errors.Is(err, errRules) || !strings.HasPrefix(err.Error(), "installing firewall rules") {
		t.Errorf("Run = %v, want installing firewall rules: %v", err, errRules)
	}
	if n := len(tr.Links()); n != 1 {
		t.Errorf("%d links, want 1", n)
	}
}

// TestEngineFirewallDies: when the privileged part dies, its rules may still
// send connections to our port. The client keeps the port (so no other local
// user can take it and receive the redirected traffic), resets connections,
// and starts a new privileged part until one installs the rules again.
func TestEngineFirewallDies(t *testing.T) {
	defer func(d time.Duration) { firewallRetry = d }(firewallRetry)
	firewallRetry = 10 * time.Millisecond
	first := &dyingFirewall{fakeFirewall: &fakeFirewall{}, done: make(chan struct{})}
	second := &fakeFirewall{}
	var starts atomic.Int32
	refuse := make(chan struct{}) // open while starting again fails
	start := func(context.Context) (Firewall, error) {
		switch starts.Add(1) {
		case 1:
			return first, nil
		}
		select {
		case <-refuse:
			return second, nil
		default:
			return nil, errors.New("sudo: a password is required")
		}
	}
	tr := &transporttest.Transport{}
	e := startEngine(t, Config{StartFirewall: start}, tr, echoTarget(t))
	echo(t, e.dial(t), "hello")
	close(first.done)
	waitFor(t, "a second start of the firewall helper", func() bool { return starts.Load() >= 3 })
	e.expectReset(t)
	addr := "127.0.0.1:" + strconv.Itoa(int(e.c.Port()))
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("%s could be bound by someone else while the rules may still point at it", addr)
	}
	close(refuse)
	waitFor(t, "the rules installed by the new firewall helper", func() bool { return len(second.specs()) == 1 })
	waitFor(t, "connections relayed again", func() bool { return !e.c.fwLost.Load() })
	echo(t, e.dial(t), "again")
	e.fw = second // the one shutdown must find closed
	e.shutdown(t)
}

// TestEngineFirewallNeverBack: a lost privileged part that cannot be started
// again leaves the port held until the user stops the client, which then
// tries once more to remove the rules, and says how to if that fails too.
func TestEngineFirewallNeverBack(t *testing.T) {
	defer func(d time.Duration) { firewallRetry = d }(firewallRetry)
	firewallRetry = 10 * time.Millisecond
	fw := &dyingFirewall{fakeFirewall: &fakeFirewall{}, done: make(chan struct{})}
	var starts atomic.Int32
	start := func(context.Context) (Firewall, error) {
		if starts.Add(1) == 1 {
			return fw, nil
		}
		return nil, errors.New("sudo: a password is required")
	}
	tr := &transporttest.Transport{}
	e := startEngine(t, Config{StartFirewall: start}, tr, echoTarget(t))
	close(fw.done)
	waitFor(t, "a second start of the firewall helper", func() bool { return starts.Load() >= 2 })
	select {
	case err := <-e.run:
		t.Fatalf("Run returned %v while the rules may still point at its port", err)
	case <-time.After(50 * time.Millisecond):
	}
	e.expectReset(t)
	before := starts.Load()
	e.stop()
	err := <-e.run
	var he *tui.HintError
	if !errors.As(err, &he) || !strings.Contains(he.Hint, "sudo k8stunnel cleanup") {
		t.Errorf("Run = %v (%T), want the HintError about sudo k8stunnel cleanup", err, err)
	}
	if starts.Load() <= before {
		t.Error("no last attempt to remove the rules on exit")
	}
	tr.Wait()
	if l := tr.Links()[0]; l.Err() == nil {
		t.Error("link still open after Run returned")
	}
}

func TestEngineServerMoves(t *testing.T) {
	moved := netip.MustParseAddr("192.0.2.2")
	tr := &transporttest.Transport{ServerAt: func(attempt int) netip.Addr {
		if attempt == 1 {
			return netip.MustParseAddr("192.0.2.1")
		}
		return moved
	}}
	e := startEngine(t, Config{Exclude: []firewall.Target{prefix("10.96.0.1/32")}}, tr, echoTarget(t))
	tr.Links()[0].Kill(errors.New("cable cut"))
	e.logs.wait(t, "tunnel restored")
	specs := e.fw.specs()
	if len(specs) != 2 {
		t.Fatalf("%d rule sets installed, want 2", len(specs))
	}
	if want := []firewall.Target{prefix("10.96.0.1/32"), prefix("192.0.2.2/32")}; !slices.Equal(specs[1].Exclude, want) {
		t.Errorf("new Exclude %v, want %v", specs[1].Exclude, want)
	}
	echo(t, e.dial(t), "via the moved node")

	// Same address on the next reconnect: the rules stay as they are.
	tr.Links()[1].Kill(errors.New("cable cut"))
	e.logs.wait(t, "tunnel restored")
	if n := len(e.fw.specs()); n != 2 {
		t.Errorf("%d rule sets after a reconnect to the same address, want 2", n)
	}
	e.shutdown(t)
}

func TestEngineServerMovesInstallFails(t *testing.T) {
	errRules := errors.New("iptables: busy")
	fw := &fakeFirewall{}
	ff := &failingFirewall{fakeFirewall: fw, fail: func(n int) error {
		if n > 1 {
			return errRules
		}
		return nil
	}}
	tr := &transporttest.Transport{ServerAt: func(attempt int) netip.Addr {
		return netip.AddrFrom4([4]byte{192, 0, 2, byte(attempt)})
	}}
	e := startEngine(t, Config{StartFirewall: func(context.Context) (Firewall, error) { return ff, nil }}, tr, echoTarget(t))
	tr.Links()[0].Kill(errors.New("cable cut"))
	var err error
	select {
	case err = <-e.run:
	case <-time.After(10 * time.Second):
		t.Fatal("Run still going after the rules could not be updated")
	}
	if !errors.Is(err, errRules) || !strings.HasPrefix(err.Error(), "updating firewall rules") {
		t.Errorf("Run = %v, want updating firewall rules: %v", err, errRules)
	}
	tr.Wait()
	for i, l := range tr.Links() {
		if l.Err() == nil {
			t.Errorf("link %d still open", i)
		}
	}
	if !fw.isClosed() {
		t.Error("firewall not closed")
	}
	checkNoEngineGoroutines(t)
}

func TestEngineDNS(t *testing.T) {
	target := echoTarget(t)
	// The laptop's resolver: a socket that never answers.
	resolver, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer resolver.Close()
	cfg := Config{DNS: &dnsproxy.Config{
		ClusterDNS: netip.MustParseAddr("10.96.0.10"),
		Upstreams:  []netip.AddrPort{resolver.LocalAddr().(*net.UDPAddr).AddrPort()},
		Listen:     []netip.Addr{netip.MustParseAddr("127.0.0.1")},
	}}
	e := startEngine(t, cfg, &transporttest.Transport{}, target)
	specs := e.fw.specs()
	d := e.c.dns
	if d == nil {
		t.Fatal("no DNS proxy")
	}
	if len(specs) != 1 || specs[0].DNSPort == 0 || specs[0].DNSPort != d.Port() || !slices.Equal(specs[0].DNS, d.Resolvers()) {
		t.Errorf("firewall spec %+v, want the DNS proxy's port %d and resolvers %v", specs, d.Port(), d.Resolvers())
	}
	// A name outside the cluster goes to the laptop's resolver from a socket
	// the firewall marked (whether anything answers there does not matter).
	m := new(dns.Msg).SetQuestion("example.test.", dns.TypeA)
	(&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(m, fmt.Sprintf("127.0.0.1:%d", d.Port()))
	e.fw.mu.Lock()
	marked := e.fw.marked
	e.fw.mu.Unlock()
	if marked == 0 {
		t.Error("the DNS proxy asked the laptop's resolver from a socket the firewall did not mark")
	}
	// The proxy's streams go through the tunnel: here to the echo service.
	st, err := e.c.dialDNS(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, st, "query")
	st.Close()
	if s := e.c.Stats(); s.DNS == nil || s.DNS.Queries != 0 {
		t.Errorf("Stats().DNS = %+v, want the proxy's counters, 0 queries", s.DNS)
	}
	e.shutdown(t)

	if _, err := e.c.dialDNS(t.Context(), target); err == nil {
		t.Error("dialDNS with the tunnel down succeeded")
	}
}

// Without a cluster DNS IP, given or found, the tunnel does not start.
func TestEngineDNSFails(t *testing.T) {
	err := runFailing(t, Config{DNS: &dnsproxy.Config{
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")},
		Listen:    []netip.Addr{netip.MustParseAddr("127.0.0.1")},
	}}, &transporttest.Transport{Serve: discovering(&mux.Facts{})}, &fakeFirewall{})
	if !errors.Is(err, dnsproxy.ErrNoClusterDNS) {
		t.Errorf("Run = %v, want ErrNoClusterDNS", err)
	}
}

// With several channels, a new stream goes to the session with the fewest.
func TestLinkPick(t *testing.T) {
	l := linkOf(muxPair(t), muxPair(t), muxPair(t))
	dst := netip.MustParseAddrPort("10.96.0.1:80")
	for i, n := range []int{2, 0, 1} {
		for range n {
			st, err := l.channels()[i].Dial(dst)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
		}
	}
	for range 6 {
		if got, i := l.pick(); got != l.channels()[1] || i != 1 {
			t.Fatalf("picked the session with %d streams, want the idle one", got.NumStreams())
		}
	}
	// Among equals it rotates, so idle sessions all get used.
	even := linkOf(muxPair(t), muxPair(t))
	seen := map[*mux.Session]bool{}
	for range 4 {
		s, _ := even.pick()
		seen[s] = true
	}
	if len(seen) != 2 {
		t.Errorf("picked %d of 2 idle sessions, want both", len(seen))
	}
}

// linkOf is a link made of sessions ss.
func linkOf(ss ...*mux.Session) *link {
	l := &link{}
	for _, s := range ss {
		l.add(s)
	}
	return l
}

// sessionsOf is the current link's sessions.
func (e *engine) sessions() []*mux.Session {
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	if e.c.links == nil {
		return nil
	}
	return e.c.links.channels()
}

// With two channels, concurrent connections are spread over both helpers.
func TestEngineChannelsSpread(t *testing.T) {
	e := startEngine(t, Config{Channels: 2}, &transporttest.Transport{}, echoTarget(t))
	a, b := e.dial(t), e.dial(t)
	echo(t, a, "one")
	echo(t, b, "two")
	ss := e.sessions()
	if len(ss) != 2 || ss[0].NumStreams() != 1 || ss[1].NumStreams() != 1 {
		t.Errorf("streams per session: %d and %d, want one each", ss[0].NumStreams(), ss[1].NumStreams())
	}
	e.shutdown(t)
}

// By default a link gets as many channels as its round trip needs for the
// SSH windows (2 MiB each) to carry 2 Gbit/s together: one on a LAN.
func TestChannelsFor(t *testing.T) {
	for _, tc := range []struct {
		rtt  time.Duration
		want int
	}{
		{0, 1}, // not measured
		{200 * time.Microsecond, 1},
		{8 * time.Millisecond, 1},
		{10 * time.Millisecond, 2},
		{20 * time.Millisecond, 3},
		{50 * time.Millisecond, 6},
		{100 * time.Millisecond, 8},
		{2 * time.Second, 8},
	} {
		if got := channelsFor(tc.rtt); got != tc.want {
			t.Errorf("channelsFor(%v) = %d, want %d", tc.rtt, got, tc.want)
		}
	}
}

// Without Channels set, a link whose round trip is long opens more channels
// and spreads connections over them; a short one opens one.
func TestEngineChannelsByRTT(t *testing.T) {
	for _, tc := range []struct {
		rtt  time.Duration
		want int
	}{{time.Millisecond, 1}, {50 * time.Millisecond, 6}} {
		tr := &transporttest.Transport{RTT: tc.rtt}
		e := startEngine(t, Config{}, tr, echoTarget(t))
		// The link is up with one; the others join as their helpers start.
		waitFor(t, fmt.Sprintf("%d sessions", tc.want), func() bool { return len(e.sessions()) == tc.want })
		for i := range tc.want {
			echo(t, e.dial(t), strconv.Itoa(i))
		}
		if got := tr.Links()[0].Opens(); got != tc.want {
			t.Errorf("rtt %v: %d channels opened, want %d", tc.rtt, got, tc.want)
		}
		for i, s := range e.sessions() {
			if s.NumStreams() != 1 {
				t.Errorf("rtt %v: session %d carries %d streams, want 1", tc.rtt, i, s.NumStreams())
			}
		}
		e.shutdown(t)
	}
}

// The channels a long round trip asks for beyond the first are a speed-up:
// when they fail or never answer (a busy node, a round trip inflated by load
// on a LAN), the link goes on with the channels it has instead of failing
// the attempt; a reconnect does not wait for them at all.
func TestEngineExtraChannelsBestEffort(t *testing.T) {
	defer func(d time.Duration) { extraChannelsTimeout = d }(extraChannelsTimeout)
	for _, tc := range []struct {
		name  string
		extra func(ctx context.Context, rwc io.ReadWriteCloser)
	}{
		{"refused", func(_ context.Context, rwc io.ReadWriteCloser) { rwc.Close() }},
		{"silent", func(ctx context.Context, rwc io.ReadWriteCloser) { <-ctx.Done() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extraChannelsTimeout = 300 * time.Millisecond
			// The first channel of each link (ctx is the link's life) has a
			// helper that answers.
			var mu sync.Mutex
			opened := map[context.Context]int{}
			tr := &transporttest.Transport{RTT: 50 * time.Millisecond, Serve: func(ctx context.Context, rwc io.ReadWriteCloser) {
				mu.Lock()
				opened[ctx]++
				first := opened[ctx] == 1
				mu.Unlock()
				if first {
					server.Serve(ctx, server.Stream(rwc), server.Config{Program: "test server"})
					return
				}
				tc.extra(ctx, rwc)
			}}
			e := startEngine(t, Config{}, tr, echoTarget(t))
			echo(t, e.dial(t), "one channel is enough")
			waitFor(t, "6 channels opened (the first and 5 tried)", func() bool { return tr.Links()[0].Opens() == 6 })
			echo(t, e.dial(t), "still")
			if n := len(e.sessions()); n != 1 {
				t.Errorf("%d sessions, want the 1 that came up", n)
			}
			if st := e.c.Stats(); st.Reconnects != 0 {
				t.Errorf("%d reconnects, want none", st.Reconnects)
			}

			// A reconnect is up with its first channel, before the others
			// have had their time.
			extraChannelsTimeout = time.Hour
			tr.Links()[0].Kill(errors.New("link lost"))
			waitFor(t, "a new link", func() bool { return len(tr.Links()) == 2 && len(e.sessions()) == 1 })
			echo(t, e.dial(t), "after the reconnect")
			e.shutdown(t)
		})
	}
}

// A helper that never answers the handshake fails the first connect.
func TestEngineHelperDoesNotStart(t *testing.T) {
	tr := &transporttest.Transport{Serve: func(_ context.Context, rwc io.ReadWriteCloser) { rwc.Close() }}
	err := runFailing(t, Config{}, tr, &fakeFirewall{})
	if !strings.HasPrefix(err.Error(), "starting the helper on the node") {
		t.Errorf("Run = %v, want starting the helper on the node: ...", err)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s after 10s", what)
		}
	}
}

// The helper opens streams only to reset the client's. A node that opens
// connect streams is broken or hostile: none may reach anything on the
// client, each must fail at once on the node's side, and what the node
// opened must not keep the client's goroutines (a handler, a reset sent
// back, a linger) or hold the tunnel.
func TestEngineRefusesNodeStreams(t *testing.T) {
	attack := make(chan struct{})
	attacked := make(chan []error, 1)
	var first atomic.Bool
	tr := &transporttest.Transport{Serve: func(ctx context.Context, rwc io.ReadWriteCloser) {
		if first.Swap(true) {
			server.Serve(ctx, server.Stream(rwc), server.Config{Program: "test server"})
			return
		}
		node, err := mux.NewServer(rwc, func(mux.Hello) mux.Hello { return mux.Hello{Program: "hostile"} }, slog.New(slog.DiscardHandler))
		if err != nil {
			return
		}
		defer node.Close()
		go node.Serve(ctx, func(req mux.Request, st *mux.Stream) { // it relays, too
			c, err := net.Dial("tcp", req.Dst.String())
			if err != nil {
				st.WriteStatus(mux.StatusRefused)
				st.Close()
				return
			}
			st.WriteStatus(mux.StatusOK)
			mux.Relay(mux.NetConn(c), st)
		})
		select {
		case <-attack:
		case <-ctx.Done():
			return
		}
		const streams = 1000
		errs := make([]error, streams)
		var wg sync.WaitGroup
		for i := range streams {
			st, err := node.Dial(netip.MustParseAddrPort("127.0.0.1:22"))
			if err != nil {
				<-node.Done() // fails only once the client has closed the session
				errs[i] = mux.ErrSessionLost
				continue
			}
			defer st.Close() // never before the session ends: a hostile node holds them
			wg.Go(func() {
				st.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, errs[i] = st.Read(make([]byte, 1))
			})
		}
		wg.Wait()
		attacked <- errs
		select {
		case <-node.Done():
		case <-ctx.Done():
		}
	}}
	e := startEngine(t, Config{}, tr, echoTarget(t))
	echo(t, e.dial(t), "before")
	e.logs.drain()
	// The refusals' debug lines overflow the test's log channel, which drops
	// what does not fit, "tunnel restored" too at times: the reconnect is
	// read from the engine's counter instead.
	go func() {
		for range e.logs {
		}
	}()
	baseline := runtime.NumGoroutine()

	start := time.Now()
	close(attack)
	bad := 0
	for i, err := range <-attacked {
		var de *mux.DialError
		if !(errors.As(err, &de) && de.Status == mux.StatusRefused) && !errors.Is(err, mux.ErrSessionLost) {
			if bad++; bad == 1 {
				t.Errorf("node stream %d: %v, want it refused (or the session ended)", i, err)
			}
		}
	}
	if bad > 1 {
		t.Errorf("%d node streams not refused", bad)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the node's streams took %v to fail, want them refused at once", d)
	}
	// What the node opened must not keep anything on the client.
	for deadline := time.Now().Add(time.Second); runtime.NumGoroutine() > baseline+10; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines a second after the node's streams were refused, %d before", runtime.NumGoroutine(), baseline)
		}
	}
	// A node this broken loses its session; the tunnel comes back.
	for deadline := time.Now().Add(10 * time.Second); e.c.reconnects.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the tunnel did not come back")
		}
	}
	echo(t, e.dial(t), "after")
	e.shutdown(t)
}
