package server

import (
	"context"
	"net"
	"sync/atomic"

	"github.com/k8stunnel/k8stunnel/mux"
)

// MaxUDPFlows bounds the UDP flows one session carries at once, as the
// client bounds its own; a client past it gets StatusFailed.
const MaxUDPFlows = 16384

// udpReadBuffer is the receive buffer of a flow's socket; the kernel caps
// it at net.core.rmem_max.
const udpReadBuffer = 2 << 20

// udpFlows is one session's UDP flows.
type udpFlows struct {
	active atomic.Int64
	stats  mux.DatagramStats
}

// handle relays one UDP flow: a connected socket of the helper's own toward
// the destination, so the node's kube-proxy DNATs a service IP on the way out
// and undoes it on the replies, which are all this socket accepts. The flow
// ends when the client ends the stream (it keeps the idle timer) or the
// session goes.
func (u *udpFlows) handle(ctx context.Context, cfg Config, req mux.Request, st *mux.Stream) {
	if u.active.Add(1) > MaxUDPFlows {
		u.active.Add(-1)
		cfg.Log.Debug("too many UDP flows", "dst", req.Dst)
		st.WriteStatus(mux.StatusFailed)
		st.Close()
		return
	}
	defer u.active.Add(-1)
	c, ok := dialFor(ctx, cfg, st, "udp", req.Dst.String())
	if !ok {
		return
	}
	if uc, ok := c.(*net.UDPConn); ok {
		// Replies may come in bursts faster than the stream takes them.
		uc.SetReadBuffer(udpReadBuffer)
	}
	defer context.AfterFunc(ctx, func() { c.Close() })()
	if err := mux.RelayDatagrams(c, st, 0, &u.stats); err != nil {
		cfg.Log.Debug("udp flow ended", "src", req.Src, "dst", req.Dst, "err", err)
	}
}
