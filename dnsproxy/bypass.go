package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// bypass sends queries to the laptop's own resolvers from one port, the
// firewall's DNSBypassPort, so its DNS rules do not capture them again.
type bypass struct {
	port uint16
	udp  *net.UDPConn
	// tcpFD holds port for TCP: bound, never listening, so the queries over
	// TCP can bind it too (SO_REUSEADDR) while no other program's connection
	// takes it.
	tcpFD int
	// tcpSem serialises TCP queries: they all use the one local port.
	tcpSem chan struct{}

	mu      sync.Mutex
	pending map[pendingKey]*pendingQuery
}

type pendingKey struct {
	server netip.AddrPort
	id     uint16
}

type pendingQuery struct {
	q  dns.Question
	ch chan *dns.Msg
}

func newBypass(port uint16) (*bypass, error) {
	for attempt := 1; ; attempt++ {
		u, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
		if err != nil {
			return nil, fmt.Errorf("binding the DNS bypass port %d: %w", port, err)
		}
		got := uint16(u.LocalAddr().(*net.UDPAddr).Port)
		fd, err := reserveTCPPort(got)
		if err == nil {
			return &bypass{port: got, udp: u, tcpFD: fd, tcpSem: make(chan struct{}, 1),
				pending: make(map[pendingKey]*pendingQuery)}, nil
		}
		u.Close()
		if port != 0 || !errors.Is(err, syscall.EADDRINUSE) || attempt == portAttempts {
			return nil, fmt.Errorf("binding the DNS bypass port %d/tcp: %w", got, err)
		}
	}
}

func (b *bypass) close() {
	b.udp.Close()
	if b.tcpFD >= 0 {
		closeFD(b.tcpFD)
		b.tcpFD = -1
	}
}

// readLoop hands each answer to the query waiting for it, until the socket
// is closed. Answers nobody waits for (late, or spoofed) are dropped.
func (b *bypass) readLoop() {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := b.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil || len(m.Question) != 1 {
			continue
		}
		key := pendingKey{server: plainAddrPort(from), id: m.Id}
		b.mu.Lock()
		pq := b.pending[key]
		if pq != nil && sameQuestion(pq.q, m.Question[0]) {
			delete(b.pending, key)
		} else {
			pq = nil
		}
		b.mu.Unlock()
		if pq != nil {
			pq.ch <- m
		}
	}
}

// plainAddrPort is how servers are keyed: an IPv4 address in its own form
// (a dual-stack socket reports it IPv4-mapped) and without zone.
func plainAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// exchangeUDP asks server over UDP. The query gets an ID of our own, unique
// among the queries in flight to server, and the answer gets the client's
// back.
func (b *bypass) exchangeUDP(ctx context.Context, server netip.AddrPort, req *dns.Msg) (*dns.Msg, error) {
	q := req.Copy()
	pq := &pendingQuery{q: q.Question[0], ch: make(chan *dns.Msg, 1)}
	key := pendingKey{server: plainAddrPort(server)}
	b.mu.Lock()
	for {
		key.id = uint16(rand.Uint32())
		if b.pending[key] == nil {
			break
		}
	}
	b.pending[key] = pq
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		if b.pending[key] == pq {
			delete(b.pending, key)
		}
		b.mu.Unlock()
	}()

	q.Id = key.id
	msg, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("packing a query for %v: %w", server, err)
	}
	if _, err := b.udp.WriteToUDPAddrPort(msg, server); err != nil {
		return nil, fmt.Errorf("asking %v: %w", server, err)
	}
	select {
	case resp := <-pq.ch:
		resp.Id = req.Id
		return resp, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("asking %v: %w", server, ctx.Err())
	}
}

// exchangeTCP asks server over TCP from the bypass port.
func (b *bypass) exchangeTCP(ctx context.Context, server netip.AddrPort, req *dns.Msg) (*dns.Msg, error) {
	select {
	case b.tcpSem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("asking %v over TCP: %w", server, ctx.Err())
	}
	defer func() { <-b.tcpSem }()

	d := net.Dialer{
		LocalAddr: &net.TCPAddr{Port: int(b.port)},
		Control:   func(_, _ string, rc syscall.RawConn) error { return reuseAddr(rc) },
	}
	c, err := d.DialContext(ctx, "tcp", server.String())
	if err != nil {
		return nil, fmt.Errorf("asking %v over TCP: %w", server, err)
	}
	tc := c.(*net.TCPConn)
	defer func() {
		// The next query uses the same local port: a reset leaves no
		// TIME_WAIT behind to block this address pair for a minute.
		tc.SetLinger(0)
		tc.Close()
	}()
	stop := context.AfterFunc(ctx, func() { tc.SetDeadline(time.Now()) })
	defer stop()
	co := &dns.Conn{Conn: tc}
	if err := co.WriteMsg(req); err != nil {
		return nil, fmt.Errorf("asking %v over TCP: %w", server, ctxErr(ctx, err))
	}
	for {
		resp, err := co.ReadMsg()
		if err != nil {
			return nil, fmt.Errorf("asking %v over TCP: %w", server, ctxErr(ctx, err))
		}
		if resp.Id == req.Id {
			return resp, nil
		}
	}
}
