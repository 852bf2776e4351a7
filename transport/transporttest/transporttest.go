// Package transporttest is the in-memory twin of a transport: every channel
// is a net.Pipe whose far end a test serves (with server.Serve, as the helper
// would on the node), and a test can kill a link the way a lost connection
// would. Engine tests run on it without SSH, root or network.
package transporttest

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/k8stunnel/k8stunnel/transport"
)

// Transport is an in-memory transport.Transport.
type Transport struct {
	// Serve runs the node's side of one channel until rwc closes or ctx (the
	// link's life) ends.
	Serve func(ctx context.Context, rwc io.ReadWriteCloser)
	// Server is what links report as Server; the zero value means 192.0.2.1.
	Server netip.Addr
	// ServerAt, when set, is what the link made at attempt reports instead,
	// as when the node's name resolves anew on a reconnect.
	ServerAt func(attempt int) netip.Addr
	// RTT is what links report as their round trip (transport.RTTReporter);
	// 0 means not measured.
	RTT time.Duration
	// Fail, when set, is asked before each Connect (attempt counts from 1);
	// an error it returns is what Connect returns.
	Fail func(attempt int) error

	mu       sync.Mutex
	attempts int
	links    []*Link
	wg       sync.WaitGroup
}

// Connect makes a link unless Fail says otherwise.
func (t *Transport) Connect(ctx context.Context) (transport.Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.attempts++
	n := t.attempts
	t.mu.Unlock()
	if t.Fail != nil {
		if err := t.Fail(n); err != nil {
			return nil, err
		}
	}
	server := t.Server
	if t.ServerAt != nil {
		server = t.ServerAt(n)
	}
	if !server.IsValid() {
		server = netip.MustParseAddr("192.0.2.1")
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &Link{t: t, ctx: lctx, cancel: cancel, server: server, done: make(chan struct{})}
	t.mu.Lock()
	t.links = append(t.links, l)
	t.mu.Unlock()
	return l, nil
}

// Links returns the links made so far, oldest first.
func (t *Transport) Links() []*Link {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*Link(nil), t.links...)
}

// Wait returns once every Serve it started has returned.
func (t *Transport) Wait() { t.wg.Wait() }

// Link is one in-memory link.
type Link struct {
	t      *Transport
	ctx    context.Context
	cancel context.CancelFunc
	server netip.Addr
	done   chan struct{}

	mu    sync.Mutex
	err   error
	ends  []net.Conn
	opens int
}

// Open makes a pipe and serves its far end.
func (l *Link) Open(ctx context.Context) (transport.Channel, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, net.ErrClosed
	}
	near, far := net.Pipe()
	l.ends = append(l.ends, near, far)
	l.opens++
	l.t.wg.Add(1)
	go func() {
		defer l.t.wg.Done()
		defer far.Close()
		l.t.Serve(l.ctx, far)
	}()
	return channel{near}, nil
}

// Opens is how many channels were opened on the link.
func (l *Link) Opens() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.opens
}

// RTT is the Transport's RTT.
func (l *Link) RTT() time.Duration { return l.t.RTT }

func (l *Link) Remote() string        { return "test@" + l.server.String() + ":22" }
func (l *Link) Server() netip.Addr    { return l.server }
func (l *Link) Done() <-chan struct{} { return l.done }

func (l *Link) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Kill ends the link for err, as a lost connection would: every channel on it
// breaks at once.
func (l *Link) Kill(err error) {
	if err == nil {
		err = net.ErrClosed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	l.err = err
	l.cancel()
	for _, c := range l.ends {
		c.Close()
	}
	close(l.done)
}

// Close is Kill(net.ErrClosed).
func (l *Link) Close() error {
	l.Kill(net.ErrClosed)
	return nil
}

type channel struct{ net.Conn }

func (c channel) Explain(err error) error { return err }
func (c channel) Started()                {}
