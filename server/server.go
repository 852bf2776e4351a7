// Package server is the helper that runs on the cluster node. It speaks the
// mux protocol on its stdin and stdout (an SSH session's channel), dials the
// destinations the client asks for, and relays. It listens on a port only
// when the client asks it to (-R, see expose.go).
package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/k8stunnel/k8stunnel/internal/rawio"
	"github.com/k8stunnel/k8stunnel/mux"
)

// Config says how the helper reaches destinations.
type Config struct {
	// Dial connects to a destination; nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds one dial; 0 means 10 s.
	DialTimeout time.Duration
	// Program names this build in the handshake, e.g. "k8stunnel 0.1.0".
	Program string
	// Discover finds cluster facts on the node when the client asks; may be nil.
	Discover func() *mux.Facts
	// Listen binds what the client exposes (-R); nil means a net.ListenConfig.
	Listen func(ctx context.Context, network, addr string) (net.Listener, error)
	// AcceptJoins makes the helper take the link's other channels from the
	// helpers they start (see join_linux.go), so that one process serves
	// every channel of a link. Linux only; elsewhere it is ignored.
	AcceptJoins bool
	Log         *slog.Logger
}

// Channel is the helper's end of an SSH session channel: the stream the
// mux speaks on, and the descriptors under it, which a join hands to
// another helper.
type Channel interface {
	io.ReadWriteCloser
	// Files returns the channel's stdin and stdout, as sshd gave them; nil
	// when the stream has none (a net.Pipe in a test), and then the channel
	// cannot be handed on.
	Files() (in, out *os.File)
}

// errReadPastHello means the client's hello came with more behind it, which
// a join cannot hand over.
var errReadPastHello = errors.New("bytes past the hello")

// Stream is a Channel with no descriptors, for an in-memory stream: the
// helper serves it itself, always.
func Stream(rwc io.ReadWriteCloser) Channel { return stream{rwc} }

type stream struct{ io.ReadWriteCloser }

func (stream) Files() (in, out *os.File) { return nil, nil }

// helper is one helper process: its Config and what the sessions it serves
// share. The first session is the channel sshd started it on; a join adds
// others, each a channel of the same link whose own helper handed it over.
type helper struct {
	cfg Config
	// stripes pairs the parts of striped connections, which come over
	// the different sessions of this process.
	stripes mux.Stripes
}

// Serve runs one session on ch until the client goes away or ctx ends.
// When the client asks to join another helper (Hello.Join), Serve hands ch
// over and waits, without a session of its own, until that helper is done
// with it; when the handoff fails, it serves ch itself.
func Serve(ctx context.Context, ch Channel, cfg Config) error {
	if cfg.Dial == nil {
		// No TCP keepalive: it costs four setsockopt calls per connection, and
		// what matters, the client's own socket, does not see it anyway.
		cfg.Dial = (&net.Dialer{KeepAlive: -1}).DialContext
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	h := &helper{cfg: cfg}
	peer, br, err := mux.ReadHello(ch)
	if err != nil {
		return err
	}
	if peer.Join != "" && peer.Compatible() {
		// The client sends nothing past its hello until it is answered; bytes
		// past it are not ours to hand over with the channel.
		handed, err := false, errReadPastHello
		if br.Buffered() == 0 {
			handed, err = handOver(ctx, ch, peer.Join)
		}
		if handed {
			if err != nil {
				cfg.Log.Debug("handing over the channel", "err", err)
			}
			return nil
		}
		cfg.Log.Debug("serving this channel alone", "err", err)
	}
	// Canceled when Serve returns, so that dials in flight, relays and
	// joined sessions end with the session, and Serve can wait for them.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var joins *joinListener
	if cfg.AcceptJoins && peer.Join == "" && peer.Compatible() {
		if joins, err = listenJoins(ctx, cfg.Log, h.serveJoined); err != nil {
			cfg.Log.Debug("not taking other channels", "err", err)
		}
	}
	defer joins.close()
	var exp *exposer
	sess, err := mux.Accept(ch, br, peer, func(hl mux.Hello) mux.Hello {
		resp := h.answer()
		if hl.Discover && cfg.Discover != nil {
			resp.Facts = cfg.Discover()
		}
		exp, resp.Exposed = listenExposes(ctx, cfg, hl, resp.Facts)
		resp.JoinAt = joins.at()
		return resp
	}, cfg.Log)
	if err != nil {
		exp.close()
		return err
	}
	return h.serve(ctx, sess, exp)
}

// answer is what every session's hello answer says, joined or not.
func (h *helper) answer() mux.Hello {
	return mux.Hello{Program: h.cfg.Program, Names: true, UDP: true, Stripes: true}
}

// serveJoined serves ch, a channel another helper handed over, until its
// session ends or ctx does.
func (h *helper) serveJoined(ctx context.Context, ch Channel) error {
	resp := h.answer()
	resp.Joined = true
	sess, err := mux.Greet(ch, nil, resp, h.cfg.Log)
	if err != nil {
		ch.Close()
		return err
	}
	return h.serve(ctx, sess, nil)
}

// serve runs sess, with the listeners of exp, until it ends or ctx does,
// and returns once all the work it started is done.
func (h *helper) serve(ctx context.Context, sess *mux.Session, exp *exposer) error {
	cfg := h.cfg
	defer sess.Close()
	// Canceled when serve returns, so that dials in flight and relays end
	// with the session, and serve can wait for them.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
			sess.Close()
		case <-sess.Done():
		}
	}()
	// A stream accepted as the session ends may reach its handler after
	// serve has begun to wait; the tracker turns it away instead.
	var work tracker
	exp.serve(ctx, cfg, sess, &work)
	var udp udpFlows
	err := sess.Serve(ctx, func(req mux.Request, st *mux.Stream) {
		if !work.enter() {
			st.Close()
			return
		}
		defer work.done()
		switch {
		case req.IsUDP():
			udp.handle(ctx, cfg, req, st)
		case req.IsStripe():
			stripe(ctx, cfg, &h.stripes, req, st)
		default:
			handle(ctx, cfg, req, st)
		}
	})
	exp.close()
	sess.Close()
	cancel()
	work.stop()
	return err
}

