package mux

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// magic opens every hello. The client scans the helper's stdout for it, so
// whatever a login shell prints before the helper starts (a motd, a noisy
// .bashrc) is skipped instead of being parsed as protocol.
var magic = [8]byte{'K', '8', 'S', 'T', 'U', 'N', 'L', 0}

const (
	// maxHelloBody bounds what a peer can make us allocate.
	maxHelloBody = 64 << 10
	// maxGarbage bounds how much non-protocol output we skip before giving up.
	maxGarbage = 64 << 10
)

// Hello is what each end says first. The body is JSON so new, optional
// fields can be added without a version bump.
type Hello struct {
	version int    `json:"-"`
	Program string `json:"program,omitempty"` // e.g. "k8stunnel 0.1.0"
	// Discover asks the helper to look for the cluster's CIDRs and DNS (client to helper).
	Discover bool `json:"discover,omitempty"`
	// Names says the helper takes connect-by-name requests (helper to client).
	Names bool `json:"names,omitempty"`
	// UDP says the helper takes UDP flows (kindUDP; helper to client).
	UDP bool `json:"udp,omitempty"`
	// Stripes says the helper takes striped connections (kindStripe;
	// helper to client), over the sessions it serves itself.
	Stripes bool `json:"stripes,omitempty"`
	// Facts is what the helper found on the node (helper to client).
	Facts *Facts `json:"facts,omitempty"`
	// Expose asks the helper to listen on the node and carry what it
	// accepts back to the client (client to helper; see expose.go), with
	// ExposeToward the CIDR (the pod network) whose route picks the address
	// for an Expose without Bind, when the node knows no pod CIDR itself.
	Expose       []Expose `json:"expose,omitempty"`
	ExposeToward string   `json:"expose_toward,omitempty"`
	// Exposed answers Expose, entry by entry (helper to client).
	Exposed []Exposed `json:"exposed,omitempty"`
	// Error is set when the helper refuses the session, e.g. on a version mismatch.
	Error string `json:"error,omitempty"`

	// JoinAt says where this helper takes other channels of the same link
	// (helper to client), so that one process serves them all; opaque to the
	// client, which passes it back as Join on its extra channels.
	JoinAt string `json:"join_at,omitempty"`
	// Join asks the helper to hand this channel to the helper that gave
	// JoinAt and get out of the way (client to helper).
	Join string `json:"join,omitempty"`
	// Joined says the helper that gave JoinAt serves this channel (helper to
	// client); false when it could not be handed over and the helper the
	// channel started serves it alone.
	Joined bool `json:"joined,omitempty"`
}

// Compatible reports whether h, a hello read from the peer, speaks this
// build's protocol version.
func (h Hello) Compatible() bool { return h.version == protocolVersion }

// Facts are what the helper could find out about the cluster from the node's disk.
type Facts struct {
	PodCIDRs      []string `json:"pod_cidrs,omitempty"`
	ServiceCIDRs  []string `json:"service_cidrs,omitempty"`
	DNS           []string `json:"dns,omitempty"`
	ClusterDomain string   `json:"cluster_domain,omitempty"`
	// NodeDNS are the node's own resolvers, used with --dns-all.
	NodeDNS []string `json:"node_dns,omitempty"`
	// Sources says where each fact came from, for the user.
	Sources []string `json:"sources,omitempty"`
}

// writeHello writes h as: magic(8) version(1) length(4, big endian) JSON body.
func writeHello(w io.Writer, h Hello) error {
	body, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if len(body) > maxHelloBody {
		return ErrHelloTooLarge
	}
	b := make([]byte, 0, len(magic)+5+len(body))
	b = append(b, magic[:]...)
	b = append(b, byte(h.version))
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	_, err = w.Write(b)
	return err
}

// readHello reads a hello, skipping up to 64 KiB of anything before the magic.
// skipped holds what was skipped, so the caller can show it.
//
// It reads byte by byte through r's buffer and never past the hello, so the
// bufio.Reader can be handed on to yamux afterwards.
func readHello(r *bufio.Reader) (h Hello, skipped []byte, err error) {
	var window []byte
	for {
		c, err := r.ReadByte()
		if err != nil {
			if err == io.EOF {
				return Hello{}, window, ErrNoHello
			}
			return Hello{}, window, err
		}
		window = append(window, c)
		if bytes.HasSuffix(window, magic[:]) {
			window = window[:len(window)-len(magic)]
			break
		}
		if len(window) > maxGarbage {
			return Hello{}, window, ErrNoHello
		}
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Hello{}, window, fmt.Errorf("reading handshake: %w", noEOF(err))
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxHelloBody {
		return Hello{}, window, ErrHelloTooLarge
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return Hello{}, window, fmt.Errorf("reading handshake: %w", noEOF(err))
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return Hello{}, window, fmt.Errorf("decoding handshake: %w", err)
	}
	h.version = int(hdr[0])
	return h, window, nil
}
