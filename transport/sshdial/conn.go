package sshdial

import (
	"bufio"
	"io"
	"net"
	"sync"
	"time"

	"github.com/k8stunnel/k8stunnel/internal/rawio"
)

// packetConn is the connection x/crypto/ssh gets: it reads as much as the
// socket holds and sends each SSH packet in one system call.
//
// x/crypto reads through a 4 KiB buffer, which is two read syscalls per
// 32 KiB packet, each waking this process once more. It also writes through
// a 4 KiB bufio.Writer and flushes it after every packet: a packet larger
// than that leaves as the full buffer, 4096 bytes, and then the rest, two
// write syscalls and two trips through the TCP stack. bufio writes a full
// buffer in the middle of a Write, with the rest of the packet to follow at
// once, or at the packet's end when the packet is exactly 4096 bytes, which
// an AEAD cipher never makes (its packets are 4 bytes past a multiple of 8)
// but the key exchange could. So a 4096-byte write is held and goes out
// with the next one in one writev, or by itself after holdMax.
func packetConn(c net.Conn) net.Conn {
	p := &pconn{Conn: c, w: c}
	var r io.Reader = c
	if raw, ok := rawio.New(c); ok {
		p.raw, p.w, r = raw, raw, raw
	}
	p.r = bufio.NewReaderSize(r, 256<<10)
	p.timer = time.AfterFunc(time.Hour, p.flushHeld)
	p.timer.Stop()
	return p
}

const (
	// bufioSize is x/crypto/ssh's write buffer: bufio's default size.
	bufioSize = 4096
	// holdMax bounds how long a held write may wait for its packet's rest.
	holdMax = time.Millisecond
)

type pconn struct {
	net.Conn
	r     *bufio.Reader
	w     io.Writer   // c, or raw
	raw   *rawio.Conn // c through raw system calls, when it can be
	timer *time.Timer

	mu   sync.Mutex
	held []byte
	err  error // of a held write sent by the timer
}

func (c *pconn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *pconn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(c.held) > 0 {
		c.timer.Stop()
		n, err := c.writev(c.held, p)
		n -= int64(len(c.held))
		c.held = c.held[:0]
		return max(int(n), 0), err
	}
	if len(p) == bufioSize {
		c.held = append(c.held[:0], p...)
		c.timer.Reset(holdMax)
		return len(p), nil
	}
	return c.w.Write(p)
}

func (c *pconn) writev(a, b []byte) (int64, error) {
	if c.raw != nil {
		return c.raw.Writev([][]byte{a, b})
	}
	bufs := net.Buffers{a, b}
	return bufs.WriteTo(c.Conn)
}

// flushHeld sends a held write that nothing followed.
func (c *pconn) flushHeld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.held) == 0 || c.err != nil {
		return
	}
	_, c.err = c.w.Write(c.held)
	c.held = c.held[:0]
}

func (c *pconn) Close() error {
	c.timer.Stop()
	return c.Conn.Close()
}
