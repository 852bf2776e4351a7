package mux

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/yamux"
)

// requestWait bounds how long a stream the peer opened may take to send its
// header, and a reset stream to end after it. Both come right behind the
// stream's opening, in the same burst of frames.
const requestWait = 10 * time.Second

// maxUnread bounds the streams whose header is awaited at once. Past it the
// accept loop waits, and yamux resets what its backlog cannot hold.
const maxUnread = 256

// maxStrays is how many streams the peer may open that it should not have
// (a connect to an end that takes none, a bad or missing header, a reset
// stream that goes on past its header) before the session is closed. yamux
// cannot drop a stream the peer keeps open, each with up to a 256 KiB
// receive window of data: only the session's end frees them. A peer of ours
// never opens one.
const maxStrays = 64

// Session is one yamux session over one SSH channel, plus the bookkeeping
// both ends need to reset each other's streams.
type Session struct {
	ys   *yamux.Session
	log  *slog.Logger
	Peer Hello // what the other end said in its hello

	// statusTimeout and requestTimeout, in nanoseconds, replace statusWait
	// and requestWait when set; tests shorten them.
	statusTimeout  atomic.Int64
	requestTimeout atomic.Int64

	ending      atomic.Bool  // killAll ran: the session is ending, whether or not yamux knows yet
	strays      atomic.Int64 // streams the peer opened that it should not have
	strayClosed atomic.Bool  // the session was closed for too many of them

	// active holds the streams by yamux ID. A sync.Map: killAll must walk
	// it at once, never behind thousands of ending streams' forget.
	active sync.Map // uint32 -> *Stream

	// goMu orders starting goroutines (wg.Add) against Close's wg.Wait.
	goMu    sync.Mutex
	closing bool
	wg      sync.WaitGroup
}

// statusWait bounds how long a dialled stream waits for the helper's
// status: the helper's dial timeout (10 s) plus a margin. A helper that never
// answers must not leave the application's connection hanging.
const statusWait = 20 * time.Second

// NewClient says hello on rwc, checks the helper's answer and starts a yamux
// client session on it.
func NewClient(rwc io.ReadWriteCloser, hello Hello, log *slog.Logger) (*Session, error) {
	hello.version = protocolVersion
	if err := writeHello(rwc, hello); err != nil {
		return nil, fmt.Errorf("sending handshake: %w", err)
	}
	br := bufio.NewReader(rwc)
	peer, skipped, err := readHello(br)
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
	if peer.version != protocolVersion {
		return nil, fmt.Errorf("%w: the helper on the node speaks protocol %d, this client %d", ErrVersionMismatch, peer.version, protocolVersion)
	}
	bc := newBufferedConn(br, rwc)
	ys, err := yamux.Client(bc, yamuxConfig(log))
	if err != nil {
		return nil, err
	}
	return newSession(ys, bc, peer, log), nil
}

// NewServer reads the client's hello from rwc, answers it with what answer
// returns and starts a yamux server session.
func NewServer(rwc io.ReadWriteCloser, answer func(Hello) Hello, log *slog.Logger) (*Session, error) {
	peer, br, err := ReadHello(rwc)
	if err != nil {
		return nil, err
	}
	return Accept(rwc, br, peer, answer, log)
}

// ReadHello reads the client's hello from r: NewServer's first half, for a
// helper that looks at the hello before it decides who answers it. br holds
// whatever was read past the hello too: nothing, unless the client sent more
// without waiting for an answer (br.Buffered() says).
func ReadHello(r io.Reader) (peer Hello, br *bufio.Reader, err error) {
	br = bufio.NewReader(r)
	peer, _, err = readHello(br)
	return peer, br, err
}

