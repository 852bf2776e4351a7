package mux

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

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

// RelayAsync is Relay in two goroutines of its own: it returns at once, and
// done gets what Relay would have returned, once both directions are done
// and both sides closed.
//
// It is for a caller whose own goroutine went deep before the relay (a
// connection's setup, its log line): a goroutine's stack grows to fit its
// deepest call, and the runtime shrinks it back only while it waits in a
// call a few hundred bytes deep, which a relay's wait is not. Ten thousand
// held connections each kept a 4 KiB stack for their setup; a fresh
// goroutine whose relay reads the stream stays at 2 KiB.
func RelayAsync(a, b Conn, done func(error)) {
	r := &relay{a: a, b: b, done: done}
	r.left.Store(2)
	go r.pipe(&r.errA, a, b)
	go r.pipe(&r.errB, b, a)
}

// relay is one RelayAsync: the direction that ends last finishes it.
type relay struct {
	a, b       Conn
	errA, errB error // of the directions into a and into b, each set by its own goroutine before left drops
	left       atomic.Int32
	done       func(error)
}

func (r *relay) pipe(err *error, dst, src Conn) {
	e := copyAdaptive(dst, src, true)
	if e == errHandOver {
		// Wait in a new goroutine, at 2 KiB: see copyAdaptive.
		go r.pipe(err, dst, src)
		return
	}
	*err = finish(dst, src, e)
	if r.left.Add(-1) != 0 {
		return
	}
	r.a.Close()
	r.b.Close()
	if r.errA != nil {
		r.done(r.errA)
		return
	}
	r.done(r.errB)
}

// pipe copies src to dst until src ends.
func pipe(dst, src Conn) error { return finish(dst, src, copyAdaptive(dst, src, false)) }

// finish ends a direction whose copy ended with err: a clean end is passed
// on as a half-close, a failure aborts both sides.
func finish(dst, src Conn, err error) error {
	if err != nil {
		src.Abort()
		dst.Abort()
		return err
	}
	dst.CloseWrite()
	return nil
}

// copyAdaptive is io.Copy with a buffer that grows while data flows and
// shrinks back when it trickles. While it trickles the buffer is a small one
// from a pool, which a PooledReader src takes only once data is there: a
// held connection that is idle then holds no buffer at all.
//
// With handOver it returns errHandOver, for the caller to go on in a new
// goroutine, after each small read whose bytes it wrote into a yamux
// stream, and after a read that got only the stream's status. Sending into
// yamux (a write, or the window update that reading the status sends)
// grows a goroutine's stack to 4 KiB, and the runtime never shrinks it
// back while the goroutine waits a few hundred bytes deep, as it does here;
// a new goroutine waits at 2 KiB. That costs a goroutine start, and its
// stack's growth on its first send, per small message toward the node (in
// perf of request/response, 5 % of the client's CPU; bulk reads go on where
// they are). Trying a read first, to hand over only when the connection is
// idle, cost a system call per message instead; a read deadline, to hand
// over only after 200 ms of quiet, cost as much in timer updates.
func copyAdaptive(dst io.Writer, src io.Reader, handOver bool) error {
	_, intoStream := dst.(shrinker)
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
		if big != nil {
			buf = *big
			n, err = src.Read(buf)
		} else if lent, n, err = ReadPooled(src, &smallPool); lent != nil {
			buf = *lent
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
		case big == nil && handOver && (intoStream || n == 0):
			return errHandOver
		}
	}
}

// errHandOver is copyAdaptive's report that the copy is to go on in a new
// goroutine (handOver).
var errHandOver = errors.New("go on in a new goroutine")

var smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}

// PooledReader is a Conn that can wait for data without a buffer: it reads
// into one from pool (of *[]byte) taken only once data is there. With n > 0
// the caller puts buf back; otherwise buf is nil.
type PooledReader interface {
	ReadPooled(pool *sync.Pool) (buf *[]byte, n int, err error)
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

// ReadPooled: see PooledReader.
func (c netConn) ReadPooled(pool *sync.Pool) (*[]byte, int, error) {
	if c.raw != nil {
		return c.raw.ReadPooled(pool)
	}
	return readLent(c.Conn, pool)
}

// ReadPooled reads r as a PooledReader does, r's own way when it is one;
// any other reader holds the buffer while it waits.
func ReadPooled(r io.Reader, pool *sync.Pool) (*[]byte, int, error) {
	if pr, ok := r.(PooledReader); ok {
		return pr.ReadPooled(pool)
	}
	return readLent(r, pool)
}

// readLent reads r into a buffer from pool, held while r waits.
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
