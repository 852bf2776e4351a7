package client

import (
	"io"
	"sync"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/transport"
)

// The states Stats reports.
const (
	StateStarting     = "starting"
	StateConnected    = "connected"
	StateReconnecting = "reconnecting"
	// StateFirewallLost: the privileged part died; connections are reset
	// until a new one has the rules in.
	StateFirewallLost = "firewall lost"
)

// Stats is a snapshot of what a running tunnel is doing, for `k8stunnel status`.
type Stats struct {
	Remote     string    // user@host:port of the node, once connected
	State      string    // one of the State constants
	Since      time.Time // when State began
	Started    time.Time // when Run began
	Reconnects int64     // links restored after one was lost
	// RTT is the link's last measured round trip (SSH keepalive); 0 when
	// none was measured yet or the link is down.
	RTT         time.Duration
	ConnsActive int64
	ConnsTotal  int64
	// BytesSent went from the laptop's applications to their targets,
	// BytesReceived the other way.
	BytesSent, BytesReceived int64
	Forward                  []string // the CIDRs captured, with their ports
	Port                     uint16
	// DNS is set with the DNS proxy: queries answered, and how many of
	// those with SERVFAIL.
	DNS *DNSStats
	// Expose lists the -R entries.
	Expose []ExposeStats
	// UDP is set with the UDP capture.
	UDP *UDPStats
}

// DNSStats counts the DNS proxy's answers.
type DNSStats struct{ Queries, Failures int64 }

// Stats says what the tunnel is doing now; safe to call at any time.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	s := Stats{State: c.state, Since: c.stateSince, Started: c.started}
	l := c.links
	c.mu.Unlock()
	if l != nil {
		s.Remote = l.target
		if r, ok := l.tl.(transport.RTTReporter); ok {
			s.RTT = r.RTT()
		}
	}
	s.Reconnects = c.reconnects.Load()
	s.ConnsActive, s.ConnsTotal = c.active.Load(), c.connsTotal.Load()
	s.BytesSent, s.BytesReceived = c.bytesSent.Load(), c.bytesReceived.Load()
	if s.State != StateStarting {
		// Settled before the first link was set, which the lock orders.
		for _, t := range c.include {
			s.Forward = append(s.Forward, t.String())
		}
		if c.dns != nil {
			q, f := c.dns.Stats()
			s.DNS = &DNSStats{Queries: q, Failures: f}
		}
	}
	s.Port = c.port
	s.Expose = c.exposeStats()
	if c.udpPort != 0 {
		u := c.udp.snapshot()
		s.UDP = &u
	}
	return s
}

func (c *Client) setState(state string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != state {
		c.state, c.stateSince = state, time.Now()
	}
}

// counted is the application's side of a relayed connection: it adds what
// passes to the client's totals and keeps the connection's own, with the
// first failure on that side, for the connection's close line. Relay reads it
// in one goroutine and writes it in another, so each field has one writer.
type counted struct {
	mux.Conn
	c                 *Client
	sent, received    int64
	readErr, writeErr error
}

func (cc *counted) Read(p []byte) (int, error) {
	n, err := cc.Conn.Read(p)
	cc.count(n, err)
	return n, err
}

// count records what one read of the application's side got.
func (cc *counted) count(n int, err error) {
	if n > 0 {
		cc.sent += int64(n)
		cc.c.bytesSent.Add(int64(n))
	}
	if err != nil && err != io.EOF && cc.readErr == nil {
		cc.readErr = err
	}
}

// ReadPooled: see mux.PooledReader.
func (cc *counted) ReadPooled(pool *sync.Pool) (*[]byte, int, error) {
	buf, n, err := mux.ReadPooled(cc.Conn, pool)
	cc.count(n, err)
	return buf, n, err
}

func (cc *counted) Write(p []byte) (int, error) {
	n, err := cc.Conn.Write(p)
	if n > 0 {
		cc.received += int64(n)
		cc.c.bytesReceived.Add(int64(n))
	}
	if err != nil && cc.writeErr == nil {
		cc.writeErr = err
	}
	return n, err
}
