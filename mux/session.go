package mux

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/yamux"
)

// requestTimeout bounds how long an accepted stream may take to send its header.
const requestTimeout = 30 * time.Second

// Session is one yamux session over one SSH channel, plus the bookkeeping
// both ends need to reset each other's streams.
type Session struct {
	ys   *yamux.Session
	log  *slog.Logger
	Peer Hello // what the other end said in its hello

	mu     sync.Mutex
	active map[uint32]*Stream
}

// NewClient says hello on rwc, checks the helper's answer and starts a yamux
// client session on it.
func NewClient(rwc io.ReadWriteCloser, hello Hello, log *slog.Logger) (*Session, error) {
	hello.Version = Version
	if err := WriteHello(rwc, hello); err != nil {
		return nil, fmt.Errorf("sending handshake: %w", err)
	}
	br := bufio.NewReader(rwc)
	peer, skipped, err := ReadHello(br)
	if text := describeNoise(skipped); text != "" {
		if err != nil {
			// Most likely a shell saying why the helper did not start.
			return nil, fmt.Errorf("%w; the node said: %s", err, text)
		}
		log.Debug("skipped output before the helper's handshake", "text", text)
	}
	if err != nil {
		return nil, err
	}
	if peer.Error != "" {
		return nil, fmt.Errorf("helper refused the session: %s", peer.Error)
	}
	if peer.Version != Version {
		return nil, fmt.Errorf("%w: the helper on the node speaks protocol %d, this client %d", ErrVersionMismatch, peer.Version, Version)
	}
	ys, err := yamux.Client(newBufferedConn(br, rwc), YamuxConfig(log))
	if err != nil {
		return nil, err
	}
	return newSession(ys, peer, log), nil
}

// NewServer reads the client's hello from rwc, answers it with what answer
// returns and starts a yamux server session.
func NewServer(rwc io.ReadWriteCloser, answer func(Hello) Hello, log *slog.Logger) (*Session, error) {
	br := bufio.NewReader(rwc)
	peer, _, err := ReadHello(br)
	if err != nil {
		return nil, err
	}
	var resp Hello
	if peer.Version == Version {
		resp = answer(peer)
	} else {
		resp.Error = fmt.Sprintf("client speaks protocol %d, this helper %d: use the same k8stunnel version on both ends", peer.Version, Version)
	}
	resp.Version = Version
	if err := WriteHello(rwc, resp); err != nil {
		return nil, fmt.Errorf("sending handshake: %w", err)
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("%w: %s", ErrVersionMismatch, resp.Error)
	}
	ys, err := yamux.Server(newBufferedConn(br, rwc), YamuxConfig(log))
	if err != nil {
		return nil, err
	}
	return newSession(ys, peer, log), nil
}

func newSession(ys *yamux.Session, peer Hello, log *slog.Logger) *Session {
	s := &Session{ys: ys, log: log, Peer: peer, active: make(map[uint32]*Stream)}
	go s.unblockOnClose()
	return s
}

// unblockOnClose wakes every stream's reader and writer when the session
// ends. yamux marks its streams closed only after its receive loop has
// stopped, which over SSH waits for the peer to confirm the channel close;
// until then each blocked Read or Write wakes on the closed session, finds
// its stream still open and waits again, in a loop that never sleeps. A
// deadline in the past makes them return instead of spinning: with
// thousands of streams that spin took both cores for seconds.
func (s *Session) unblockOnClose() {
	<-s.ys.CloseChan()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.active {
		st.s.SetDeadline(time.Now())
	}
}

// Dial opens a stream asking the helper to connect to dst. The request goes
// out at once; the helper's status is read by the stream's first Read, so the
// application's first bytes need not wait a round trip.
func (s *Session) Dial(dst netip.AddrPort) (*Stream, error) {
	ys, err := s.ys.OpenStream()
	if err != nil {
		return nil, err
	}
	if err := WriteRequest(ys, Request{Kind: KindConnect, Dst: dst}); err != nil {
		ys.Close()
		return nil, fmt.Errorf("sending request for %v: %w", dst, err)
	}
	return s.track(ys, true), nil
}

// Serve accepts streams until the session ends. Resets are handled here;
// connect requests go to handle, each in its own goroutine. handle owns the
// stream and must close it.
func (s *Session) Serve(ctx context.Context, handle func(Request, *Stream)) error {
	for {
		ys, err := s.ys.AcceptStreamWithContext(ctx)
		if err != nil {
			if ctx.Err() != nil || s.ys.IsClosed() {
				return nil
			}
			return err
		}
		go s.serveStream(ys, handle)
	}
}

func (s *Session) serveStream(ys *yamux.Stream, handle func(Request, *Stream)) {
	ys.SetReadDeadline(time.Now().Add(requestTimeout))
	req, err := ReadRequest(ys)
	ys.SetReadDeadline(time.Time{})
	if err != nil {
		s.log.Debug("bad stream request", "err", err)
		ys.Close()
		return
	}
	if req.Kind == KindReset {
		ys.Close()
		s.mu.Lock()
		victim := s.active[req.StreamID]
		s.mu.Unlock()
		if victim != nil {
			victim.resetByPeer()
		}
		return
	}
	handle(req, s.track(ys, false))
}

