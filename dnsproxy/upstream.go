package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// maxUpstreamQueries bounds the queries to the laptop's resolvers in
// flight, each of which holds a socket of its own.
const maxUpstreamQueries = 256

// upstream asks the laptop's own resolvers the way a stub resolver does:
// each query from a fresh socket on a port the kernel picks at random, with
// a random ID, so a blind spoofer has to guess both (and, over UDP, the
// kernel only lets the server's own address answer). Every socket is marked
// before it sends anything, so the firewall's DNS rules let it through
// instead of capturing it again.
type upstream struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	sem  chan struct{}
}

// newUpstream asks through dial, or when it is nil from sockets that mark
// gives the firewall's mark (none when mark is nil too).
func newUpstream(mark func(context.Context, int) error, dial func(context.Context, string, string) (net.Conn, error)) *upstream {
	if dial == nil {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := net.Dialer{Control: markControl(ctx, mark)}
			return d.DialContext(ctx, network, addr)
		}
	}
	return &upstream{dial: dial, sem: make(chan struct{}, maxUpstreamQueries)}
}

// exchange asks server over network ("udp" or "tcp") and returns its answer
// to req, with req's ID.
func (u *upstream) exchange(ctx context.Context, network string, server netip.AddrPort, req *dns.Msg) (*dns.Msg, error) {
	select {
	case u.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("asking %v over %s: %w", server, network, ctx.Err())
	}
	defer func() { <-u.sem }()

	c, err := u.dial(ctx, network, server.String())
	if err != nil {
		return nil, fmt.Errorf("asking %v over %s: %w", server, network, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	q := req.Copy()
	q.Id = uint16(rand.Uint32())
	co := &dns.Conn{Conn: c, UDPSize: dns.MaxMsgSize}
	if err := co.WriteMsg(q); err != nil {
		return nil, fmt.Errorf("asking %v over %s: %w", server, network, ctxErr(ctx, err))
	}
	for {
		p, err := co.ReadMsgHeader(nil)
		if errors.Is(err, dns.ErrShortRead) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("asking %v over %s: %w", server, network, ctxErr(ctx, err))
		}
		// Anything else (late, garbled or spoofed) is dropped: only the
		// answer to this very question, with this ID, is taken.
		resp := new(dns.Msg)
		if resp.Unpack(p) != nil || !resp.Response || resp.Id != q.Id ||
			len(resp.Question) != 1 || !sameQuestion(resp.Question[0], q.Question[0]) {
			continue
		}
		resp.Id = req.Id
		return resp, nil
	}
}

// markControl is a net.Dialer Control that marks a socket between its
// creation and its connect.
func markControl(ctx context.Context, mark func(context.Context, int) error) func(string, string, syscall.RawConn) error {
	if mark == nil {
		return nil
	}
	return func(_, _ string, rc syscall.RawConn) error {
		var merr error
		err := rc.Control(func(fd uintptr) { merr = mark(ctx, int(fd)) })
		return errors.Join(err, merr)
	}
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
