package mux

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// streamWindow is the most a stream may have in flight. It bounds what one
// slow reader can make the other end buffer, and it must be at least the SSH
// channel's 2 MiB window or yamux, not SSH, limits a long, fast link.
const streamWindow = 4 << 20

// yamuxConfig is the yamux configuration both ends use.
//
// Keepalive is off: yamux pings queue behind data and can kill a busy session
// falsely; liveness is checked with SSH keepalives instead. Streams never time
// out on close, because a half-closed stream can legitimately live for hours
// (a request sent, a long answer still streaming); aborts travel as kindReset.
//
// AcceptBacklog is what a burst of the peer's new streams may queue before
// Serve takes them; yamux resets the rest (it has no MaxIncomingStreams).
// It is also how many of our own opens may await the peer's answer, so it
// stays large; Serve bounds what the peer's streams hold once taken.
func yamuxConfig(log *slog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 4096
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 60 * time.Second
	c.MaxStreamWindowSize = streamWindow
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
// right behind the hello, and runs beforeEnd (the session's killAll) before
// yamux learns that the session is over: before a read or write error
// reaches it, and when it closes the connection.
//
// yamux's Close wakes every blocked Read and Write of its streams at once,
// and they spin until yamux marks the streams closed (see killAll). With
// thousands of them, waking them took the closing goroutine past its time
// slice, it was preempted and queued behind every spinner, each of which
// held the one P for a whole slice: the streams must be dead before that.
type bufferedConn struct {
	r         io.Reader
	w         io.WriteCloser
	beforeEnd atomic.Pointer[func()]
}

func newBufferedConn(r *bufio.Reader, rwc io.ReadWriteCloser) *bufferedConn {
	return &bufferedConn{r: &pingFilter{r: r}, w: frameWriter(rwc)}
}

func (c *bufferedConn) ending() {
	if f := c.beforeEnd.Load(); f != nil {
		(*f)()
	}
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil {
		c.ending()
	}
	return n, err
}

func (c *bufferedConn) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		c.ending()
	}
	return n, err
}

// Close is where yamux's Session.Close goes right after it closed the
// session's shutdown channel, whoever ended the session.
func (c *bufferedConn) Close() error {
	c.ending()
	return c.w.Close()
}
