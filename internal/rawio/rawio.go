// Package rawio reads and writes non-blocking descriptors with raw system
// calls, still parking in the runtime's poller while a descriptor is not
// ready.
//
// Every ordinary system call a Go program makes wakes the runtime's sysmon
// thread when the process was idle, and sysmon then polls every 20 µs until
// the process is idle again. A tunnel is idle between every two messages, so
// a request/response round trip paid about four nanosleeps and two futex
// calls per process on top of its reads and writes, each a thread switch on
// a machine whose cores the tunnel shares with sshd and the application.
// A non-blocking read or write never blocks, so it needs none of that:
// bench -only rr measured it (see the package test and README Performance).
package rawio

import (
	"io"
	"os"
	"syscall"
)

// Conn is a descriptor read and written with raw system calls.
type Conn struct{ rc syscall.RawConn }

// New returns c's descriptor as a Conn, or false when raw I/O is not for
// it: not Linux, not a syscall.Conn (a net.Pipe, a test double), or a
// blocking descriptor, whose read or write could stop the thread without the
// runtime knowing.
func New(c any) (*Conn, bool) {
	sc, ok := c.(syscall.Conn)
	if !supported || !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	nonblocking := false
	if err := rc.Control(func(fd uintptr) { nonblocking = isNonblocking(fd) }); err != nil || !nonblocking {
		return nil, false
	}
	return &Conn{rc: rc}, true
}

// File returns f read and written through a Conn where it can be, else f.
func File(f *os.File) io.ReadWriteCloser {
	if c, ok := New(f); ok {
		return file{c, f}
	}
	return f
}

type file struct {
	*Conn
	f *os.File
}

func (f file) Close() error { return f.f.Close() }

// Read reads into b once data is there; io.EOF at the end.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var serr error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, serr = read(fd, b)
			if serr != syscall.EINTR {
				return serr != syscall.EAGAIN
			}
		}
	})
	return readResult(n, err, serr)
}

// readResult is what a read that got n, with err from the poller and serr
// from the system call, returns: io.EOF when it got nothing.
func readResult(n int, err, serr error) (int, error) {
	switch {
	case err != nil:
		return 0, err
	case serr != nil:
		return 0, serr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Pool is where ReadPooled takes its buffers: a sync.Pool of *[]byte.
type Pool interface {
	Get() any
	Put(any)
}

// ReadPooled is Read into a buffer from pool, taken only while data is
// there to read: while the descriptor is empty the buffer is back in the
// pool, so thousands of idle connections waiting here hold none. With n > 0
// the caller owns buf and puts it back; otherwise buf is nil.
func (c *Conn) ReadPooled(pool Pool) (buf *[]byte, n int, err error) {
	var serr error
	err = c.rc.Read(func(fd uintptr) bool {
		for {
			if buf == nil {
				buf = pool.Get().(*[]byte)
			}
			n, serr = read(fd, *buf)
			switch serr {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				pool.Put(buf)
				buf = nil
				return false
			}
			return true
		}
	})
	if n, err = readResult(n, err, serr); err != nil {
		if buf != nil {
			pool.Put(buf)
		}
		return nil, 0, err
	}
	return buf, n, nil
}

// Write writes all of b, waiting while the descriptor is full. An empty b
// is still one write: on a datagram socket, an empty datagram.
func (c *Conn) Write(b []byte) (int, error) {
	var n int
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		for {
			m, e := write(fd, b[n:])
			switch e {
			case nil:
				n += m
				if n >= len(b) {
					return true
				}
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				serr = e
				return true
			}
		}
	})
	if err == nil {
		err = serr
	}
	return n, err
}

// Writev writes all of bufs in as few system calls as it can.
func (c *Conn) Writev(bufs [][]byte) (int64, error) {
	var total int64
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		for len(bufs) > 0 {
			m, e := writev(fd, bufs)
			switch e {
			case nil:
				total += int64(m)
				bufs = consume(bufs, m)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				serr = e
				return true
			}
		}
		return true
	})
	if err == nil {
		err = serr
	}
	return total, err
}

// consume drops the first n bytes of bufs.
func consume(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 && n >= len(bufs[0]) {
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	if len(bufs) > 0 {
		bufs[0] = bufs[0][n:]
	}
	return bufs
}