// handle dials what req asks for, an address or a name (which the dialer
// resolves with the node's resolver, as a pod's would be), and relays.
func handle(ctx context.Context, cfg Config, req mux.Request, st *mux.Stream) {
	dst := req.Target()
	c, ok := dialFor(ctx, cfg, st, "tcp", dst)
	if !ok {
		return
	}
	relayTarget(ctx, cfg, c, st, dst)
}

// relayTarget relays c, the target dst, and the client's side of it until
// both are done or ctx ends.
func relayTarget(ctx context.Context, cfg Config, c net.Conn, client mux.Conn, dst string) {
	// A relay whose stream side is done waits on the target alone, and a
	// quiet target would keep it past the session's end.
	defer context.AfterFunc(ctx, func() { mux.NetConn(c).Abort() })()
	if err := mux.Relay(mux.NetConn(c), client); err != nil {
		cfg.Log.Debug("relay ended", "dst", dst, "err", err)
	}
}

// stripe takes one part of a striped connection. Part 0 waits for the
// others, dials and relays; any other part is left with the table, for
// part 0 to find.
func stripe(ctx context.Context, cfg Config, table *mux.Stripes, req mux.Request, st *mux.Stream) {
	if req.StripePart() != 0 {
		if !table.Add(req, st) {
			cfg.Log.Debug("stripe part refused", "part", req.StripePart())
		}
		return
	}
	dst := req.Target()
	sc, err := table.Gather(ctx, req, st)
	if err != nil {
		cfg.Log.Debug("stripe not gathered", "dst", dst, "err", err)
		st.WriteStatus(mux.StatusFailed)
		st.Close()
		return
	}
	c, ok := dialFor(ctx, cfg, st, "tcp", dst)
	if !ok {
		sc.Drop()
		return
	}
	relayTarget(ctx, cfg, c, sc, dst)
}

// dialFor dials dst for the stream st and tells the client how that went.
// When it fails, or the client cannot be told, st is closed and ok is false;
// otherwise the caller owns c and st.
func dialFor(ctx context.Context, cfg Config, st *mux.Stream, network, dst string) (c net.Conn, ok bool) {
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	c, err := cfg.Dial(dctx, network, dst)
	cancel()
	if err != nil {
		cfg.Log.Debug("dial failed", "network", network, "dst", dst, "err", err)
		st.WriteStatus(mux.DialStatus(err))
		st.Close()
		return nil, false
	}
	if err := st.WriteStatus(mux.StatusOK); err != nil {
		c.Close()
		st.Abort()
		st.Close()
		return nil, false
	}
	return c, true
}

// Stdio is the helper's end of the SSH session: stdin and stdout, the pipes
// sshd gives it (see Pipes).
func Stdio() Channel { return Pipes(os.Stdin, os.Stdout) }

// Pipes is a channel on in and out, pipes to sshd. They are grown from 64
// KiB to 1 MiB where the kernel allows it: sshd then moves the stream in
// fewer, larger reads and writes, and so do we, and every one of those costs
// a wakeup of two processes. On a busy 2-core node that took a quarter of
// the CPU per byte off sshd and the helper.
func Pipes(in, out *os.File) Channel {
	for _, f := range []*os.File{in, out} {
		growPipe(f)
	}
	p := &pipes{in: in, out: out}
	var inPrivate, outPrivate bool
	p.pin, inPrivate = pollable(in, os.O_RDONLY)
	p.pout, outPrivate = pollable(out, os.O_WRONLY)
	p.r, p.w = p.pin, p.pout
	// The session idles between every two messages: what rawio is for.
	if inPrivate {
		p.r = rawio.File(p.pin)
	}
	if outPrivate {
		p.w = rawio.File(p.pout)
	}
	return p
}

const pipeSize = 1 << 20

// pipes reads pin, a polled in, and writes pout, a polled out, through r
// and w (rawio, for polled pipes).
type pipes struct {
	in, out   *os.File // as given: what Files hands on
	pin, pout *os.File
	r         io.Reader
	w         io.Writer
}

func (p *pipes) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipes) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *pipes) Files() (in, out *os.File)   { return p.in, p.out }
func (p *pipes) Close() error {
	p.pin.Close()
	p.pout.Close()
	p.in.Close()
	return p.out.Close()
}
