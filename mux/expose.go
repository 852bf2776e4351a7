package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
)

// kindExpose carries a connection a pod made to a port the helper listens
// on for the client (-R) back to the client, which dials the laptop-side
// target and answers with a status, as the helper does for kindConnect.
// Only the helper opens it, and only for entries the client's hello asked for.
const kindExpose streamKind = 4

// MaxExposes bounds the listeners one hello may ask the helper for.
const MaxExposes = 64

// Expose asks the helper to listen on the node (client to helper, in the hello).
type Expose struct {
	// Bind is the IP to listen on; empty means the node's own address toward
	// the pod network (see Hello.ExposeToward).
	Bind string `json:"bind,omitempty"`
	Port uint16 `json:"port"`
}

// Exposed is what the helper did for the Expose at the same index.
type Exposed struct {
	// Addr is the IP:port the helper listens on.
	Addr string `json:"addr,omitempty"`
	// InUse says the port was taken on the node.
	InUse bool `json:"in_use,omitempty"`
	// Error says why the helper could not listen.
	Error string `json:"error,omitempty"`
}

// IsExpose reports a request of kindExpose: Entry and Src are set.
func (r Request) IsExpose() bool { return r.kind == kindExpose }

// appendExpose encodes the body of a kindExpose request:
//
//	entry(1) addrlen(1: 4 or 16) addr port(2, big endian)
func appendExpose(b []byte, r Request) ([]byte, error) {
	if r.Entry < 0 || r.Entry >= MaxExposes {
		return nil, fmt.Errorf("encoding expose entry %d: %w", r.Entry, ErrBadExpose)
	}
	return appendAddrPort(append(b, byte(r.Entry)), r.Src)
}

// readExpose decodes what appendExpose wrote into r.
func readExpose(rd io.Reader, r *Request) error {
	var buf [1]byte
	if _, err := io.ReadFull(rd, buf[:]); err != nil {
		return noEOF(err)
	}
	if buf[0] >= MaxExposes {
		return fmt.Errorf("%w: entry %d", ErrBadExpose, buf[0])
	}
	r.Entry = int(buf[0])
	src, err := readAddrPort(rd)
	r.Src = src
	return err
}

// appendAddrPort encodes ap as addrlen(1: 4 or 16) addr port(2, big endian).
func appendAddrPort(b []byte, ap netip.AddrPort) ([]byte, error) {
	a := ap.Addr().Unmap()
	if !a.IsValid() || a.Zone() != "" {
		return nil, fmt.Errorf("encoding %v: %w", ap, ErrBadAddress)
	}
	raw := a.AsSlice()
	b = append(b, byte(len(raw)))
	b = append(b, raw...)
	return binary.BigEndian.AppendUint16(b, ap.Port()), nil
}

// readAddrPort decodes what appendAddrPort wrote.
func readAddrPort(rd io.Reader) (netip.AddrPort, error) {
	var buf [18]byte
	if _, err := io.ReadFull(rd, buf[:1]); err != nil {
		return netip.AddrPort{}, noEOF(err)
	}
	n := int(buf[0])
	if n != 4 && n != 16 {
		return netip.AddrPort{}, fmt.Errorf("%w: length %d", ErrBadAddress, n)
	}
	if _, err := io.ReadFull(rd, buf[:n+2]); err != nil {
		return netip.AddrPort{}, noEOF(err)
	}
	a, _ := netip.AddrFromSlice(buf[:n])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(buf[n:])), nil
}

// DialExpose opens a stream to the client for a connection a pod made to
// the listener of expose entry from src (helper side). As with Dial, the
// client's status is read by the stream's first Read or WaitDial.
func (s *Session) DialExpose(entry int, src netip.AddrPort) (*Stream, error) {
	return s.open(Request{kind: kindExpose, Entry: entry, Src: src}, streamAddr{dst: src}, true)
}

// ServeExposes is Serve for the client of a helper that listens for it: it
// hands on the kindExpose streams for entries below n and refuses every
// other stream the helper opens, as Serve with a nil handle does.
func (s *Session) ServeExposes(ctx context.Context, n int, handle func(Request, *Stream)) error {
	return s.serve(ctx, func(r Request) bool { return r.kind == kindExpose && r.Entry < n }, handle)
}

// DialStatus says why a dial failed, so the other end can answer its
// application the way a direct connection would have.
func DialStatus(err error) Status {
	var ne interface{ Timeout() bool }
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		return StatusNoName
	case errors.Is(err, syscall.ECONNREFUSED):
		return StatusRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return StatusUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return StatusTimeout
	}
	return StatusFailed
}