func (s *Session) track(ys *yamux.Stream, needStatus bool) *Stream {
	st := &Stream{s: ys, sess: s, needStatus: needStatus}
	s.mu.Lock()
	s.active[ys.StreamID()] = st
	s.mu.Unlock()
	if s.ys.IsClosed() {
		// Too late for unblockOnClose, which may have run already.
		ys.SetDeadline(time.Now())
	}
	return st
}

func (s *Session) forget(id uint32) {
	s.mu.Lock()
	delete(s.active, id)
	s.mu.Unlock()
}

// sendReset tells the peer to abort stream id. It runs in the background:
// opening a stream can wait, and the caller is tearing down already.
func (s *Session) sendReset(id uint32) {
	go func() {
		ys, err := s.ys.OpenStream()
		if err != nil {
			return
		}
		WriteRequest(ys, Request{Kind: KindReset, StreamID: id})
		ys.Close()
	}()
}

// NumStreams is how many streams are open now.
func (s *Session) NumStreams() int { return s.ys.NumStreams() }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.ys.CloseChan() }

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.ys.IsClosed() }

// Close ends the session and every stream on it; safe to call twice.
func (s *Session) Close() error { return s.ys.Close() }

// Stream is one relayed connection inside a Session.
type Stream struct {
	s    *yamux.Stream
	sess *Session
	// needStatus means the first byte is the helper's dial status, which must
	// be OK before anything is passed on to the application.
	needStatus bool
	reset      atomic.Bool // the peer aborted this stream
	aborted    atomic.Bool // we aborted it
	closed     atomic.Bool
}

// WriteStatus answers a connect request (helper side).
func (c *Stream) WriteStatus(st Status) error { return WriteStatus(c.s, st) }

// ID is the yamux stream ID, the same on both ends.
func (c *Stream) ID() uint32 { return c.s.StreamID() }

func (c *Stream) Read(b []byte) (int, error) {
	if c.needStatus {
		st, err := ReadStatus(c.s)
		if err != nil {
			return 0, c.readErr(err)
		}
		if st != StatusOK {
			return 0, &DialError{Status: st}
		}
		c.needStatus = false
	}
	n, err := c.s.Read(b)
	if err != nil {
		err = c.readErr(err)
	}
	return n, err
}

func (c *Stream) readErr(err error) error {
	switch {
	case c.reset.Load():
		return ErrPeerReset
	case (err == io.EOF || errors.Is(err, yamux.ErrTimeout)) && c.s.Session().IsClosed():
		return ErrSessionLost
	}
	return err
}

func (c *Stream) Write(b []byte) (int, error) {
	// yamux checks a write deadline only once the send window is used up,
	// so a reset stream with window to spare would go on sending.
	if c.reset.Load() {
		return 0, ErrPeerReset
	}
	n, err := c.s.Write(b)
	switch {
	case err == nil:
	case c.reset.Load():
		err = ErrPeerReset
	case c.s.Session().IsClosed():
		err = ErrSessionLost
	}
	return n, err
}

// CloseWrite sends a FIN: yamux's Close is a half-close.
func (c *Stream) CloseWrite() error { return c.s.Close() }

func (c *Stream) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	if c.aborted.Load() && !c.reset.Load() {
		// Our FIN must not overtake the reset we sent: the peer would read a
		// clean end before it learns of the reset. The peer closes its side
		// once it has aborted, so wait for that, bounded, then close ours.
		go func() {
			c.s.SetReadDeadline(time.Now().Add(abortLinger))
			if c.s.Session().IsClosed() {
				c.s.SetReadDeadline(time.Now()) // see unblockOnClose
			}
			io.Copy(io.Discard, c.s)
			c.s.Close()
			c.sess.forget(c.s.StreamID())
		}()
		return nil
	}
	c.sess.forget(c.s.StreamID())
	return c.s.Close()
}

// abortLinger bounds how long an aborted stream waits for the peer to close.
const abortLinger = 10 * time.Second

// Abort makes the peer abort its side too, and unblocks our own reader and
// writer: the peer may never answer.
func (c *Stream) Abort() {
	if c.aborted.Swap(true) {
		return
	}
	if !c.reset.Load() {
		c.sess.sendReset(c.s.StreamID())
	}
	c.s.SetDeadline(time.Now())
}

func (c *Stream) resetByPeer() {
	c.reset.Store(true)
	c.s.SetDeadline(time.Now())
}

// Shrink drops the receive buffer when it is empty, so idle streams stay small.
func (c *Stream) Shrink() { c.s.Shrink() }

// DialError is what the helper reported when it could not reach the destination.
type DialError struct{ Status Status }

func (e *DialError) Error() string { return e.Status.String() }

// describeNoise says what came before the hello in a form fit for one log
// or error line: the first lines when it is text, its size when it is not
// (a binary must never be poured onto the user's terminal).
func describeNoise(b []byte) string {
	text := strings.TrimSpace(string(b))
	if text == "" {
		return ""
	}
	if !utf8.ValidString(text) || strings.ContainsFunc(text, func(r rune) bool {
		return unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r'
	}) {
		return fmt.Sprintf("%d bytes that are not text", len(b))
	}
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) > 3 {
		lines = lines[:3]
	}
	text = strings.Join(lines, " / ")
	if len(text) > 300 {
		text = text[:300] + "..."
	}
	return text
}
