package server

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/k8stunnel/k8stunnel/internal/logtest"
	"github.com/k8stunnel/k8stunnel/mux"
)

// recordLog gets every record the helper logs (through logtest.Records).
type recordLog chan slog.Record

// wait returns the error attribute of the first record whose message is msg.
func (h recordLog) wait(t *testing.T, msg string) error {
	t.Helper()
	timeout := time.After(bound)
	for {
		select {
		case r := <-h:
			if r.Message != msg {
				continue
			}
			var err error
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "err" {
					err, _ = a.Value.Any().(error)
				}
				return true
			})
			return err
		case <-timeout:
			t.Fatalf("no log message %q", msg)
		}
	}
}

// channelPipes is an SSH channel made of two pipes: the helper's Channel
// (built by Pipes, as Stdio builds it on sshd's pipes) and the client's end.
func channelPipes(t *testing.T) (helperEnd Channel, clientEnd io.ReadWriteCloser) {
	t.Helper()
	inR, inW := pipe(t)
	outR, outW := pipe(t)
	return Pipes(inR, outW), sshChannel{outR, inW}
}

// helperProc is one Serve, as one helper process runs it.
type helperProc struct {
	client *mux.Session
	served chan error
	cancel context.CancelFunc
	log    recordLog
}

// startHelper runs Serve with cfg on a channel of pipes, and a client that
// says hello on it.
func startHelper(t *testing.T, cfg Config, hello mux.Hello, clientEnd func(io.ReadWriteCloser) io.ReadWriteCloser) *helperProc {
	t.Helper()
	h := &helperProc{served: make(chan error, 1), log: make(recordLog, 100)}
	cfg.Log = slog.New(logtest.Records(h.log))
	ch, cc := channelPipes(t)
	if clientEnd != nil {
		cc = clientEnd(cc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.served <- Serve(ctx, ch, cfg) }()
	client, err := mux.NewClient(cc, hello, discard)
	if err != nil {
		cc.Close()
		cancel()
		<-h.served
		t.Fatalf("client handshake: %v", err)
	}
	h.client = client
	go client.Serve(context.Background(), nil)
	t.Cleanup(func() {
		client.Close()
		cancel()
		h.wait(t)
	})
	return h
}

// wait returns what Serve returned, failing the test if it does not return.
func (h *helperProc) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-h.served:
		h.served <- err // for the next wait
		return err
	case <-time.After(bound):
		t.Fatal("Serve did not return")
	}
	return nil
}

// relays checks that a connection to a loopback target goes through s.
func relays(t *testing.T, s *mux.Session) {
	t.Helper()
	dst, conns := target(t)
	st, err := s.Dial(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	write(t, st, "ping")
	c := accepted(t, conns)
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("target read %q, %v", got, err)
	}
	write(t, c, "pong")
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v", got, err)
	}
}

// startFirst starts A, the helper that takes joins.
func startFirst(t *testing.T) *helperProc {
	t.Helper()
	a := startHelper(t, Config{Program: "A", AcceptJoins: true}, mux.Hello{}, nil)
	if !strings.HasPrefix(a.client.Peer.JoinAt, joinPrefix) {
		t.Fatalf("first helper's JoinAt = %q, want a join address", a.client.Peer.JoinAt)
	}
	return a
}

// A second channel's helper (B) hands its channel to the first (A): the
// client on it is answered and served by A, B's Serve returns once that
// session is over, and A goes on serving its own.
func TestJoin(t *testing.T) {
	goroutineLeakCheck(t)
	a := startFirst(t)
	b := startHelper(t, Config{Program: "B", AcceptJoins: true}, mux.Hello{Join: a.client.Peer.JoinAt}, nil)
	if p := b.client.Peer; !p.Joined || p.Program != "A" || !p.Names || !p.UDP || p.JoinAt != "" {
		t.Fatalf("joined channel's answer %+v, want A's with Joined", p)
	}
	relays(t, b.client)
	relays(t, a.client)

	select {
	case err := <-b.served:
		t.Fatalf("B's Serve returned %v while its channel was still served", err)
	default:
	}
	b.client.Close()
	a.log.wait(t, "joined session ended")
	if err := b.wait(t); err != nil {
		t.Errorf("B's Serve = %v, want nil", err)
	}
	relays(t, a.client)
}

// When A goes, the sessions it took go with it, and so do their Bs.
func TestJoinEndsWithFirst(t *testing.T) {
	goroutineLeakCheck(t)
	a := startFirst(t)
	b := startHelper(t, Config{Program: "B"}, mux.Hello{Join: a.client.Peer.JoinAt}, nil)
	if !b.client.Peer.Joined {
		t.Fatal("not joined")
	}
	a.client.Close()
	a.wait(t)
	if err := b.wait(t); err != nil {
		t.Errorf("B's Serve = %v, want nil", err)
	}
	select {
	case <-b.client.Done():
	case <-time.After(bound):
		t.Error("joined session still up after A ended")
	}
}

// extraAfterHello sends a yamux ping right behind the client's hello, in
// the same write, as no client of ours does.
type extraAfterHello struct {
	io.ReadWriteCloser
	sent bool
}

