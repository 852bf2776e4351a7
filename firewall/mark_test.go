//go:build linux

package firewall

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func requireRootForMark(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: setting SO_MARK takes CAP_NET_ADMIN")
	}
}

// newSocket returns a fresh socket, closed at the end of the test.
func newSocket(t *testing.T, domain, typ int) int {
	t.Helper()
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket(%d, %d): %v", domain, typ, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func markOf(t *testing.T, fd int) int {
	t.Helper()
	m, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
	if err != nil {
		t.Fatalf("getsockopt SO_MARK: %v", err)
	}
	return m
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestMarkPeer runs the child's side against this process: the descriptor
// it takes and marks is the test's own socket.
func TestMarkPeer(t *testing.T) {
	requireRootForMark(t)
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatalf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	req := func(fd int) *markRequest { return &markRequest{PID: os.Getpid(), FD: fd, Ino: inode(t, fd)} }

	for _, s := range []struct {
		name        string
		domain, typ int
	}{{"udp4", unix.AF_INET, unix.SOCK_DGRAM}, {"tcp4", unix.AF_INET, unix.SOCK_STREAM}, {"udp6", unix.AF_INET6, unix.SOCK_DGRAM}} {
		fd := newSocket(t, s.domain, s.typ)
		if err := markPeer(pidfd, req(fd)); err != nil {
			t.Errorf("%s: markPeer: %v", s.name, err)
		}
		if m := markOf(t, fd); m != DNSMark {
			t.Errorf("%s: mark %#x after markPeer, want %#x", s.name, m, DNSMark)
		}
	}

	unixSock := newSocket(t, unix.AF_UNIX, unix.SOCK_STREAM)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reused := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
	for name, m := range map[string]*markRequest{
		"unix socket":  req(unixSock),
		"regular file": {PID: os.Getpid(), FD: int(f.Fd()), Ino: inode(t, int(f.Fd()))},
		"reused fd":    {PID: os.Getpid(), FD: reused, Ino: inode(t, reused) + 1},
		"closed fd":    {PID: os.Getpid(), FD: 1 << 20},
	} {
		if err := markPeer(pidfd, m); err == nil {
			t.Errorf("%s: markPeer succeeded, want a refusal", name)
		}
	}
	if m := markOf(t, reused); m != 0 {
		t.Errorf("a socket whose inode did not match got mark %#x", m)
	}
}

// TestServeHelperMarkRefuses: in process, the test is not an ancestor of
// "the child", so a request naming its own socket is refused unmarked.
func TestServeHelperMarkRefuses(t *testing.T) {
	c := serveTestHelper(t, context.Background(), New(&Fake{}, testLogger(t)), testLogger(t))
	fd := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
	line, err := json.Marshal(helperRequest{Op: opMark, Mark: &markRequest{PID: os.Getpid(), FD: fd, Ino: inode(t, fd)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{string(line), `{"op":"mark"}`} {
		if r := c.do(l); r.OK || r.Error == "" {
			t.Errorf("%s: got %+v, want a refusal", l, r)
		}
	}
	if r := c.do(string(line)); !strings.Contains(r.Error, "not the process that started") {
		t.Errorf("refusal %q does not say why", r.Error)
	}
	if m := markOf(t, fd); m != 0 {
		t.Errorf("refused socket has mark %#x", m)
	}
}

// TestHelperMark: the root child marks a socket of its parent, as it does
// for an unprivileged client that started it through sudo.
func TestHelperMark(t *testing.T) {
	requireRootForMark(t)
	h, stderr := startTestHelper(t)
	for _, typ := range []int{unix.SOCK_DGRAM, unix.SOCK_STREAM} {
		fd := newSocket(t, unix.AF_INET, typ)
		if err := h.markRemote(context.Background(), fd); err != nil {
			t.Fatalf("markRemote: %v\n%s", err, stderr)
		}
		if m := markOf(t, fd); m != DNSMark {
			t.Errorf("type %d: mark %#x after the child marked it, want %#x", typ, m, DNSMark)
		}
	}
	// As root, MarkSocket needs no child.
	fd := newSocket(t, unix.AF_INET6, unix.SOCK_STREAM)
	if err := h.MarkSocket(context.Background(), fd); err != nil || markOf(t, fd) != DNSMark {
		t.Errorf("MarkSocket: %v, mark %#x; want %#x", err, markOf(t, fd), DNSMark)
	}
}

// FuzzServeMark feeds the child arbitrary mark requests: whatever they name,
// it must not crash, and nothing but an ancestor's socket may be marked.
func FuzzServeMark(f *testing.F) {
	f.Add(`{"op":"mark","mark":{"pid":1,"fd":0,"ino":0}}`)
	f.Add(`{"op":"mark","mark":{"pid":-1,"fd":-1}}`)
	f.Add(`{"op":"mark","mark":null}`)
	f.Add(`{"op":"mark","mark":{"pid":0,"fd":3,"ino":18446744073709551615}}`)
	f.Add(`{"op":"mark","mark":{"pid":1,"fd":0,"ino":0,"transparent":true}}`)
	f.Add(`{"op":"mark","mark":{"pid":-1,"fd":3,"transparent":1}}`)
	fw := New(&Fake{}, nil)
	f.Fuzz(func(t *testing.T, line string) {
		_, reply := serveRequest(fw, []byte(line), nil)
		if !reply.OK && reply.Error == "" {
			t.Errorf("%s: a failure without an error", line)
		}
	})
}

func transparentOf(t *testing.T, fd int) bool {
	t.Helper()
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		t.Fatal(err)
	}
	var v int
	if domain == unix.AF_INET6 {
		v, err = unix.GetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT)
	} else {
		v, err = unix.GetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT)
	}
	if err != nil {
		t.Fatal(err)
	}
	return v != 0
}

// TestTransparentPeer: the child makes the caller's UDP sockets transparent,
// and refuses a TCP socket and one another uid created.
func TestTransparentPeer(t *testing.T) {
	requireRootForMark(t)
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatalf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	req := func(fd int) *markRequest {
		return &markRequest{PID: os.Getpid(), FD: fd, Ino: inode(t, fd), Transparent: true}
	}
	for _, domain := range []int{unix.AF_INET, unix.AF_INET6} {
		fd := newSocket(t, domain, unix.SOCK_DGRAM)
		if err := transparentPeer(pidfd, req(fd), os.Getuid()); err != nil || !transparentOf(t, fd) {
			t.Errorf("domain %d: transparentPeer: %v, transparent %v; want it set", domain, err, transparentOf(t, fd))
		}
	}
	tcp := newSocket(t, unix.AF_INET, unix.SOCK_STREAM)
	if err := transparentPeer(pidfd, req(tcp), os.Getuid()); err == nil || transparentOf(t, tcp) {
		t.Errorf("a TCP socket was made transparent (err %v)", err)
	}
	other := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
	if err := transparentPeer(pidfd, req(other), os.Getuid()+1); err == nil || transparentOf(t, other) {
		t.Errorf("a socket of another uid was made transparent (err %v)", err)
	}
	// A raw socket would send anything from anywhere; a Unix datagram
	// socket is not IP at all.
	for _, s := range []struct {
		name                  string
		domain, typ, protocol int
	}{{"raw UDP", unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP}, {"unix datagram", unix.AF_UNIX, unix.SOCK_DGRAM, 0}} {
		fd, err := unix.Socket(s.domain, s.typ|unix.SOCK_CLOEXEC, s.protocol)
		if err != nil {
			t.Fatalf("%s socket: %v", s.name, err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := transparentPeer(pidfd, req(fd), os.Getuid()); err == nil {
			t.Errorf("a %s socket was made transparent", s.name)
		}
	}
}

// TestHelperTransparent: the root child makes a UDP socket of its parent
// transparent, as it does for an unprivileged client through sudo.
func TestHelperTransparent(t *testing.T) {
	requireRootForMark(t)
	h, stderr := startTestHelper(t)
	fd := newSocket(t, unix.AF_INET, unix.SOCK_DGRAM)
	if err := h.remoteSocketOp(context.Background(), fd, true); err != nil {
		t.Fatalf("remoteSocketOp: %v\n%s", err, stderr)
	}
	if !transparentOf(t, fd) {
		t.Error("socket not transparent after the child's answer")
	}
}
