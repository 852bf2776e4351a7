package mux

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// readDatagram reads one datagram from pc into a pooled buffer, which the
// caller puts back. n is the datagram's full length, which may exceed the
// buffer (MSG_TRUNC): then it is oversize. The buffer is taken only once a
// datagram is there, so a waiting flow holds none.
func readDatagram(pc net.Conn) (b []byte, n int, err error) {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return readDatagramPlain(pc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		b = getDatagramBuf()
		n, _, rerr = unix.Recvfrom(int(fd), b, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if rerr == unix.EAGAIN {
			putDatagramBuf(b)
			b = nil
			return false
		}
		return true
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		if b != nil {
			putDatagramBuf(b)
		}
		return nil, 0, err
	}
	return b, n, nil
}
