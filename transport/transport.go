// Package transport is the seam between the client engine and whatever
// carries its mux sessions to the node: the engine asks for a link, opens
// channels on it, and watches it die; it never learns that SSH is underneath.
package transport

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"time"
)

// ErrPermanent marks errors that retrying cannot fix (a host key that
// changed): errors.Is(err, ErrPermanent) tells the engine to stop
// reconnecting. Make such errors with Permanent.
var ErrPermanent = errors.New("retrying cannot help")

// Transport makes links to the node.
type Transport interface {
	// Connect makes one link; ctx bounds the setup, not the link.
	Connect(ctx context.Context) (Link, error)
}

// Link is one connection to the node, carrying any number of channels.
type Link interface {
	// Open starts one more helper next to the cluster; ctx bounds setup only.
	Open(ctx context.Context) (Channel, error)
	// Remote is "user@host:port", for logs.
	Remote() string
	// Server is the address the connection really goes to (the first jump
	// host's, through a bastion): the firewall must never capture it. It is
	// the zero Addr when a command (ProxyCommand) makes the connection.
	Server() netip.Addr
	// Done is closed when the link died (connection lost, keepalive timeout)
	// or was closed.
	Done() <-chan struct{}
	// Err says why, once Done is closed.
	Err() error
	// Close ends the link and every channel on it. It is safe twice.
	Close() error
}

// RTTReporter is what a Link may also be when it measures its round trip
// (SSH keepalives do); `k8stunnel status` shows it.
type RTTReporter interface {
	// RTT is the last round trip measured, 0 before the first.
	RTT() time.Duration
}

// Channel is one helper's byte stream.
type Channel interface {
	io.ReadWriteCloser
	// Explain adds what the node said (the helper's stderr) to an error from
	// the handshake over this channel. Call it after Close.
	Explain(err error) error
	// Started says the helper answered: its stderr goes to the log from now on.
	Started()
}

// Permanent returns a new sentinel error with message msg that is also
// ErrPermanent under errors.Is.
func Permanent(msg string) error { return &permanentError{msg} }

type permanentError struct{ msg string }

func (e *permanentError) Error() string        { return e.msg }
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }
