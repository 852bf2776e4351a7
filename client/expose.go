package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/tui"
)

// Expose is one -R: the helper listens on the node at Bind:Port, and each
// connection a pod makes there is carried back and relayed to Host:HostPort,
// dialled here.
type Expose struct {
	// Bind is the node address to listen on; the zero Addr means the node's
	// address toward the pod network (never all addresses unless written).
	Bind     netip.Addr
	Port     uint16
	Host     string
	HostPort uint16
}

// Target is where the client dials, as net.Dial takes it.
func (e Expose) Target() string { return net.JoinHostPort(e.Host, strconv.Itoa(int(e.HostPort))) }

// String is the -R form.
func (e Expose) String() string {
	s := strconv.Itoa(int(e.Port)) + ":" + e.Target()
	if !e.Bind.IsValid() {
		return s
	}
	if e.Bind.Is6() {
		return "[" + e.Bind.String() + "]:" + s
	}
	return e.Bind.String() + ":" + s
}

// exposeDialTimeout bounds the dial of a laptop-side target, well inside the
// time the helper waits for the answer.
const exposeDialTimeout = 10 * time.Second

// exposes is the client's side of -R: where the helper listens for each
// entry, and the work carried back from there.
type exposes struct {
	at    []string       // by entry, the node's IP:port; guarded by Client.mu
	conns []atomic.Int64 // by entry, connections relayed
	// stopping, guarded by Client.mu, turns away streams that arrive as Run
	// ends, once it waits for its goroutines.
	stopping bool
}

// exposeHello is what the first channel's hello asks the helper to listen on.
func (c *Client) exposeHello(h *mux.Hello) {
	for _, e := range c.cfg.Expose {
		x := mux.Expose{Port: e.Port}
		if e.Bind.IsValid() {
			x.Bind = e.Bind.String()
		}
		h.Expose = append(h.Expose, x)
	}
	if len(h.Expose) > 0 && len(c.cfg.Include) > 0 {
		// Used when the node knows no pod CIDR of its own.
		h.ExposeToward = c.cfg.Include[0].Prefix.String()
	}
}

// checkExposed reads the helper's answer to the hello's exposes: an entry
// it could not listen for fails the connection attempt. The first time, or
// when an address changed, it logs where pods reach each one.
func (c *Client) checkExposed(got []mux.Exposed, node string) error {
	want := c.cfg.Expose
	if len(want) == 0 {
		return nil
	}
	if len(got) != len(want) {
		return errors.New("the helper on the node did not answer -R (an older k8stunnel there? use the same version on both ends)")
	}
	at := make([]string, len(want))
	for i, e := range want {
		switch {
		case got[i].InUse:
			return &tui.HintError{Err: fmt.Errorf("node port %d is in use on %s", e.Port, node), Hint: "pick another with -R"}
		case got[i].Error != "":
			return fmt.Errorf("-R %v on %s: %s", e, node, tui.Printable(got[i].Error))
		}
		ap, err := netip.ParseAddrPort(got[i].Addr)
		if err != nil {
			return fmt.Errorf("-R %v: the helper says it listens on %q", e, tui.Printable(got[i].Addr))
		}
		at[i] = ap.String()
	}
	c.mu.Lock()
	old := c.exp.at
	c.exp.at = at
	c.mu.Unlock()
	for i, a := range at {
		if i >= len(old) || old[i] != a {
			c.log.Info(fmt.Sprintf("pods reach %s at %s", want[i].Target(), a))
		}
	}
	return nil
}

// serveSession serves the streams the helper opens on s: only resets, or on
// the first channel, when -R was given, also the connections it carries back.
func (c *Client) serveSession(ctx context.Context, s *mux.Session, first bool) {
	if !first || len(c.cfg.Expose) == 0 {
		s.Serve(ctx, nil)
		return
	}
	s.ServeExposes(ctx, len(c.cfg.Expose), func(req mux.Request, st *mux.Stream) {
		c.mu.Lock()
		if c.exp.stopping {
			c.mu.Unlock()
			st.Close()
			return
		}
		c.wg.Add(1)
		c.mu.Unlock()
		defer c.wg.Done()
		c.handleExpose(ctx, req, st)
	})
}

// stopExposes makes streams that still arrive be closed at once, so that
// Run's wait for its goroutines is final.
func (c *Client) stopExposes() {
	c.mu.Lock()
	c.exp.stopping = true
	c.mu.Unlock()
}

// handleExpose dials the laptop-side target of a pod's connection, answers
// the helper (which resets the pod's connection on a failure) and relays.
func (c *Client) handleExpose(ctx context.Context, req mux.Request, st *mux.Stream) {
	e := c.cfg.Expose[req.Entry]
	dctx, cancel := context.WithTimeout(ctx, exposeDialTimeout)
	conn, err := c.dialLocal(dctx, "tcp", e.Target())
	cancel()
	if err != nil {
		c.log.Debug("exposed port: dialling the laptop's target failed", "from", req.Src, "dst", e.Target(), "err", err)
		st.WriteStatus(mux.DialStatus(err))
		st.Close()
		return
	}
	if err := st.WriteStatus(mux.StatusOK); err != nil {
		conn.Close()
		st.Abort()
		st.Close()
		return
	}
	c.exp.conns[req.Entry].Add(1)
	desc := fmt.Sprintf("%v -> %v (-R %v)", req.Src, e.Target(), e)
	c.log.Debug(desc)
	start := time.Now()
	err = mux.Relay(mux.NetConn(conn), st)
	c.log.Debug(desc+" closed", "took", time.Since(start).Round(time.Millisecond), "end", endReason(err))
}

// ExposeStats is one -R as Stats reports it.
type ExposeStats struct {
	Spec        string // the -R as given
	At          string // where pods reach it on the node; empty before the first link
	Connections int64  // carried back so far
}

func (c *Client) exposeStats() []ExposeStats {
	var s []ExposeStats
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.cfg.Expose {
		es := ExposeStats{Spec: e.String(), Connections: c.exp.conns[i].Load()}
		if i < len(c.exp.at) {
			es.At = c.exp.at[i]
		}
		s = append(s, es)
	}
	return s
}
