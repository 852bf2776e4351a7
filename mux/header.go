package mux

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// protocolVersion is the stream-header and handshake version. Both ends
// must speak the same one; the handshake refuses a mismatch before any stream is opened.
const protocolVersion = 1

// streamKind says what a stream is for.
type streamKind uint8

const (
	// kindConnect asks the helper to dial a TCP destination and relay.
	kindConnect streamKind = 1
	// kindReset asks the peer to abort the stream with the given ID: yamux has
	// no reset of its own, and a half-close is not the same thing.
	kindReset streamKind = 2
	// kindConnectName asks the helper to resolve a name with the node's
	// resolver, dial it and relay; sent only to a helper whose hello has Names.
	kindConnectName streamKind = 3
	// 4 is kindExpose, in expose.go; 5 is kindUDP, in udp.go.
)

// Status is the helper's answer to a connect request.
type Status uint8

const (
	StatusOK          Status = 0
	StatusRefused     Status = 1
	StatusUnreachable Status = 2
	StatusTimeout     Status = 3
	StatusFailed      Status = 4
	// StatusNoName answers a connect-by-name whose name does not resolve.
	StatusNoName Status = 5
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRefused:
		return "connection refused"
	case StatusUnreachable:
		return "unreachable"
	case StatusTimeout:
		return "timed out"
	case StatusFailed:
		return "failed"
	case StatusNoName:
		return "no such host"
	}
	return fmt.Sprintf("status %d", uint8(s))
}

// Request is the header a stream opens with.
type Request struct {
	kind streamKind
	// Dst is the original destination, for kindConnect and kindUDP.
	Dst netip.AddrPort
	// Host and Port are the destination of kindConnectName.
	Host string
	Port uint16
	// StreamID names the stream to abort, for kindReset.
	streamID uint32
	// stripe, part and parts are a kindStripe's ID, index and part count.
	stripe      uint64
	part, parts uint8
	// Entry is the index of the expose (-R) in the client's hello, for
	// kindExpose. Src is the pod's address there, and the laptop
	// application's for kindUDP.
	Entry int
	Src   netip.AddrPort
}

// Target is where the request asks to connect, as net.Dial takes it.
func (r Request) Target() string {
	if r.kind == kindConnectName {
		return net.JoinHostPort(r.Host, strconv.Itoa(int(r.Port)))
	}
	return r.Dst.String()
}

// maxNameLen is the longest DNS name, in its dotted form without the final dot.
const maxNameLen = 253

// maxRequestLen is the longest encoded request: version, kind, name length,
// a name, port (longer than kindUDP's two IPv6 addresses and ports).
const maxRequestLen = 3 + maxNameLen + 2

// ValidName reports whether s is a host name the helper may be asked to
// resolve: 1 to 253 bytes of dot-separated labels of 1 to 63 letters, digits,
// hyphens or underscores, with no final dot. The name comes from a local
// application and goes to the node's resolver, so nothing else passes.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		if label++; label > 63 {
			return false
		}
	}
	return label > 0
}

// appendRequest appends the encoding of r to b. Layout:
//
//	connect: version(1) kind(1) addrlen(1: 4 or 16) addr port(2, big endian)
//	reset:   version(1) kind(1) streamID(4, big endian)
//	name:    version(1) kind(1) namelen(1: 1..253) name port(2, big endian)
//	expose:  version(1) kind(1) entry(1) addrlen(1: 4 or 16) addr port(2, big endian)
//	udp:     version(1) kind(1) src as addrlen addr port, then dst the same way
//	stripe:  version(1) kind(1) id(8) part(1) parts(1), part 0 then dst as addrlen addr port
func appendRequest(b []byte, r Request) ([]byte, error) {
	b = append(b, protocolVersion, byte(r.kind))
	switch r.kind {
	case kindConnect:
		return appendAddrPort(b, r.Dst)
	case kindReset:
		b = binary.BigEndian.AppendUint32(b, r.streamID)
	case kindConnectName:
		if !ValidName(r.Host) {
			return nil, fmt.Errorf("encoding %q: %w", r.Host, ErrBadName)
		}
		b = append(b, byte(len(r.Host)))
		b = append(b, r.Host...)
		b = binary.BigEndian.AppendUint16(b, r.Port)
	case kindExpose:
		return appendExpose(b, r)
	case kindUDP:
		return appendUDP(b, r)
	case kindStripe:
		return appendStripe(b, r)
	default:
		return nil, errBadKind
	}
	return b, nil
}

// writeRequest writes r in one Write, so it travels in one frame.
func writeRequest(w io.Writer, r Request) error {
	var buf [maxRequestLen]byte
	b, err := appendRequest(buf[:0], r)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// readRequest reads one request header, and nothing past it.
func readRequest(rd io.Reader) (Request, error) {
	var buf [maxRequestLen]byte
	if _, err := io.ReadFull(rd, buf[:2]); err != nil {
		return Request{}, err
	}
	if buf[0] != protocolVersion {
		return Request{}, fmt.Errorf("%w: %d", errBadVersion, buf[0])
	}
	r := Request{kind: streamKind(buf[1])}
	switch r.kind {
	case kindConnect:
		dst, err := readAddrPort(rd)
		if err != nil {
			return Request{}, err
		}
		r.Dst = dst
	case kindReset:
		if _, err := io.ReadFull(rd, buf[:4]); err != nil {
			return Request{}, noEOF(err)
		}
		r.streamID = binary.BigEndian.Uint32(buf[:4])
	case kindConnectName:
		if _, err := io.ReadFull(rd, buf[:1]); err != nil {
			return Request{}, noEOF(err)
		}
		n := int(buf[0])
		if n == 0 || n > maxNameLen {
			return Request{}, fmt.Errorf("%w: length %d", ErrBadName, n)
		}
		if _, err := io.ReadFull(rd, buf[:n+2]); err != nil {
			return Request{}, noEOF(err)
		}
		if !ValidName(string(buf[:n])) {
			return Request{}, ErrBadName
		}
		r.Host = string(buf[:n])
		r.Port = binary.BigEndian.Uint16(buf[n:])
	case kindExpose:
		if err := readExpose(rd, &r); err != nil {
			return Request{}, err
		}
	case kindUDP:
		if err := readUDP(rd, &r); err != nil {
			return Request{}, err
		}
	case kindStripe:
		if err := readStripe(rd, &r); err != nil {
			return Request{}, err
		}
	default:
		return Request{}, fmt.Errorf("%w: %d", errBadKind, r.kind)
	}
	return r, nil
}

// writeStatus answers a connect request.
func writeStatus(w io.Writer, s Status) error {
	_, err := w.Write([]byte{byte(s)})
	return err
}

// readStatus reads the helper's answer to a connect request.
func readStatus(r io.Reader) (Status, error) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	s := Status(b[0])
	if s > StatusNoName {
		return 0, fmt.Errorf("%w: %d", ErrBadStatus, b[0])
	}
	return s, nil
}

// noEOF turns a clean EOF inside a header into ErrUnexpectedEOF: the header
// was cut short, which is not the same as a peer that sent nothing.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