// Accept is NewServer's second half: it answers peer, read by ReadHello into
// br, with what answer returns, or refuses a peer of another protocol
// version, and starts a yamux server session.
func Accept(rwc io.ReadWriteCloser, br *bufio.Reader, peer Hello, answer func(Hello) Hello, log *slog.Logger) (*Session, error) {
	if !peer.Compatible() {
		resp := Hello{Error: fmt.Sprintf("client speaks protocol %d, this helper %d: use the same k8stunnel version on both ends", peer.version, protocolVersion)}
		if err := sendHello(rwc, resp); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s", ErrVersionMismatch, resp.Error)
	}
	resp := answer(peer)
	if err := sendHello(rwc, resp); err != nil {
		return nil, err
	}
	return startServer(rwc, br, peer, log)
}

// Greet starts a yamux server session on a channel whose client hello
// another process read (a joined channel, see Hello.Join): it answers with
// resp unasked. The session's Peer is empty; br, may be nil, holds anything
// read from rwc since.
func Greet(rwc io.ReadWriteCloser, br *bufio.Reader, resp Hello, log *slog.Logger) (*Session, error) {
	if err := sendHello(rwc, resp); err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReader(rwc)
	}
	return startServer(rwc, br, Hello{version: protocolVersion}, log)
}

func sendHello(w io.Writer, resp Hello) error {
	resp.version = protocolVersion
	if err := writeHello(w, resp); err != nil {
		return fmt.Errorf("sending handshake: %w", err)
	}
	return nil
}

func startServer(rwc io.ReadWriteCloser, br *bufio.Reader, peer Hello, log *slog.Logger) (*Session, error) {
	bc := newBufferedConn(br, rwc)
	ys, err := yamux.Server(bc, yamuxConfig(log))
	if err != nil {
		return nil, err
	}
	return newSession(ys, bc, peer, log), nil
}

func newSession(ys *yamux.Session, bc *bufferedConn, peer Hello, log *slog.Logger) *Session {
	s := &Session{ys: ys, log: log, Peer: peer}
	kill := s.killAll
	bc.beforeEnd.Store(&kill)
	if ys.IsClosed() {
		s.killAll() // closed before the hook was in place
	}
	return s
}

// goTracked runs f in a goroutine that Close waits for, unless Close has
// begun; it reports whether f was started.
func (s *Session) goTracked(f func()) bool {
	s.goMu.Lock()
	defer s.goMu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Go(f)
	return true
}

// killAll wakes every stream's reader and writer for good. Close calls it
// first, and the transport yamux is given (bufferedConn) calls it before
// yamux learns of a read or write error and when yamux closes it. yamux
// marks its streams closed only after its receive loop has stopped, which
// over SSH waits for the peer to confirm the channel close; until then each
// blocked Read or Write wakes on the closed session, finds its stream still
// open and waits again, in a loop that never sleeps. A deadline in the past makes
// them return instead of spinning. It must be set before any of them runs:
// on one P each spinner holds the P for a whole time slice, and with
// thousands of streams a goroutine that came after them (this was one)
// waited seconds for its turn (TestCloseWithManyBlockedReaders).
func (s *Session) killAll() {
	s.ending.Store(true)
	for _, st := range s.active.Range {
		st.(*Stream).kill()
	}
}

// Dial opens a stream asking the helper to connect to dst. The request goes
// out at once; the helper's status is read by the stream's first Read (or
// WaitDial), so the application's first bytes need not wait a round trip.
func (s *Session) Dial(dst netip.AddrPort) (*Stream, error) {
	return s.open(Request{kind: kindConnect, Dst: dst}, streamAddr{dst: dst}, true)
}

// DialName is Dial for a host name, which the helper resolves with the
// node's resolver; a name that does not resolve fails with StatusNoName.
func (s *Session) DialName(host string, port uint16) (*Stream, error) {
	if !s.Peer.Names {
		return nil, ErrNoNames
	}
	req := Request{kind: kindConnectName, Host: host, Port: port}
	return s.open(req, streamAddr{name: req.Target()}, true)
}

