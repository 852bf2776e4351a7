package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// udpListen binds the capture sockets TPROXY hands new flows to: on
// 127.0.0.1 and [::1], for the families the TCP listeners have (--disable-ipv6
// leaves IPv4 alone; [::1] is skipped on a host without IPv6), on one port:
// the TCP listeners' number when it is free. They are made transparent later,
// by the firewall's side (udpTransparent).
func (c *Client) udpListen() error {
	var addrs []string
	for _, fam := range []struct {
		loopback string
		is       func(netip.Addr) bool
	}{{"127.0.0.1", netip.Addr.Is4}, {"::1", netip.Addr.Is6}} {
		for _, ln := range c.listeners {
			if fam.is(ln.Addr().(*net.TCPAddr).AddrPort().Addr().Unmap()) {
				addrs = append(addrs, fam.loopback)
				break
			}
		}
	}
	var lastErr error
	for try := 0; try < 20; try++ {
		port := c.port
		if try > 0 {
			port = 0 // any, for the first; the second must then match
		}
		ls, err := udpListenAll(addrs, port)
		if err == nil {
			c.udpLns = ls
			c.udpPort = uint16(ls[0].LocalAddr().(*net.UDPAddr).Port)
			return nil
		}
		lastErr = err
	}
	return fmt.Errorf("listening for UDP: %w", lastErr)
}

// udpRcvBuf is the receive buffer of the UDP capture's sockets: the
// default (208 KiB, about 90 full-size datagrams) overflows within a few
// milliseconds at 100 Mbit/s whenever the relay is not scheduled. The kernel
// caps it at net.core.rmem_max; the root child's op lifts that cap for the
// flows' sockets (firewall.SetTransparent).
const udpRcvBuf = 2 << 20

func udpListenAll(addrs []string, port uint16) ([]*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpRcvBuf) // best effort
			if network == "udp6" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	var ls []*net.UDPConn
	for _, a := range addrs {
		network := "udp4"
		if a == "::1" {
			network = "udp6"
		}
		if len(ls) > 0 {
			port = uint16(ls[0].LocalAddr().(*net.UDPAddr).Port)
		}
		pc, err := lc.ListenPacket(context.Background(), network, net.JoinHostPort(a, fmt.Sprint(port)))
		if err != nil {
			if network == "udp6" && len(ls) > 0 && errors.Is(err, syscall.EADDRNOTAVAIL) {
				break // no IPv6 loopback here
			}
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, pc.(*net.UDPConn))
	}
	if len(ls) == 0 {
		return nil, errors.New("no address to listen on")
	}
	return ls, nil
}

// udpTransparent makes the capture sockets transparent, which TPROXY
// requires of a socket before it hands it anything. fw does it: it takes
// CAP_NET_ADMIN, which an unprivileged client has only through its root
// child.
func (c *Client) udpTransparent(ctx context.Context, fw Firewall) error {
	for _, ln := range c.udpLns {
		rc, err := ln.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = fw.TransparentSocket(ctx, int(fd)) }); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
	}
	return nil
}

// udpLoop reads what TPROXY hands the capture socket ln: the first
// datagrams of flows, each with its original destination.
func (c *Client) udpLoop(ctx context.Context, ln *net.UDPConn) {
	defer c.wg.Done()
	self := ln.LocalAddr().(*net.UDPAddr).AddrPort()
	self = netip.AddrPortFrom(self.Addr().Unmap(), self.Port())
	buf := make([]byte, 1<<16)
	oob := make([]byte, 256)
	for {
		n, oobn, flags, src, err := ln.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Debug("reading captured UDP", "err", err)
			continue
		}
		if flags&unix.MSG_TRUNC != 0 {
			c.udp.stats.Oversize.Add(1)
			continue
		}
		dst, ok := origDstFromOOB(oob[:oobn])
		if !ok {
			c.log.Debug("dropping a datagram without its original destination", "src", src)
			continue
		}
		if dst == self {
			// Sent to the socket itself, not handed to it by a rule: no
			// flow, as handle resets a TCP connection to the listener.
			c.udp.dropped.Add(1)
			c.log.Debug("dropping a datagram that was not captured", "src", src)
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		c.udpDatagram(ctx, src, dst, buf[:n], func() (net.Conn, error) { return c.flowSocket(ctx, src, dst) })
	}
}

// origDstFromOOB finds IP_ORIGDSTADDR or IPV6_ORIGDSTADDR in a control
// message: a sockaddr_in (family, port big endian, address) or sockaddr_in6
// (family, port, flow info, address, scope).
func origDstFromOOB(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		d := m.Data
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(d) >= 8:
			a := netip.AddrFrom4([4]byte(d[4:8]))
			return netip.AddrPortFrom(a, binary.BigEndian.Uint16(d[2:4])), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(d) >= 24:
			a := netip.AddrFrom16([16]byte(d[8:24])).Unmap()
			return netip.AddrPortFrom(a, binary.BigEndian.Uint16(d[2:4])), true
		}
	}
	return netip.AddrPort{}, false
}

// flowSocket is the flow's own socket: transparent, bound to the original
// destination and connected to the application. Replies leave it from the
// destination's address and port; the flow's next datagrams arrive on it.
// Several flows to one destination share its address, hence SO_REUSEPORT,
// and not SO_REUSEADDR: the kernel lets a socket join a SO_REUSEPORT address
// only when the same uid holds it, and connected sockets are matched on the
// peer, not balanced. With SO_REUSEADDR any local user could bind her own
// socket there (IP_FREEBIND needs no privilege) and connect it to the same
// application: TPROXY would then find hers first and, as it is not
// transparent, drop the flow's datagrams (and a plain lookup would hand them
// to her).
func (c *Client) flowSocket(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	fw := c.fwNow.Load()
	if fw == nil {
		return nil, errors.New("no firewall helper")
	}
	network := "udp4"
	if dst.Addr().Is6() {
		network = "udp6"
	}
	d := net.Dialer{
		LocalAddr: net.UDPAddrFromAddrPort(dst),
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpRcvBuf) // best effort
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr == nil {
					serr = (*fw).TransparentSocket(ctx, int(fd))
				}
			})
			return errors.Join(err, serr)
		},
	}
	return d.DialContext(ctx, network, src.String())
}
