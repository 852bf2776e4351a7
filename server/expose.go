package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
)

// exposer holds the listeners the client asked for (-R): each connection a
// pod makes to one goes back to the client on a stream of its own, which
// the client answers by dialling the laptop-side target.
type exposer struct {
	lns []net.Listener // by entry; nil where listening failed
}

// tracker lets Serve wait for the work it started, and turns away work that
// comes in once it has begun to wait.
type tracker struct {
	mu       sync.Mutex
	stopping bool
	wg       sync.WaitGroup
}

func (t *tracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

func (t *tracker) stop() {
	t.mu.Lock()
	t.stopping = true
	t.mu.Unlock()
	t.wg.Wait()
}

// listenExposes binds what the client's hello asks for, before the answer
// goes out, so the answer can say where each listener is or why it is not.
// An Expose without Bind listens on the node's address toward the pod
// network: the one pods reach the node by, never every address.
func listenExposes(ctx context.Context, cfg Config, h mux.Hello, facts *mux.Facts) (*exposer, []mux.Exposed) {
	if len(h.Expose) == 0 {
		return nil, nil
	}
	if len(h.Expose) > mux.MaxExposes {
		return nil, []mux.Exposed{{Error: fmt.Sprintf("at most %d -R per tunnel", mux.MaxExposes)}}
	}
	listen := cfg.Listen
	if listen == nil {
		listen = (&net.ListenConfig{KeepAlive: -1}).Listen
	}
	e := &exposer{lns: make([]net.Listener, len(h.Expose))}
	res := make([]mux.Exposed, len(h.Expose))
	toward := ""
	for i, x := range h.Expose {
		var bind netip.Addr
		if x.Bind != "" {
			a, err := netip.ParseAddr(x.Bind)
			if err != nil {
				res[i].Error = fmt.Sprintf("bad bind address %q", x.Bind)
				continue
			}
			bind = a
		} else {
			if toward == "" {
				toward = podCIDR(cfg, h, facts)
			}
			a, err := sourceToward(toward)
			if err != nil {
				res[i].Error = err.Error()
				continue
			}
			bind = a
		}
		network := "tcp4"
		if bind.Is6() {
			network = "tcp6"
		}
		ln, err := listen(ctx, network, netip.AddrPortFrom(bind, x.Port).String())
		if err != nil {
			res[i].InUse = errors.Is(err, syscall.EADDRINUSE)
			res[i].Error = err.Error()
			continue
		}
		e.lns[i] = ln
		res[i].Addr = ln.Addr().String()
	}
	return e, res
}

// podCIDR is the pod network as the node knows it (discovered facts), else
// as the client names it.
func podCIDR(cfg Config, h mux.Hello, facts *mux.Facts) string {
	if facts == nil && cfg.Discover != nil {
		facts = cfg.Discover()
	}
	if facts != nil && len(facts.PodCIDRs) > 0 {
		return facts.PodCIDRs[0]
	}
	return h.ExposeToward
}

// sourceToward is the address the node sends from toward cidr: connecting
// a UDP socket makes the kernel pick it by route, without sending anything.
func sourceToward(cidr string) (netip.Addr, error) {
	if cidr == "" {
		return netip.Addr{}, errors.New("no pod CIDR known to pick the node's address facing the pods: " +
			"forward the pod CIDR, use -N, or name the address, e.g. -R 10.244.0.1:8080:127.0.0.1:8000")
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("bad pod CIDR %q: %w", cidr, err)
	}
	dst := p.Masked().Addr().Next()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("finding the node's address toward %s: %w", cidr, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// serve accepts on every listener until close, each connection in work.
func (e *exposer) serve(ctx context.Context, cfg Config, sess *mux.Session, work *tracker) {
	if e == nil {
		return
	}
	for i, ln := range e.lns {
		if ln == nil || !work.enter() {
			continue
		}
		go func() {
			defer work.done()
			for {
				c, err := ln.Accept()
				if errors.Is(err, net.ErrClosed) {
					return // the session is over
				}
				if err != nil {
					// EMFILE and friends: back off instead of spinning.
					cfg.Log.Warn("accepting on an exposed port", "addr", ln.Addr(), "err", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(100 * time.Millisecond):
					}
					continue
				}
				if !work.enter() {
					mux.NetConn(c).Abort()
					return
				}
				go func() {
					defer work.done()
					carryBack(ctx, cfg, sess, i, c)
				}()
			}
		}()
	}
}

// carryBack relays one pod connection to the client. When the client could
// not reach its target the pod gets a reset, as it would from a closed port.
func carryBack(ctx context.Context, cfg Config, sess *mux.Session, entry int, c net.Conn) {
	pod := mux.NetConn(c)
	var src netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort()
	}
	st, err := sess.DialExpose(entry, src)
	if err != nil {
		cfg.Log.Debug("opening stream for an exposed port", "src", src, "err", err)
		pod.Abort()
		return
	}
	if err := st.WaitDial(); err != nil {
		cfg.Log.Debug("exposed port's target failed", "src", src, "err", err)
		pod.Abort()
		st.Close()
		return
	}
	defer context.AfterFunc(ctx, pod.Abort)()
	if err := mux.Relay(pod, st); err != nil {
		cfg.Log.Debug("relay ended", "src", src, "err", err)
	}
}

// close closes the listeners; safe on a nil exposer.
func (e *exposer) close() {
	if e == nil {
		return
	}
	for _, ln := range e.lns {
		if ln != nil {
			ln.Close()
		}
	}
}