// open opens a stream with header req; with status, its first Read (or
// WaitDial) reads the peer's answer to it first.
func (s *Session) open(req Request, addr streamAddr, status bool) (*Stream, error) {
	var buf [maxRequestLen]byte
	b, err := appendRequest(buf[:0], req)
	if err != nil {
		return nil, err
	}
	ys, err := s.ys.OpenStream()
	if err != nil {
		return nil, err
	}
	// One Write, so the header travels in one frame.
	if _, err := ys.Write(b); err != nil {
		ys.Close()
		return nil, fmt.Errorf("sending request for %v: %w", addr, err)
	}
	st := s.track(ys, addr, true, status)
	if !status {
		return st, nil
	}
	timeout := time.Duration(s.statusTimeout.Load())
	if timeout == 0 {
		timeout = statusWait
	}
	st.statusTimer = time.AfterFunc(timeout, func() {
		if st.needStatus.Load() {
			st.statusLate.Store(true)
			st.Abort()
		}
	})
	return st, nil
}

// Serve accepts streams until the session ends. Resets are handled here;
// connect requests go to handle, each in its own goroutine. handle owns the
// stream and must close it. A nil handle means this end takes no connects
// (the client: the helper opens streams only to reset the client's); every
// connect the peer asks for is then refused at once, never handled. Serve
// returns ErrStrayStreams when it closed the session because the peer opened
// too many streams it should not have.
func (s *Session) Serve(ctx context.Context, handle func(Request, *Stream)) error {
	var accept func(Request) bool
	if handle != nil {
		accept = func(r Request) bool {
			return r.kind == kindConnect || r.kind == kindConnectName || r.kind == kindUDP || r.kind == kindStripe
		}
	}
	return s.serve(ctx, accept, handle)
}

// serve is Serve handing on the requests accept takes; a nil accept takes none.
func (s *Session) serve(ctx context.Context, accept func(Request) bool, handle func(Request, *Stream)) error {
	pending := make(chan struct{}, maxUnread)
	for {
		select {
		case pending <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		ys, err := s.ys.AcceptStreamWithContext(ctx)
		if err != nil {
			switch {
			case s.strayClosed.Load():
				return ErrStrayStreams
			case ctx.Err() != nil || s.ys.IsClosed():
				return nil
			}
			return err
		}
		go func() {
			req, ok := s.admit(ys, accept)
			<-pending
			if ok {
				handle(req, s.track(ys, streamAddr{dst: req.Dst, name: req.Target()}, false, false))
			}
		}()
	}
}

// admit reads the request of a stream the peer opened and carries out a
// reset. It reports a request that accept says to hand on; any other stream
// it has closed.
func (s *Session) admit(ys *yamux.Stream, accept func(Request) bool) (Request, bool) {
	wait := time.Duration(s.requestTimeout.Load())
	if wait == 0 {
		wait = requestWait
	}
	ys.SetReadDeadline(time.Now().Add(wait))
	req, err := readRequest(ys)
	switch {
	case err != nil:
		s.stray(ys, "bad stream request", err)
	case req.kind == kindReset:
		if victim, ok := s.active.Load(req.streamID); ok {
			victim.(*Stream).resetByPeer()
		}
		// The peer ends a reset stream right behind its header. Its end
		// frees the stream on both sides; a stream it keeps open would
		// stay with us until the session ends.
		if n, err := ys.Read(make([]byte, 1)); n > 0 || err != io.EOF {
			s.stray(ys, "reset stream not ended after its header", err)
			break
		}
		ys.Close()
	case accept == nil || !accept(req):
		writeStatus(ys, StatusRefused)
		s.stray(ys, "refused a stream this end did not ask for", nil)
	default:
		ys.SetReadDeadline(time.Time{})
		return req, true
	}
	return Request{}, false
}

// stray closes a stream the peer should not have opened, or not that way,
// and the session once the peer has opened too many.
func (s *Session) stray(ys *yamux.Stream, why string, err error) {
	ys.Close()
	n := s.strays.Add(1)
	s.log.Debug(why, "stream", ys.StreamID(), "err", err, "strays", n)
	if n == maxStrays+1 {
		s.log.Warn("closing the tunnel session: the other end opened streams it should not have", "streams", n)
		s.strayClosed.Store(true)
		s.ys.Close()
	}
}

func (s *Session) track(ys *yamux.Stream, addr streamAddr, dialled, status bool) *Stream {
	st := &Stream{s: ys, sess: s, addr: addr, dialled: dialled}
	st.needStatus.Store(status)
	s.active.Store(ys.StreamID(), st)
	if s.gone() {
		// Too late for killAll, which may have run already.
		st.kill()
	}
	return st
}

func (s *Session) forget(id uint32) { s.active.Delete(id) }

// sendReset tells the peer to abort stream id. It runs in the background:
// opening a stream can wait, and the caller is tearing down already.
func (s *Session) sendReset(id uint32) {
	s.goTracked(func() { // once Close has begun, there is no peer to tell
		ys, err := s.ys.OpenStream()
		if err != nil {
			return
		}
		writeRequest(ys, Request{kind: kindReset, streamID: id})
		ys.Close()
	})
}

// gone reports that the session ended or is ending.
func (s *Session) gone() bool { return s.ending.Load() || s.ys.IsClosed() }

// NumStreams is how many streams are open now.
func (s *Session) NumStreams() int { return s.ys.NumStreams() }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.ys.CloseChan() }

