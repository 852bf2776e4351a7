package mux

import (
	"io"
	"net"
	"sync"

	"github.com/k8stunnel/k8stunnel/internal/rawio"
)

// Conn is one side of a relayed connection.
type Conn interface {
	io.Reader
	io.Writer
	// CloseWrite says no more data will come from this side (a FIN).
	CloseWrite() error
	// Close releases the connection once both directions are done.
	Close() error
	// Abort tears the connection down so that its peer sees a failure
	// (a TCP reset), never a clean end.
	Abort()
}

const (
	// smallBuf is what an idle direction holds while it waits for data:
	// thousands of quiet connections must not pin a large buffer each.
	smallBuf = 1 << 10
	// bigBuf is used while data flows. A yamux frame is this plus a 12-byte
	// header, which makes exactly eight 32 KiB SSH packets. Against 128 KiB
	// it took 5 % off the client's CPU per GB and 10 % off the helper's
	// (bench -only bulk, median of 5): half the reads, frames and writes.
	bigBuf = 256<<10 - yamuxHeaderLen
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}

// Relay copies a to b and b to a until both directions are done. A clean EOF
// on one side becomes CloseWrite on the other, so half-closed connections keep
// working; any error aborts both sides. It returns the first error, or nil.
func Relay(a, b Conn) error {
	errc := make(chan error, 1)
	go func() { errc <- pipe(b, a) }()
	err := pipe(a, b)
	if err2 := <-errc; err == nil {
		err = err2
	}
	a.Close()
	b.Close()
	return err
}

// pipe copies src to dst until src ends.
func pipe(dst, src Conn) error {
	if err := copyAdaptive(dst, src); err != nil {
		src.Abort()
		dst.Abort()
		return err
	}
	dst.CloseWrite()
	return nil
}

// copyAdaptive is io.Copy with a buffer that grows while data flows and
// shrinks back when it trickles. A src that can wait for data without a
// buffer (a pooledReader) takes its small one from a pool only once data is
// there: a held connection that is idle holds no buffer at all.
func copyAdaptive(dst io.Writer, src io.Reader) error {
	pr, pooled := src.(pooledReader)
	var small []byte
	if !pooled {
		small = make([]byte, smallBuf)
	}
	var big *[]byte
	defer func() {
		if big != nil {
			bufPool.Put(big)
		}
	}()
	for {
		var n int
		var err error
		var buf []byte
		var lent *[]byte
		switch {
		case big != nil:
			buf = *big
			n, err = src.Read(buf)
		case pooled:
			lent, n, err = pr.readPooled(&smallPool)
			if lent != nil {
				buf = *lent
			}
		default:
			buf = small
			n, err = src.Read(buf)
		}
		if n > 0 {
			_, werr := dst.Write(buf[:n])
			if lent != nil {
				smallPool.Put(lent)
			}
			if werr != nil {
				return werr
			}
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		switch {
		case big == nil && n == smallBuf:
			big = bufPool.Get().(*[]byte)
			if s, ok := src.(shrinker); ok {
				s.busy()
			}
		case big != nil && n < smallBuf:
			bufPool.Put(big)
			big = nil
			if s, ok := src.(shrinker); ok {
				s.quiet()
			}
		}
	}
}

var smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}

// pooledReader reads into a buffer from a pool of *[]byte, taken only once
// data is there; with n > 0 the caller puts it back, else it is nil.
type pooledReader interface {
	readPooled(pool *sync.Pool) (buf *[]byte, n int, err error)
}

// shrinker is a Stream or Striped, whose receive buffers can be dropped
// while it is quiet (see Stream.quiet).
type shrinker interface {
	busy()
	quiet()
}

// NetConn adapts a socket: a TCP connection in production, anything in tests.
// Relay only calls Read and Write on it, never io.Copy's ReaderFrom or
// WriterTo, so no splice pipes (two descriptors each) are ever made.
//
// A socket's reads and writes go through rawio where it can: a relayed
// connection is idle between every two messages, the case rawio is for.
func NetConn(c net.Conn) Conn {
	if raw, ok := rawio.New(c); ok {
		return netConn{Conn: c, raw: raw}
	}
	return netConn{Conn: c}
}

type netConn struct {
	net.Conn
	raw *rawio.Conn // nil: through c
}

func (c netConn) Read(b []byte) (int, error) {
	if c.raw == nil {
		return c.Conn.Read(b)
	}
	return c.raw.Read(b)
}

func (c netConn) readPooled(pool *sync.Pool) (*[]byte, int, error) {
	if c.raw != nil {
		return c.raw.ReadPooled(pool)
	}
	return readLent(c.Conn, pool)
}

// readLent is readPooled for a reader that cannot wait without a buffer:
// it holds one while it waits.
func readLent(r io.Reader, pool *sync.Pool) (*[]byte, int, error) {
	buf := pool.Get().(*[]byte)
	n, err := r.Read(*buf)
	if n == 0 {
		pool.Put(buf)
		return nil, 0, err
	}
	return buf, n, err
}

func (c netConn) Write(b []byte) (int, error) {
	if c.raw == nil {
		return c.Conn.Write(b)
	}
	return c.raw.Write(b)
}

func (c netConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c netConn) Abort() {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // close with RST
	}
	c.Conn.Close()
}
