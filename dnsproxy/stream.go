package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// exchangeTunnel asks server over DNS-over-TCP on a tunnel stream, reusing
// an idle stream when there is one.
func (p *Proxy) exchangeTunnel(ctx context.Context, server netip.AddrPort, req *dns.Msg) (*dns.Msg, error) {
	for {
		s := p.streams.get(server)
		reused := s != nil
		if s == nil {
			c, err := p.dial(ctx, server)
			if err != nil {
				return nil, fmt.Errorf("opening a stream to %v: %w", server, err)
			}
			s = newDNSStream(c)
		}
		resp, err := s.exchange(ctx, req)
		if err == nil {
			p.streams.put(server, s)
			return resp, nil
		}
		s.close()
		if !reused || ctx.Err() != nil {
			return nil, fmt.Errorf("asking %v through the tunnel: %w", server, err)
		}
		// The server or a reconnect ended the idle stream: use a fresh one.
	}
}

// dnsStream is one DNS-over-TCP connection through the tunnel.
type dnsStream struct {
	conn net.Conn
	dc   *dns.Conn
	idle time.Time // when it was last put back
}

func newDNSStream(c net.Conn) *dnsStream {
	return &dnsStream{conn: c, dc: &dns.Conn{Conn: c}}
}

// exchange sends req and reads answers until the one with req's ID: an
// earlier, abandoned query's answer may still be on its way.
func (s *dnsStream) exchange(ctx context.Context, req *dns.Msg) (*dns.Msg, error) {
	stop := context.AfterFunc(ctx, s.interrupt)
	defer stop()
	if err := s.dc.WriteMsg(req); err != nil {
		return nil, ctxErr(ctx, err)
	}
	for {
		resp, err := s.dc.ReadMsg()
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		if resp.Id == req.Id {
			return resp, nil
		}
	}
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// interrupt unblocks a read or write in progress; the caller closes the
// stream once exchange has returned. Closing it here, under a reader still
// blocked, could undo the deadline: a tunnel stream's Close waits for the
// peer with a read deadline of its own.
func (s *dnsStream) interrupt() { s.conn.SetDeadline(time.Now()) }

func (s *dnsStream) close() { s.conn.Close() }

// streamPool keeps idle tunnel streams per server.
type streamPool struct {
	mu     sync.Mutex
	idle   map[netip.AddrPort][]*dnsStream
	closed bool
}

// get returns the most recently used idle stream to server, or nil.
func (sp *streamPool) get(server netip.AddrPort) *dnsStream {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for list := sp.idle[server]; len(list) > 0; list = sp.idle[server] {
		s := list[len(list)-1]
		sp.idle[server] = list[:len(list)-1]
		if time.Since(s.idle) < maxStreamIdle {
			return s
		}
		s.close()
	}
	return nil
}

func (sp *streamPool) put(server netip.AddrPort, s *dnsStream) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.closed || len(sp.idle[server]) >= maxIdleStreams {
		s.close()
		return
	}
	if sp.idle == nil {
		sp.idle = make(map[netip.AddrPort][]*dnsStream)
	}
	s.idle = time.Now()
	sp.idle[server] = append(sp.idle[server], s)
}

func (sp *streamPool) closeAll() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.closed = true
	for _, list := range sp.idle {
		for _, s := range list {
			s.close()
		}
	}
	sp.idle = nil
}
