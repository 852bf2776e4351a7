package mux

import "errors"

// Sentinel errors, kept together as yamux keeps its own in const.go.
var (
	// ErrPeerReset is returned by a stream's Read and Write once the other end aborted it.
	ErrPeerReset = errors.New("stream reset by peer")
	// ErrSessionLost is returned when a stream ends because its whole session
	// went away: yamux reports that as a clean EOF, which it is not.
	ErrSessionLost = errors.New("tunnel session lost")
	// ErrVersionMismatch means the two ends speak different protocol versions.
	ErrVersionMismatch = errors.New("protocol version mismatch")
	// ErrNoHello means the helper's output ended, or ran past 64 KiB, without a hello.
	ErrNoHello = errors.New("no k8stunnel handshake from the helper")
	// ErrHelloTooLarge means a hello's body is over the 64 KiB limit.
	ErrHelloTooLarge = errors.New("handshake too large")
	// ErrBadAddress means a destination cannot be put in a stream header.
	ErrBadAddress = errors.New("bad address in stream header")
	// ErrBadName means a host name is not one a stream header may carry.
	ErrBadName = errors.New("bad host name")
	// ErrNoNames means the helper is too old to resolve names.
	ErrNoNames = errors.New("the helper on the node cannot resolve names (an older k8stunnel)")
	// ErrStrayStreams means a session was closed because the peer opened too
	// many streams it should not have: it is broken or hostile.
	ErrStrayStreams = errors.New("the other end opened streams it should not have")
	// ErrBadExpose means an expose request names an entry past MaxExposes.
	ErrBadExpose = errors.New("bad expose entry")
	// ErrNoUDP means the helper is too old to carry UDP.
	ErrNoUDP = errors.New("the helper on the node cannot carry UDP (an older k8stunnel)")
	// ErrBadStatus means the helper answered a connect request with an unknown status.
	ErrBadStatus = errors.New("unknown status")
	// ErrBadStripe means a stripe request's part or part count is out of range.
	ErrBadStripe = errors.New("bad stripe request")
	// ErrStripeIncomplete means a stripe's parts did not all arrive in time.
	ErrStripeIncomplete = errors.New("stripe incomplete")

	// errBadVersion means a stream header has a version this end does not speak.
	errBadVersion = errors.New("unsupported stream header version")
	// errBadKind means a stream header asks for something this end does not know.
	errBadKind = errors.New("unknown stream kind")
)
