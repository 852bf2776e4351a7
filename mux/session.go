package mux

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
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

// frameWriter batches what yamux writes into as few SSH channel writes as
// it can. Every write to an SSH channel is at least one SSH packet: one MAC,
// one syscall here, one wakeup of sshd and of the helper on the node. yamux's
// send loop writes each frame as a header and then a body, and sends window
// updates, opens and closes of many streams as separate tiny frames.
//
// Small writes append to a buffer and a flusher goroutine sends whatever has
// gathered in one write, so nothing waits when the link is idle, and while a
// write is in flight the next frames pile up behind it to go together. A data
// header waits for its body. A large body goes out at once with what is
// pending. The buffer is bounded; past maxPending, Write waits, the same
// backpressure yamux's send loop met before.
func frameWriter(w io.WriteCloser) io.WriteCloser {
	b := &batcher{w: w, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

const (
	// maxPending bounds what a session buffers before its writes wait.
	maxPending = 1 << 20
	// directWrite is the size from which a write goes out at once, from the
	// caller, instead of through the flusher.
	directWrite = 16 << 10
)

type batcher struct {
	w    io.WriteCloser
	kick chan struct{} // never closed: Write may send on it at any time
	stop chan struct{} // closed by Close

	wmu sync.Mutex // held while writing to w: keeps writes in append order

	mu     sync.Mutex
	cond   *sync.Cond // signalled when buf was taken or err set
	buf    []byte
	spare  []byte
	err    error
	closed bool
}

func (b *batcher) Write(p []byte) (int, error) {
	if len(p) >= directWrite {
		return b.writeThrough(p)
	}
	b.mu.Lock()
	for b.err == nil && len(b.buf) > 0 && len(b.buf)+len(p) > maxPending {
		b.cond.Wait()
	}
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	b.buf = append(b.buf, p...)
	b.mu.Unlock()
	if len(p) == yamuxHeaderLen && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		return len(p), nil // the body comes next
	}
	select {
	case b.kick <- struct{}{}:
	default: // already awake or about to be
	}
	return len(p), nil
}

// writeThrough sends a large body at once from the caller, together with
// whatever is pending (its header at least). Handing bulk data to the
// flusher measured slower: a goroutine switch per frame, and on the node's
// single P a thread handoff whenever the flusher blocks in its write.
func (b *batcher) writeThrough(p []byte) (int, error) {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	out := append(b.buf, p...)
	b.buf, b.spare = b.spare[:0], nil
	b.cond.Broadcast()
	b.mu.Unlock()
	_, err := b.w.Write(out)
	b.done(out, err)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// done recycles a written buffer and records a write error.
func (b *batcher) done(out []byte, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil && b.err == nil {
		b.err = err
	}
	if cap(out) <= 2*maxPending {
		b.spare = out[:0]
	}
	b.cond.Broadcast()
}

func (b *batcher) flush() {
	for {
		select {
		case <-b.kick:
		case <-b.stop:
			return
		}
		for {
			b.wmu.Lock()
			b.mu.Lock()
			out := b.buf
			b.buf, b.spare = b.spare[:0], nil
			b.cond.Broadcast()
			b.mu.Unlock()
			if len(out) == 0 {
				b.wmu.Unlock()
				break
			}
			_, err := b.w.Write(out)
			b.done(out, err)
			b.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// Close ends the session's writes; what is still buffered is dropped, as a
// closing yamux session drops its queue.
func (b *batcher) Close() error {
	b.mu.Lock()
	if b.err == nil {
		b.err = io.ErrClosedPipe
	}
	first := !b.closed
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	if first {
		close(b.stop)
	}
	return b.w.Close()
}
