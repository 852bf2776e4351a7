// Package sshtransport is the production transport.Transport: one SSH
// connection per link, one helper session per channel, and keepalives that
// declare the link dead long before TCP would.
package sshtransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/transport/helper"
	"github.com/k8stunnel/k8stunnel/transport/sshdial"
)

// Config joins the dialer's and the launcher's configs.
type Config struct {
	SSH    sshdial.Config
	Helper helper.Config
	// KeepaliveInterval and KeepaliveTimeout tune SSH keepalives; 0 means 2 s and 6 s.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// Log, when set, is used by the dialer and the launcher where their own
	// configs leave it unset.
	Log *slog.Logger
}

// Transport dials the node over SSH and starts helpers there.
type Transport struct {
	dialer            *sshdial.Dialer
	launcher          *helper.Launcher
	interval, timeout time.Duration
}

// New checks cfg and builds the dialer and launcher, which keep what is worth
// keeping across reconnects (decrypted keys, the executable's hash).
func New(cfg Config) (*Transport, error) {
	if cfg.KeepaliveInterval <= 0 {
		cfg.KeepaliveInterval = 2 * time.Second
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = 6 * time.Second
	}
	if cfg.SSH.Log == nil {
		cfg.SSH.Log = cfg.Log
	}
	if cfg.Helper.Log == nil {
		cfg.Helper.Log = cfg.Log
	}
	d, err := sshdial.New(cfg.SSH)
	if err != nil {
		return nil, err
	}
	return &Transport{dialer: d, launcher: helper.New(cfg.Helper),
		interval: cfg.KeepaliveInterval, timeout: cfg.KeepaliveTimeout}, nil
}

// Connect dials and authenticates; ctx bounds that, not the link.
func (t *Transport) Connect(ctx context.Context) (transport.Link, error) {
	sc, target, err := t.dialer.Dial(ctx)
	if err != nil {
		return nil, err
	}
	kctx, cancel := context.WithCancel(context.Background())
	// The node, by the address connected to when that is the node's own; through a bastion, the node as named and
	// the bastion's address.
	remote := fmt.Sprintf("%s@%s", target.User, net.JoinHostPort(target.Host, strconv.Itoa(target.Port)))
	switch {
	case target.Direct && target.Addr.IsValid():
		remote = fmt.Sprintf("%s@%s", target.User, target.Addr)
	case target.Addr.IsValid():
		remote += " via " + target.Addr.String()
	}
	l := &link{
		ssh:      sc,
		launcher: t.launcher,
		remote:   remote,
		server:   target.Addr.Addr().Unmap(),
		done:     make(chan struct{}),
		cancel:   cancel,
	}
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		rtt := func(d time.Duration) { l.rtt.Store(int64(d)) }
		if err := sshdial.Keepalive(kctx, sc, t.interval, t.timeout, rtt); err != nil {
			l.fail(err)
		}
	}()
	go func() {
		defer l.wg.Done()
		l.fail(sc.Wait())
	}()
	return l, nil
}

// link is one SSH connection.
type link struct {
	ssh      *ssh.Client
	launcher *helper.Launcher
	remote   string
	server   netip.Addr
	done     chan struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	once sync.Once
	err  error
	rtt  atomic.Int64 // nanoseconds, from the keepalives
}

// RTT is the last keepalive's round trip.
func (l *link) RTT() time.Duration { return time.Duration(l.rtt.Load()) }

var _ transport.RTTReporter = (*link)(nil)

func (l *link) Open(ctx context.Context) (transport.Channel, error) {
	return l.launcher.Start(ctx, l.ssh)
}

func (l *link) Remote() string        { return l.remote }
func (l *link) Server() netip.Addr    { return l.server }
func (l *link) Done() <-chan struct{} { return l.done }

// Err is the first reason the link ended: a keepalive that went unanswered,
// the connection's end, or net.ErrClosed after Close.
func (l *link) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// fail ends the link for err; the first reason wins. The goroutines of the
// link call it, so it must not wait for them.
func (l *link) fail(err error) {
	l.once.Do(func() {
		if err == nil {
			err = errors.New("ssh connection closed")
		}
		l.err = err
		l.cancel()
		l.ssh.Close()
		close(l.done)
	})
}

// Close ends the connection and every helper on it, and returns once the
// link's goroutines are gone.
func (l *link) Close() error {
	l.fail(net.ErrClosed)
	l.wg.Wait()
	return nil
}
