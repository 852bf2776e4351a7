package firewall

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MarkSocket gives the socket fd DNSMark. It sets the mark itself when this
// process may (root, CAP_NET_ADMIN), and otherwise asks the root child. Call
// it before the socket is connected, so every packet carries the mark.
func (h *Helper) MarkSocket(ctx context.Context, fd int) error {
	err := setMark(fd)
	if !errors.Is(err, unix.EPERM) {
		return err
	}
	return h.markRemote(ctx, fd)
}

// markRemote asks the root child to mark fd.
func (h *Helper) markRemote(ctx context.Context, fd int) error {
	if err := h.remoteSocketOp(ctx, fd, false); err != nil {
		return fmt.Errorf("marking a DNS socket: %w", err)
	}
	return nil
}

func (h *Helper) remoteSocketOp(ctx context.Context, fd int, transparent bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	req := helperRequest{Op: opMark, Mark: &markRequest{PID: os.Getpid(), FD: fd, Ino: st.Ino, Transparent: transparent}}
	return h.request(ctx, req)
}

// TransparentSocket makes the UDP socket fd transparent, so that it may
// receive what TPROXY hands it and bind to (and send from) an address that
// is not this host's. It does so itself when this process may (root,
// CAP_NET_ADMIN), and otherwise asks the root child. Call it before bind.
func (h *Helper) TransparentSocket(ctx context.Context, fd int) error {
	err := SetTransparent(fd)
	if !errors.Is(err, unix.EPERM) {
		return err
	}
	if err := h.remoteSocketOp(ctx, fd, true); err != nil {
		return fmt.Errorf("making a UDP socket transparent: %w", err)
	}
	return nil
}

// SetTransparent sets IP_TRANSPARENT or IPV6_TRANSPARENT on fd, by its
// family; it takes CAP_NET_ADMIN. With that privilege at hand it also grows
// the socket's receive buffer to 2 MiB past net.core.rmem_max (often 208
// KiB on desktops), which a UDP flow at 100 Mbit/s fills in milliseconds.
func SetTransparent(fd int) error {
	if cur, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil && cur < 2*udpRcvBuf {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpRcvBuf) // best effort
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("making a UDP socket transparent: %w", err)
	}
	if domain == unix.AF_INET6 {
		err = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	} else {
		err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	}
	if err != nil {
		return fmt.Errorf("making a UDP socket transparent: %w", err)
	}
	return nil
}

func setMark(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, DNSMark); err != nil {
		return fmt.Errorf("marking a DNS socket: %w", err)
	}
	return nil
}

// serveMark is the child's side of opMark: it marks the socket only when
// it belongs to the caller (FindCaller: the client that started this
// helper, through sudo or not) and is an IPv4 or IPv6 UDP or TCP socket.
func serveMark(m *markRequest) error {
	if m == nil {
		return errors.New("mark request names no socket")
	}
	// Opened first: the pidfd pins the process, so the caller found next
	// is the process whose descriptor is taken.
	pidfd, err := unix.PidfdOpen(m.PID, 0)
	if err != nil {
		return fmt.Errorf("marking a socket of pid %d: %w", m.PID, err)
	}
	defer unix.Close(pidfd)
	caller, err := FindCaller()
	if err != nil {
		return err
	}
	if m.PID != caller.Pid {
		return fmt.Errorf("refusing to mark a socket of pid %d: not the process that started the firewall helper (pid %d)", m.PID, caller.Pid)
	}
	if m.Transparent {
		return transparentPeer(pidfd, m, caller.UID)
	}
	return markPeer(pidfd, m)
}

// transparentPeer makes descriptor m.FD of the process pidfd refers to
// transparent, when it is a UDP socket that uid created.
func transparentPeer(pidfd int, m *markRequest, uid int) error {
	fd, err := unix.PidfdGetfd(pidfd, m.FD, 0)
	if err != nil {
		return fmt.Errorf("taking descriptor %d of pid %d: %w", m.FD, m.PID, err)
	}
	defer unix.Close(fd)
	if err := checkUDPSocket(fd, m.Ino, uid); err != nil {
		return fmt.Errorf("refusing to make descriptor %d of pid %d transparent: %w", m.FD, m.PID, err)
	}
	return SetTransparent(fd)
}

// checkUDPSocket accepts an IPv4 or IPv6 UDP socket with inode ino, created
// by uid.
func checkUDPSocket(fd int, ino uint64, uid int) error {
	if err := checkDNSSocket(fd, ino); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if int(st.Uid) != uid {
		return fmt.Errorf("the socket belongs to uid %d, not %d", st.Uid, uid)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return err
	}
	if typ != unix.SOCK_DGRAM {
		return errors.New("not a UDP socket")
	}
	return nil
}

// markPeer sets DNSMark on descriptor m.FD of the process pidfd refers to.
// Its duplicate here shares the socket, so the mark is the caller's too.
func markPeer(pidfd int, m *markRequest) error {
	fd, err := unix.PidfdGetfd(pidfd, m.FD, 0)
	if err != nil {
		return fmt.Errorf("taking descriptor %d of pid %d: %w", m.FD, m.PID, err)
	}
	defer unix.Close(fd)
	if err := checkDNSSocket(fd, m.Ino); err != nil {
		return fmt.Errorf("refusing to mark descriptor %d of pid %d: %w", m.FD, m.PID, err)
	}
	return setMark(fd)
}

// checkDNSSocket accepts an IPv4 or IPv6 UDP or TCP socket with inode ino.
func checkDNSSocket(fd int, ino uint64) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Ino != ino {
		return errors.New("not the socket asked for")
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return err
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return err
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return err
	}
	inet := domain == unix.AF_INET || domain == unix.AF_INET6
	udp := typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP
	tcp := typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP
	if !inet || !(udp || tcp) {
		return fmt.Errorf("not a UDP or TCP socket (domain %d, type %d, protocol %d)", domain, typ, proto)
	}
	return nil
}
