package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
)

// SOCKS is a SOCKS5 server (RFC 1928): no authentication, CONNECT only,
// with IPv4, IPv6 and domain-name addresses. Names are passed to the Dialer
// as they came (socks5h), so they are resolved on the far side. It is small
// and written here: no maintained Go SOCKS5 server package was to be had.
type SOCKS struct {
	Dial Dialer
	Log  *slog.Logger // nil discards
}

// handshakeTimeout bounds the greeting and request: a client that connects
// and says nothing must not hold a goroutine for ever.
const handshakeTimeout = 10 * time.Second

// SOCKS5 constants, RFC 1928.
const (
	socksVersion   = 5
	methodNoAuth   = 0
	methodNone     = 0xff
	cmdConnect     = 1
	atypIPv4       = 1
	atypName       = 3
	atypIPv6       = 4
	repOK          = 0
	repFailure     = 1
	repNetUnreach  = 3
	repHostUnreach = 4
	repRefused     = 5
	repTTLExpired  = 6
	repCmdUnsupp   = 7
	repAtypUnsupp  = 8
)

var errNotSOCKS5 = errors.New("not a SOCKS5 client")

// Serve answers SOCKS5 clients on ln until ctx ends. It closes ln, and
// returns once every connection it accepted is closed.
func (s *SOCKS) Serve(ctx context.Context, ln net.Listener) error {
	return serve(ctx, ln, s.log(), s.serveConn)
}

func (s *SOCKS) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *SOCKS) serveConn(ctx context.Context, c net.Conn) {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	target, rep, err := handshake(c)
	if err != nil {
		s.log().Debug("socks: bad request", "from", c.RemoteAddr(), "err", err)
		if rep != repOK {
			writeReply(c, rep)
		}
		return
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	// The client may give up while we dial: the dial need not go on.
	stop := context.AfterFunc(ctx, cancel)
	remote, err := s.Dial.DialContext(dctx, "tcp", target)
	stop()
	cancel()
	if err != nil {
		s.log().Debug("socks: connect failed", "dst", target, "err", err)
		writeReply(c, socksReply(classify(err)))
		return
	}
	defer remote.Close()
	if err := writeReply(c, repOK); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	s.log().Debug("socks: connect", "dst", target)
	if err := relay(ctx, c, remote); err != nil {
		s.log().Debug("socks: connection ended", "dst", target, "err", err)
	}
}

// socksReply is the reply code for a failed dial.
func socksReply(f failure) byte {
	switch f {
	case failRefused:
		return repRefused
	case failNetUnreachable:
		return repNetUnreach
	case failHostUnreachable, failNoName:
		return repHostUnreach
	case failTimeout:
		return repTTLExpired
	}
	return repFailure
}

// handshake reads a client's greeting and request from rw, answering the
// greeting, and returns the CONNECT target as "host:port". When the request
// is one to refuse, err says why and rep is the reply code to send (repOK
// when the client gets no reply: it does not speak SOCKS5, or offered no
// method we take, which it has been told).
func handshake(rw io.ReadWriter) (target string, rep byte, err error) {
	// Greeting: version, number of methods, methods.
	var buf [2 + 255]byte
	if _, err := io.ReadFull(rw, buf[:2]); err != nil {
		return "", repOK, err
	}
	if buf[0] != socksVersion {
		return "", repOK, fmt.Errorf("%w: version %d", errNotSOCKS5, buf[0])
	}
	methods := buf[2 : 2+int(buf[1])]
	if _, err := io.ReadFull(rw, methods); err != nil {
		return "", repOK, err
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == methodNoAuth
	}
	if !noAuth {
		rw.Write([]byte{socksVersion, methodNone})
		return "", repOK, errors.New("the client offers no method without authentication")
	}
	if _, err := rw.Write([]byte{socksVersion, methodNoAuth}); err != nil {
		return "", repOK, err
	}

	// Request: version, command, reserved, address type, address, port.
	if _, err := io.ReadFull(rw, buf[:4]); err != nil {
		return "", repOK, err
	}
	if buf[0] != socksVersion {
		return "", repOK, fmt.Errorf("%w: version %d in the request", errNotSOCKS5, buf[0])
	}
	if buf[1] != cmdConnect {
		return "", repCmdUnsupp, fmt.Errorf("command %d is not supported, only CONNECT", buf[1])
	}
	var host string
	switch buf[3] {
	case atypIPv4, atypIPv6:
		n := 4
		if buf[3] == atypIPv6 {
			n = 16
		}
		if _, err := io.ReadFull(rw, buf[:n]); err != nil {
			return "", repOK, err
		}
		a, _ := netip.AddrFromSlice(buf[:n])
		host = a.String()
	case atypName:
		if _, err := io.ReadFull(rw, buf[:1]); err != nil {
			return "", repOK, err
		}
		name := buf[1 : 1+int(buf[0])]
		if _, err := io.ReadFull(rw, name); err != nil {
			return "", repOK, err
		}
		// Checked here too: these bytes go into the target string, and on
		// to the node's resolver.
		host = strings.TrimSuffix(string(name), ".")
		if a, err := netip.ParseAddr(host); err == nil && a.Zone() == "" {
			host = a.String()
		} else if !mux.ValidName(host) {
			return "", repHostUnreach, fmt.Errorf("bad host name %q", name)
		}
	default:
		return "", repAtypUnsupp, fmt.Errorf("address type %d is not supported", buf[3])
	}
	if _, err := io.ReadFull(rw, buf[:2]); err != nil {
		return "", repOK, err
	}
	port := binary.BigEndian.Uint16(buf[:2])
	return net.JoinHostPort(host, strconv.Itoa(int(port))), repOK, nil
}

// writeReply answers a request. The bound address is 0.0.0.0:0: the
// connection's far end is on the node, with no address of ours to name, and
// clients do not use it for CONNECT.
func writeReply(w io.Writer, rep byte) error {
	_, err := w.Write([]byte{socksVersion, rep, 0, atypIPv4, 0, 0, 0, 0, 0, 0})
	return err
}
