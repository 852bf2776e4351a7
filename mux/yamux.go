package mux

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"strings"
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
// right behind the hello.
type bufferedConn struct {
	io.Reader
	io.WriteCloser
}

func newBufferedConn(r *bufio.Reader, rwc io.ReadWriteCloser) io.ReadWriteCloser {
	return bufferedConn{Reader: &pingFilter{r: r}, WriteCloser: frameWriter(rwc)}
}