// Close ends the session and every stream on it, and returns once every
// goroutine the session started has ended; safe to call twice.
func (s *Session) Close() error {
	s.goMu.Lock()
	s.closing = true
	s.goMu.Unlock()
	s.killAll() // before yamux wakes them all at once: see bufferedConn
	err := s.ys.Close()
	s.wg.Wait()
	return err
}

// Stream is one relayed connection inside a Session. It is a net.Conn whose
// Close, unlike yamux's, also ends reading, as net.Conn's contract says; use
// CloseWrite for a half-close.
type Stream struct {
	s    *yamux.Stream
	sess *Session
	addr streamAddr // the stream's destination end
	// dialled is set on the end that opened the stream.
	dialled bool

	// statusMu guards needStatus and dialErr: concurrent first Reads must
	// not both consume the status byte.
	statusMu sync.Mutex
	// needStatus means the first byte is the helper's dial status, which must
	// be OK before anything is passed on to the application.
	needStatus atomic.Bool
	dialErr    error // a status other than OK, returned by every Read
	// statusTimer aborts the stream when no status came in time, and then
	// sets statusLate.
	statusTimer *time.Timer
	statusLate  atomic.Bool

	// deadMu orders user deadlines against the past deadline set when the
	// stream is reset, aborted, closed or loses its session, so a later
	// SetDeadline cannot make a dead stream block again.
	deadMu  sync.Mutex
	dead    bool
	reset   atomic.Bool // the peer aborted this stream
	aborted atomic.Bool // we aborted it
	closed  atomic.Bool
	// rdl and wdl are the user's deadlines in Unix nanoseconds, 0 for none:
	// yamux checks a deadline only when it has to wait, so a past deadline
	// with data buffered, or window to spare, would not stop a Read or Write.
	rdl, wdl atomic.Int64

	// shrinkTimer and isQuiet drop the receive buffer of a stream that has
	// gone quiet after bulk data; see quiet.
	shrinkTimer *time.Timer
	isQuiet     atomic.Bool
}

var _ net.Conn = (*Stream)(nil)

// streamAddr is what LocalAddr and RemoteAddr return. The network is
// "k8stunnel"; the end that stands for the destination (the dialler's remote,
// the helper's local) is named by that destination, e.g. "10.96.0.10:80",
// the other end by the yamux stream ID, e.g. "stream 3".
type streamAddr struct {
	dst  netip.AddrPort
	name string // "host:port" of a connect-by-name
	id   uint32
}

func (a streamAddr) Network() string { return "k8stunnel" }

func (a streamAddr) String() string {
	if a.name != "" {
		return a.name
	}
	if a.dst.IsValid() {
		return a.dst.String()
	}
	return "stream " + strconv.FormatUint(uint64(a.id), 10)
}

