package mux

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// StreamWindow is the most a stream may have in flight. It bounds what one
// slow reader can make the other end buffer, and it must be at least the SSH
// channel's 2 MiB window or yamux, not SSH, limits a long, fast link.
const StreamWindow = 4 << 20

// YamuxConfig is the yamux configuration both ends use.
//
// Keepalive is off: yamux pings queue behind data and can kill a busy session
// falsely; liveness is checked with SSH keepalives instead. Streams never time
// out on close, because a half-closed stream can legitimately live for hours
// (a request sent, a long answer still streaming); aborts travel as KindReset.
func YamuxConfig(log *slog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 4096
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 60 * time.Second
	c.MaxStreamWindowSize = StreamWindow
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = 0
	c.LogOutput = nil
	c.Logger = yamuxLogger{log}
	return c
}

// yamuxLogger turns yamux's printf lines into debug records.
type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any) {
	if l.log != nil {
		l.log.Debug(strings.TrimSpace(fmt.Sprint(v...)), "from", "yamux")
	}
}

func (l yamuxLogger) Printf(format string, v ...any) {
	if l.log != nil {
		l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "from", "yamux")
	}
}

func (l yamuxLogger) Println(v ...any) { l.Print(v...) }

// bufferedConn hands yamux the reader that already holds whatever arrived
// right behind the hello.
type bufferedConn struct {
	*bufio.Reader
	io.WriteCloser
}

func newBufferedConn(r *bufio.Reader, rwc io.ReadWriteCloser) io.ReadWriteCloser {
	return bufferedConn{Reader: r, WriteCloser: frameWriter(rwc)}
}

// yamux frame header: version(1) type(1) flags(2) stream(4) length(4).
const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0
)

// frameWriter joins each yamux data header with the body yamux writes right
// after it. yamux's send loop writes them separately, and every write to an
// SSH channel is at least one SSH packet (one MAC, one syscall): joined, a
// frame that fits a packet costs one instead of two.
//
// Only yamux's send loop writes to the connection, so no lock is needed.
func frameWriter(w io.WriteCloser) io.WriteCloser { return &coalescer{w: w} }

type coalescer struct {
	w       io.WriteCloser
	hdr     [yamuxHeaderLen]byte
	pending bool
	buf     []byte
}

func (c *coalescer) Write(p []byte) (int, error) {
	if c.pending {
		c.pending = false
		c.buf = append(append(c.buf[:0], c.hdr[:]...), p...)
		_, err := c.w.Write(c.buf)
		if cap(c.buf) > 1<<20 {
			c.buf = nil // one huge frame must not pin its buffer forever
		}
		return len(p), err
	}
	if len(p) == yamuxHeaderLen && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		// A data header with a non-empty body: yamux writes the body next.
		copy(c.hdr[:], p)
		c.pending = true
		return len(p), nil
	}
	return c.w.Write(p)
}

func (c *coalescer) Close() error { return c.w.Close() }
