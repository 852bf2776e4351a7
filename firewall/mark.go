package firewall

// DNSMark is the socket mark (SO_MARK) of k8stunnel's own queries to the
// laptop's resolvers. The DNS rules let packets that carry it through, so
// the proxy's upstream queries are not captured again, whatever their source
// port. It is one high bit, clear of the bits kube-proxy (0x4000, 0x8000),
// Tailscale (0xff0000) and WireGuard tools usually use.
const DNSMark = 0x10000000

// udpRcvBuf is the receive buffer SetTransparent gives a UDP socket.
const udpRcvBuf = 2 << 20

// opMark asks the root child to mark a socket of its caller.
const opMark = "mark"

// markRequest names a socket in the caller: its process, its descriptor
// number there, and its inode, so a descriptor closed and reused for
// another socket before the request is served is refused, not marked.
//
// With Transparent the socket is made transparent (IP_TRANSPARENT or
// IPV6_TRANSPARENT) instead of marked, for the UDP capture: it must be a UDP
// socket the caller's uid created.
type markRequest struct {
	PID         int    `json:"pid"`
	FD          int    `json:"fd"`
	Ino         uint64 `json:"ino"`
	Transparent bool   `json:"transparent,omitempty"`
}