// LocalAddr is the stream ID on the dialling end, the destination on the helper.
func (c *Stream) LocalAddr() net.Addr {
	if c.dialled {
		return streamAddr{id: c.s.StreamID()}
	}
	return c.addr
}

// RemoteAddr is the destination on the dialling end, the stream ID on the helper.
func (c *Stream) RemoteAddr() net.Addr {
	if c.dialled {
		return c.addr
	}
	return streamAddr{id: c.s.StreamID()}
}

// WriteStatus answers a connect request (helper side).
func (c *Stream) WriteStatus(st Status) error { return writeStatus(c.s, st) }

func (c *Stream) Read(b []byte) (int, error) {
	if err := c.check(&c.rdl); err != nil {
		return 0, err
	}
	if c.needStatus.Load() {
		if err := c.readStatus(); err != nil {
			return 0, err
		}
	}
	n, err := c.s.Read(b)
	if err != nil {
		err = c.ioErr(err)
	}
	return n, err
}

// ReadPooled (see PooledReader) waits for data without a buffer (an empty
// yamux Read returns once there is some), then reads it into one from pool:
// an idle stream holds none.
func (c *Stream) ReadPooled(pool *sync.Pool) (*[]byte, int, error) {
	if c.needStatus.Load() {
		// The status alone, nothing read: the caller may go on in a new
		// goroutine (copyAdaptive), as reading the status sends yamux's
		// first window update, the deepest call a stream's reader makes.
		return nil, 0, c.WaitDial()
	}
	if _, err := c.Read(nil); err != nil {
		return nil, 0, err
	}
	return readLent(c, pool)
}

// WaitDial waits for the helper's answer to the connect request, on the
// end that dialled: nil once the destination accepted, a *DialError when the
// helper could not reach it. It is what the first Read does anyway; a proxy
// calls it to answer its client only once the outcome is known. It returns
// at once on a stream that already has its answer.
func (c *Stream) WaitDial() error {
	if c.statusLate.Load() {
		return &DialError{Status: StatusTimeout}
	}
	if err := c.check(&c.rdl); err != nil {
		return err
	}
	if !c.needStatus.Load() {
		return nil
	}
	return c.readStatus()
}

func (c *Stream) readStatus() error {
	c.statusMu.Lock()
	defer c.statusMu.Unlock()
	if c.dialErr != nil {
		return c.dialErr
	}
	if !c.needStatus.Load() {
		return nil
	}
	st, err := readStatus(c.s)
	if err == nil || c.statusLate.Load() {
		c.statusTimer.Stop()
	}
	if c.statusLate.Load() {
		c.dialErr = &DialError{Status: StatusTimeout}
		return c.dialErr
	}
	if err != nil {
		return c.ioErr(err)
	}
	if st != StatusOK {
		c.dialErr = &DialError{Status: st}
		return c.dialErr
	}
	c.needStatus.Store(false)
	return nil
}

