// Package server is the helper that runs on the cluster node. It speaks the
// mux protocol on its stdin and stdout (an SSH session's channel), dials the
// destinations the client asks for, and relays. It listens on a port only
// when the client asks it to (-R, see expose.go).
package server

import (
	"context"
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
	Log    *slog.Logger
}

// Serve runs one session on rwc until the client goes away or ctx ends.
func Serve(ctx context.Context, rwc io.ReadWriteCloser, cfg Config) error {
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
	var exp *exposer
	sess, err := mux.NewServer(rwc, func(h mux.Hello) mux.Hello {
		resp := mux.Hello{Program: cfg.Program, Names: true, UDP: true, Stripes: true}
		if h.Discover && cfg.Discover != nil {
			resp.Facts = cfg.Discover()
		}
		exp, resp.Exposed = listenExposes(ctx, cfg, h, resp.Facts)
		return resp
	}, cfg.Log)
	if err != nil {
		exp.close()
		return err
	}
	defer sess.Close()
	// Canceled when Serve returns, so that dials in flight and relays end
	// with the session, and Serve can wait for them.
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
	// Serve has begun to wait; the tracker turns it away instead.
	var work tracker
	exp.serve(ctx, cfg, sess, &work)
	var udp udpFlows
	var stripes mux.Stripes
	err = sess.Serve(ctx, func(req mux.Request, st *mux.Stream) {
		if !work.enter() {
			st.Close()
			return
		}
		defer work.done()
		switch {
		case req.IsUDP():
			udp.handle(ctx, cfg, req, st)
		case req.IsStripe():
			stripe(ctx, cfg, &stripes, req, st)
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
	// A relay whose stream side is done waits on the target alone, and a
	// quiet target would keep it past the session's end.
	defer context.AfterFunc(ctx, func() { mux.NetConn(c).Abort() })()
	if err := mux.Relay(mux.NetConn(c), st); err != nil {
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
	defer context.AfterFunc(ctx, func() { mux.NetConn(c).Abort() })()
	if err := mux.Relay(mux.NetConn(c), sc); err != nil {
		cfg.Log.Debug("relay ended", "dst", dst, "err", err)
	}
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
// sshd gives it. They are grown from 64 KiB to 1 MiB where the kernel allows
// it: sshd then moves the stream in fewer, larger reads and writes, and so do
// we, and every one of those costs a wakeup of two processes. On a busy 2-core
// node that took a quarter of the CPU per byte off sshd and the helper.
func Stdio() io.ReadWriteCloser {
	for _, f := range []*os.File{os.Stdin, os.Stdout} {
		growPipe(f)
	}
	s := stdio{}
	var inPrivate, outPrivate bool
	s.in, inPrivate = pollable(os.Stdin, os.O_RDONLY)
	s.out, outPrivate = pollable(os.Stdout, os.O_WRONLY)
	s.r, s.w = s.in, s.out
	// The session idles between every two messages: what rawio is for.
	if inPrivate {
		s.r = rawio.File(s.in)
	}
	if outPrivate {
		s.w = rawio.File(s.out)
	}
	return s
}

const pipeSize = 1 << 20

// stdio reads in, a polled stdin, and writes out, a polled stdout, through r
// and w (rawio, for polled pipes).
type stdio struct {
	in, out *os.File
	r       io.Reader
	w       io.Writer
}

func (s stdio) Read(b []byte) (int, error)  { return s.r.Read(b) }
func (s stdio) Write(b []byte) (int, error) { return s.w.Write(b) }
func (s stdio) Close() error {
	s.in.Close()
	s.out.Close()
	os.Stdin.Close()
	return os.Stdout.Close()
}
