package client

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
)

// UDP. The firewall hands every datagram of a new flow (the application's
// address and port to the destination's) to a transparent socket of ours,
// which learns the original destination with it (udp_linux.go). For each
// flow we then bind a transparent socket to that destination and connect it
// to the application: replies sent from it reach the application from
// exactly the address it sent to, and the flow's later datagrams arrive on
// it directly. One mux stream per flow carries its datagrams (kindUDP) to the
// helper, which sends them from a socket of its own.
const (
	// DefaultUDPIdle is how long a flow lives without a datagram either
	// way: between conntrack's own timeouts for a UDP flow, 30 s one way
	// and 120 s once it has seen replies.
	DefaultUDPIdle = 60 * time.Second
	// DefaultMaxUDPFlows bounds the flows at once; past it the datagrams
	// of new flows are dropped (counted).
	DefaultMaxUDPFlows = 16384
)

// UDPStats counts the UDP capture's flows and what it dropped.
type UDPStats struct {
	FlowsActive, FlowsTotal int64
	// Dropped counts datagrams dropped: the tunnel was down, there were too
	// many flows, or a flow's queue toward the tunnel was full.
	Dropped int64
	// Oversize counts datagrams too large to relay (see mux.MaxDatagram).
	Oversize int64
}

type flowKey struct{ src, dst netip.AddrPort }

// udpFlows is the client's table of UDP flows.
type udpFlows struct {
	mu    sync.Mutex
	flows map[flowKey]*mux.DatagramRelay

	total   atomic.Int64
	dropped atomic.Int64 // datagrams of flows that could not start
	// oldHelper is set once the helper said it takes no UDP, which is
	// logged once.
	oldHelper atomic.Bool
	stats     mux.DatagramStats
	wg        sync.WaitGroup
}

func (u *udpFlows) snapshot() UDPStats {
	u.mu.Lock()
	active := len(u.flows)
	u.mu.Unlock()
	return UDPStats{
		FlowsActive: int64(active),
		FlowsTotal:  u.total.Load(),
		Dropped:     u.dropped.Load() + u.stats.Dropped.Load(),
		Oversize:    u.stats.Oversize.Load(),
	}
}

// udpDatagram takes one datagram that reached the capture socket for src to
// dst: it joins the flow's queue when the flow exists (it arrived before the
// flow's own socket did), and otherwise starts the flow, with the socket
// newConn makes, unless the tunnel is down or there are too many flows.
func (c *Client) udpDatagram(ctx context.Context, src, dst netip.AddrPort, b []byte, newConn func() (net.Conn, error)) {
	u := &c.udp
	key := flowKey{src, dst}
	u.mu.Lock()
	if r := u.flows[key]; r != nil {
		u.mu.Unlock()
		r.Send(b)
		return
	}
	if len(u.flows) >= c.cfg.MaxUDPFlows {
		u.mu.Unlock()
		u.dropped.Add(1)
		if now := time.Now().Unix(); c.capWarn.Swap(now) != now {
			c.log.Warn("too many UDP flows; dropping the datagrams of new ones", "max", c.cfg.MaxUDPFlows)
		}
		return
	}
	u.mu.Unlock()

	sess, _ := c.session()
	if sess == nil || c.fwLost.Load() {
		u.dropped.Add(1)
		c.log.Debug("tunnel down, dropping datagram", "src", src, "dst", dst)
		return
	}
	pc, err := newConn()
	if err != nil {
		u.dropped.Add(1)
		c.log.Debug("opening a UDP flow socket", "src", src, "dst", dst, "err", err)
		return
	}
	// The helper only logs the source; a link-local one's zone means nothing there.
	st, err := sess.DialUDP(netip.AddrPortFrom(src.Addr().WithZone(""), src.Port()), dst)
	if err != nil {
		pc.Close()
		u.dropped.Add(1)
		if errors.Is(err, mux.ErrNoUDP) && !u.oldHelper.Swap(true) {
			c.log.Warn("UDP is not carried: "+err.Error(), "hint", "let k8stunnel upload itself, or update the one --remote-cmd runs")
			return
		}
		c.log.Debug("opening UDP stream", "src", src, "dst", dst, "err", err)
		return
	}
	r := mux.NewDatagramRelay(pc, st, c.cfg.UDPIdle, &u.stats)
	r.Send(b)
	u.mu.Lock()
	if u.flows == nil {
		u.flows = map[flowKey]*mux.DatagramRelay{}
	}
	u.flows[key] = r
	u.mu.Unlock()
	u.total.Add(1)
	c.log.Debug("udp " + src.String() + " -> " + dst.String())
	u.wg.Go(func() {
		stop := context.AfterFunc(ctx, r.Close)
		defer stop()
		err := r.Run()
		u.mu.Lock()
		if u.flows[key] == r {
			delete(u.flows, key)
		}
		u.mu.Unlock()
		c.log.Debug("udp "+src.String()+" -> "+dst.String()+" closed", "err", err)
	})
}

// closeUDP ends every flow and waits for them.
func (c *Client) closeUDP() {
	u := &c.udp
	u.mu.Lock()
	for _, r := range u.flows {
		r.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}