// check fails a Read or Write that must not start: the stream is dead or
// the deadline dl has passed.
func (c *Stream) check(dl *atomic.Int64) error {
	switch {
	case c.reset.Load():
		return ErrPeerReset
	case c.closed.Load() || c.aborted.Load():
		return net.ErrClosed
	case c.sess.gone():
		return ErrSessionLost
	}
	if d := dl.Load(); d != 0 && time.Now().UnixNano() >= d {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// ioErr says why a yamux Read or Write failed. The past deadlines that wake
// a dead stream surface as what killed it, not as timeouts.
func (c *Stream) ioErr(err error) error {
	sessionGone := c.sess.gone()
	switch {
	case c.reset.Load():
		return ErrPeerReset
	case c.closed.Load() || c.aborted.Load():
		return net.ErrClosed
	case (err == io.EOF || errors.Is(err, yamux.ErrTimeout) || errors.Is(err, yamux.ErrStreamClosed)) && sessionGone:
		return ErrSessionLost
	case errors.Is(err, yamux.ErrTimeout):
		return os.ErrDeadlineExceeded
	case errors.Is(err, yamux.ErrStreamClosed):
		// Written after CloseWrite.
		return net.ErrClosed
	}
	return err
}

func (c *Stream) Write(b []byte) (int, error) {
	if err := c.check(&c.wdl); err != nil {
		return 0, err
	}
	n, err := c.s.Write(b)
	if err != nil {
		err = c.ioErr(err)
	}
	return n, err
}

// SetDeadline sets both deadlines; see SetReadDeadline.
func (c *Stream) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline is yamux's, except that on a dead stream it does nothing:
// the dead stream's past deadline must stay.
func (c *Stream) SetReadDeadline(t time.Time) error {
	c.rdl.Store(unixNano(t))
	c.deadMu.Lock()
	defer c.deadMu.Unlock()
	if c.dead {
		return nil
	}
	return c.s.SetReadDeadline(t)
}

// SetWriteDeadline is yamux's, with SetReadDeadline's exception.
func (c *Stream) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(unixNano(t))
	c.deadMu.Lock()
	defer c.deadMu.Unlock()
	if c.dead {
		return nil
	}
	return c.s.SetWriteDeadline(t)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// kill wakes the stream's reader and writer for good: after it, every Read
// and Write fails at once. The caller sets the flag that says why first.
func (c *Stream) kill() {
	c.deadMu.Lock()
	defer c.deadMu.Unlock()
	c.dead = true
	c.s.SetDeadline(time.Now())
}

// CloseWrite sends a FIN: yamux's Close is a half-close.
func (c *Stream) CloseWrite() error { return c.s.Close() }

// Close ends both directions: the peer gets a FIN, and a Read or Write of
// ours, blocked or later, fails with net.ErrClosed. Safe to call twice and
// concurrently with Read and Write.
func (c *Stream) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	if c.statusTimer != nil {
		c.statusTimer.Stop()
	}
	if c.aborted.Load() && !c.reset.Load() {
		// Our FIN must not overtake the reset we sent: the peer would read a
		// clean end before it learns of the reset. The peer closes its side
		// once it has aborted, so wait for that, bounded, then close ours.
		// The stream is dead already, so nobody else reads it now.
		linger := func() {
			c.s.SetReadDeadline(time.Now().Add(abortLinger))
			if c.sess.gone() {
				c.s.SetReadDeadline(time.Now()) // see killAll
			}
			io.Copy(io.Discard, c.s)
			c.s.Close()
			c.sess.forget(c.s.StreamID())
		}
		if !c.sess.goTracked(linger) {
			// The session is closing: there is no peer left to wait for.
			c.s.Close()
			c.sess.forget(c.s.StreamID())
		}
		return nil
	}
	c.sess.forget(c.s.StreamID())
	c.kill()
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
	c.kill()
}

func (c *Stream) resetByPeer() {
	c.reset.Store(true)
	c.kill()
}

// shrinkAfter is how long a stream that carried bulk data must stay quiet
// before yamux's receive buffer, grown to as much as the window, is dropped.
const shrinkAfter = 100 * time.Millisecond

// quiet says the stream's reader went back to small reads: the receive
// buffer is dropped, when empty, if the stream is still quiet after
// shrinkAfter, so idle streams stay small. Not at once: a bulk transfer has
// a short read now and then, and yamux regrows a dropped buffer from one
// frame by doubling, copying and allocating up to the window each time (in
// BenchmarkRelay over TCP about one byte allocated per byte moved).
// quiet and busy are called by the stream's one reader.
func (c *Stream) quiet() {
	c.isQuiet.Store(true)
	if c.shrinkTimer == nil {
		c.shrinkTimer = time.AfterFunc(shrinkAfter, c.shrinkIfQuiet)
		return
	}
	c.shrinkTimer.Reset(shrinkAfter)
}

// busy says the stream's reader is moving bulk data again.
func (c *Stream) busy() { c.isQuiet.Store(false) }

func (c *Stream) shrinkIfQuiet() {
	if c.isQuiet.Load() {
		c.s.Shrink()
	}
}

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