func (c *extraAfterHello) Write(b []byte) (int, error) {
	if c.sent {
		return c.ReadWriteCloser.Write(b)
	}
	c.sent = true
	ping := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7}
	if _, err := c.ReadWriteCloser.Write(append(append([]byte(nil), b...), ping...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Whenever a join fails, B serves its channel itself.
func TestJoinFallsBack(t *testing.T) {
	goroutineLeakCheck(t)
	a := startFirst(t)
	addr, token, _ := strings.Cut(a.client.Peer.JoinAt, ",")
	badToken := addr + "," + strings.Repeat("0", len(token))
	for _, tt := range []struct {
		name      string
		join      string
		clientEnd func(io.ReadWriteCloser) io.ReadWriteCloser
		want      error
		refused   error // what A logs, when it sees the join
	}{
		{name: "wrong token", join: badToken, want: errNoJoinAck, refused: errBadToken},
		{name: "no socket", join: joinPrefix + "0000000000000000," + token, want: unix.ECONNREFUSED},
		{name: "not a join address", join: "/tmp/x," + token, want: errBadJoinAt},
		{name: "bytes past the hello", join: a.client.Peer.JoinAt, want: errReadPastHello,
			clientEnd: func(c io.ReadWriteCloser) io.ReadWriteCloser { return &extraAfterHello{ReadWriteCloser: c} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := startHelper(t, Config{Program: "B"}, mux.Hello{Join: tt.join}, tt.clientEnd)
			if err := b.log.wait(t, "serving this channel alone"); !errors.Is(err, tt.want) {
				t.Errorf("B fell back for %v, want %v", err, tt.want)
			}
			if p := b.client.Peer; p.Joined || p.Program != "B" {
				t.Fatalf("answer %+v, want B's own", p)
			}
			if tt.refused != nil {
				if err := a.log.wait(t, "refused a join"); !errors.Is(err, tt.refused) {
					t.Errorf("A refused the join for %v, want %v", err, tt.refused)
				}
			}
			if tt.clientEnd == nil {
				relays(t, b.client)
			}
			b.client.Close()
			if err := b.wait(t); err != nil && !errors.Is(err, mux.ErrSessionLost) {
				t.Logf("B's Serve = %v", err)
			}
		})
	}
	relays(t, a.client)
}

// A closes a joiner that says nothing within joinTimeout, and one whose
// message is not a join, without an ack.
func TestJoinRefused(t *testing.T) {
	goroutineLeakCheck(t)
	defer func(d time.Duration) { joinTimeout = d }(joinTimeout)
	joinTimeout = 100 * time.Millisecond
	a := startFirst(t)
	addr, _, _ := strings.Cut(a.client.Peer.JoinAt, ",")
	dial := func() *os.File {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "joiner")
		t.Cleanup(func() { f.Close() })
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
			t.Fatal(err)
		}
		// A read that outlives bound fails the test instead of hanging it.
		tv := unix.NsecToTimeval(bound.Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		return f
	}
	closed := func(f *os.File) {
		t.Helper()
		n, err := unix.Read(int(f.Fd()), make([]byte, 1))
		if n != 0 || err != nil {
			t.Errorf("joiner read %d, %v; want the connection closed without an ack", n, err)
		}
	}

	silent := dial()
	if err := a.log.wait(t, "refused a join"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("A refused a silent joiner for %v, want a timeout", err)
	}
	closed(silent)

	r, w := pipe(t)
	bad := dial()
	if err := unix.Sendmsg(int(bad.Fd()), make([]byte, tokenLen), unix.UnixRights(int(r.Fd()), int(w.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.log.wait(t, "refused a join"); !errors.Is(err, errBadToken) {
		t.Errorf("A refused a bad token for %v", err)
	}
	closed(bad)

	noFiles := dial()
	tok, err := hex.DecodeString(strings.SplitN(a.client.Peer.JoinAt, ",", 2)[1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := noFiles.Write(tok); err != nil {
		t.Fatal(err)
	}
	if err := a.log.wait(t, "refused a join"); !errors.Is(err, errBadJoinMsg) {
		t.Errorf("A refused a join without descriptors for %v", err)
	}
	closed(noFiles)
	relays(t, a.client)
}

func TestSamePeer(t *testing.T) {
	uid := os.Getuid()
	if err := samePeer(&unix.Ucred{Pid: 1, Uid: uint32(uid), Gid: 0}, uid); err != nil {
		t.Errorf("same uid: %v", err)
	}
	for _, cred := range []*unix.Ucred{{Pid: int32(os.Getpid()), Uid: uint32(uid) + 1}, nil} {
		if err := samePeer(cred, uid); !errors.Is(err, errWrongUser) {
			t.Errorf("samePeer(%+v, %d) = %v, want %v", cred, uid, err, errWrongUser)
		}
	}
	if err := samePeer(&unix.Ucred{Uid: 1000}, 0); !errors.Is(err, errWrongUser) {
		t.Errorf("a user's socket passed for root's: %v", err)
	}
}
