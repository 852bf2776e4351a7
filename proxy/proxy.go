// Package proxy is k8stunnel's rootless mode: a SOCKS5 server and an HTTP
// proxy on the laptop that send each connection they are asked for down the
// tunnel. Nothing on the laptop changes (no firewall rules, no root), so it
// works for an ordinary user, and on any OS: what an application needs is
// only to honour ALL_PROXY or HTTPS_PROXY, or a browser's proxy setting.
//
// Both servers take a Dialer and nothing else of the tunnel, so the tests run
// them against a fake. They answer their client only once the dial's outcome
// is known: a refused or unreachable target is reported as such (a SOCKS
// reply code, 502 or 504), never as an accepted connection that then closes.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
)

// Dialer opens a connection to addr ("host:port") through the tunnel; a
// *net.Dialer fits too. When its connections are mux.Conns (tunnel streams)
// the relay uses their CloseWrite and Abort.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// dialTimeout bounds one dial, in case the dialer has no bound of its own;
// the tunnel's answers come well within it (the helper gives up after 10 s).
const dialTimeout = 30 * time.Second

// failure is why a dial failed, in terms both protocols can answer.
type failure int

const (
	failOther failure = iota
	failRefused
	failNetUnreachable
	failHostUnreachable
	failNoName
	failTimeout
)

// classify says why err, from a Dialer, happened: a tunnel stream's status,
// or the errors a net.Dialer returns.
func classify(err error) failure {
	var de *mux.DialError
	if errors.As(err, &de) {
		switch de.Status {
		case mux.StatusRefused:
			return failRefused
		case mux.StatusUnreachable:
			return failHostUnreachable
		case mux.StatusNoName:
			return failNoName
		case mux.StatusTimeout:
			return failTimeout
		}
		return failOther
	}
	var dnsErr *net.DNSError
	var ne net.Error
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return failNoName
	case errors.Is(err, syscall.ECONNREFUSED):
		return failRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return failNetUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return failHostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return failTimeout
	}
	return failOther
}

// ListenAddr turns a --socks or --http-proxy value into the address to
// listen on: a bare port means 127.0.0.1, so only an explicit address opens
// the proxy to other hosts. loopback says whether only this host can reach it.
func ListenAddr(s string) (addr string, loopback bool, err error) {
	bad := fmt.Errorf("bad proxy address %q: want PORT or IP:PORT, e.g. 1080 or 127.0.0.1:1080", s)
	if _, err := strconv.ParseUint(s, 10, 16); err == nil {
		return net.JoinHostPort("127.0.0.1", s), true, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", false, bad
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", false, bad
	}
	switch host {
	case "":
		return s, false, nil
	case "localhost":
		return net.JoinHostPort("127.0.0.1", port), true, nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return "", false, bad
	}
	return net.JoinHostPort(a.String(), port), a.IsLoopback(), nil
}

// relay copies between the client's connection and the tunnel's until both
// are done, or ctx ends.
func relay(ctx context.Context, client, remote net.Conn) error {
	rc, ok := remote.(mux.Conn)
	if !ok {
		rc = mux.NetConn(remote)
	}
	lc := mux.NetConn(client)
	stop := context.AfterFunc(ctx, func() {
		lc.Abort()
		rc.Abort()
	})
	defer stop()
	return mux.Relay(lc, rc)
}

// tracker counts the goroutines a server started, so that its Serve returns
// only after they have all ended.
type tracker struct {
	mu      sync.Mutex
	closing bool
	wg      sync.WaitGroup
}

// add counts one more goroutine, unless the server is stopping.
func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

func (t *tracker) wait() {
	t.mu.Lock()
	t.closing = true
	t.mu.Unlock()
	t.wg.Wait()
}

// serve accepts connections on ln and hands each to handle in its own
// goroutine, until ctx ends; it closes ln and returns once every handler has.
func serve(ctx context.Context, ln net.Listener, log *slog.Logger, handle func(context.Context, net.Conn)) error {
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var t tracker
	defer t.wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and friends: back off instead of spinning.
			log.Warn("accept failed", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if !t.add() {
			c.Close()
			continue
		}
		go func() {
			defer t.done()
			defer c.Close()
			// Also wakes a handshake still waiting for the client.
			defer context.AfterFunc(ctx, func() { c.Close() })()
			handle(ctx, c)
		}()
	}
}
