package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A join hands an extra channel of a link to the link's first helper, so
// that one process serves every channel of it (a connection striped over
// several channels needs its pieces in one place). The first helper (A)
// listens on an abstract unix socket whose name and a random token it gives
// the client as JoinAt; the helper sshd starts on an extra channel (B) gets
// them back as Join, and:
//
//	B → A  the token, with the channel's stdin and stdout (SCM_RIGHTS)
//	A → B  ack: A holds the descriptors
//	B → A  commit: B has let go of them; A may answer on the channel
//
// and then B waits, without touching the channel, until A closes the
// connection: B must outlive the joined session, since sshd stops writing to
// a channel once the process it started exits. A ends the joined session
// when B goes. Without the commit, a B that gave up waiting for the ack
// could answer on the channel while A does too.

// joinPrefix starts every join socket's name: a join only ever goes to one.
const joinPrefix = "@k8stunnel-"

// tokenLen is the size of a join token, 128 bits: the abstract socket can be
// reached by any process in the node's network namespace.
const tokenLen = 16

// maxJoins bounds the joins one helper has pending or serves at once: a
// link has a few channels (client.maxAutoChannels), not hundreds.
const maxJoins = 16

// joinTimeout bounds each step of a join; a variable for tests.
var joinTimeout = 5 * time.Second

const (
	joinAck    = 'A'
	joinCommit = 'C'
)

var (
	errWrongUser  = errors.New("peer runs as another user")
	errBadToken   = errors.New("bad token")
	errBadJoinAt  = errors.New("malformed join address")
	errNoFiles    = errors.New("channel has no descriptors to hand over")
	errNoJoinAck  = errors.New("no ack from the joined helper")
	errJoinFull   = errors.New("too many joins")
	errBadJoinMsg = errors.New("malformed join message")
)

// joinListener is A's end: the socket it takes joins on, and the sessions
// of the channels it took.
type joinListener struct {
	ln     *net.UnixListener
	addr   string
	token  [tokenLen]byte
	log    *slog.Logger
	serve  func(context.Context, Channel) error
	slots  chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// listenJoins listens for joins, and serves each channel handed over with
// serve until close.
func listenJoins(ctx context.Context, log *slog.Logger, serve func(context.Context, Channel) error) (*joinListener, error) {
	var name [8]byte
	j := &joinListener{log: log, serve: serve, slots: make(chan struct{}, maxJoins)}
	rand.Read(name[:])
	rand.Read(j.token[:])
	j.addr = joinPrefix + hex.EncodeToString(name[:])
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: j.addr, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listening for joins: %w", err)
	}
	j.ln = ln
	ctx, j.cancel = context.WithCancel(ctx)
	j.wg.Go(func() { j.accept(ctx) })
	return j, nil
}

// at is what the client passes back as Join; empty on a nil listener.
func (j *joinListener) at() string {
	if j == nil {
		return ""
	}
	return j.addr + "," + hex.EncodeToString(j.token[:])
}

// close stops taking joins and returns once every joined session has ended;
// safe on a nil listener.
func (j *joinListener) close() {
	if j == nil {
		return
	}
	j.cancel()
	j.ln.Close()
	j.wg.Wait()
}

func (j *joinListener) accept(ctx context.Context) {
	for {
		c, err := j.ln.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// EMFILE and friends: back off instead of spinning.
			j.log.Debug("accepting a join", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case j.slots <- struct{}{}:
		default:
			j.log.Debug("refused a join", "err", errJoinFull)
			c.Close()
			continue
		}
		j.wg.Go(func() {
			defer func() { <-j.slots }()
			j.take(ctx, c)
		})
	}
}

// take receives a channel on c and serves it until its session ends, ctx
// ends or the helper that handed it over goes.
func (j *joinListener) take(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	ch, err := j.receive(c)
	if err != nil {
		j.log.Debug("refused a join", "err", err)
		return
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var watch sync.WaitGroup
	watch.Go(func() {
		// B sends nothing more: a read returns when it is gone, or when
		// we close c below.
		c.Read(make([]byte, 1))
		cancel()
	})
	err = j.serve(sctx, ch)
	j.log.Debug("joined session ended", "err", err)
	c.Close()
	watch.Wait()
}

// receive checks the joiner and takes its channel: see the protocol above.
func (j *joinListener) receive(c *net.UnixConn) (Channel, error) {
	c.SetDeadline(time.Now().Add(joinTimeout))
	cred, err := peerCred(c)
	if err != nil {
		return nil, err
	}
	if err := samePeer(cred, os.Getuid()); err != nil {
		return nil, err
	}
	buf := make([]byte, tokenLen+1)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	fds := rights(oob[:oobn])
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	switch {
	case err != nil:
		closeAll()
		return nil, fmt.Errorf("reading the join message: %w", err)
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || len(fds) != 2:
		closeAll()
		return nil, errBadJoinMsg
	case n != tokenLen || subtle.ConstantTimeCompare(buf[:n], j.token[:]) != 1:
		closeAll()
		return nil, errBadToken
	}
	in, out := os.NewFile(uintptr(fds[0]), "joined stdin"), os.NewFile(uintptr(fds[1]), "joined stdout")
	if _, err := c.Write([]byte{joinAck}); err != nil {
		in.Close()
		out.Close()
		return nil, fmt.Errorf("acking a join: %w", err)
	}
	if n, err := c.Read(buf[:1]); err != nil || n != 1 || buf[0] != joinCommit {
		in.Close()
		out.Close()
		return nil, fmt.Errorf("no commit from the joiner: %v", err)
	}
	c.SetDeadline(time.Time{})
	return Pipes(in, out), nil
}

// rights returns the descriptors in a control message, every one of them,
// so that the caller can close what it does not keep.
func rights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("reading the peer's credentials: %w", credErr)
	}
	return cred, nil
}

// samePeer checks that the process at the other end of a join socket runs
// as uid, ours. Both ends check: A hands its sessions to no one else, and B
// gives its channel to no one else, since once A is gone another user may
// listen on the same abstract name.
func samePeer(cred *unix.Ucred, uid int) error {
	if cred == nil || int64(cred.Uid) != int64(uid) {
		got := int64(-1)
		if cred != nil {
			got = int64(cred.Uid)
		}
		return fmt.Errorf("%w: uid %d, we are %d", errWrongUser, got, uid)
	}
	return nil
}

// handOver is B's end: it gives ch to the helper at, and once that helper
// holds it (handed), waits until it is done with it or ctx ends. When it
// could not hand ch over, ch is as it was and the caller serves it.
func handOver(ctx context.Context, ch Channel, at string) (handed bool, err error) {
	in, out := ch.Files()
	if in == nil || out == nil {
		return false, errNoFiles
	}
	addr, tokenHex, ok := strings.Cut(at, ",")
	token, err := hex.DecodeString(tokenHex)
	if !ok || err != nil || len(token) != tokenLen || !strings.HasPrefix(addr, joinPrefix) {
		return false, errBadJoinAt
	}
	dctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	nc, err := (&net.Dialer{}).DialContext(dctx, "unixpacket", addr)
	if err != nil {
		return false, fmt.Errorf("joining: %w", err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	c.SetDeadline(time.Now().Add(joinTimeout))
	cred, err := peerCred(c)
	if err != nil {
		return false, err
	}
	if err := samePeer(cred, os.Getuid()); err != nil {
		return false, err
	}
	if _, _, err := c.WriteMsgUnix(token, unix.UnixRights(int(in.Fd()), int(out.Fd())), nil); err != nil {
		return false, fmt.Errorf("sending the channel: %w", err)
	}
	b := make([]byte, 1)
	if n, err := c.Read(b); err != nil || n != 1 || b[0] != joinAck {
		return false, fmt.Errorf("%w: %v", errNoJoinAck, err)
	}
	// A holds the channel and waits for our commit before it answers on
	// it. Let go of it: the descriptors first point at /dev/null, at once,
	// whatever Close then defers, so that A's close alone ends the channel.
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		unix.Dup3(int(null.Fd()), int(in.Fd()), 0)
		unix.Dup3(int(null.Fd()), int(out.Fd()), 0)
		null.Close()
	}
	ch.Close()
	if _, err := c.Write([]byte{joinCommit}); err != nil {
		// Too late to serve the channel ourselves: it is A's or no one's.
		return true, fmt.Errorf("committing a join: %w", err)
	}
	c.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		// A sends nothing: a read returns when it closes c.
		if n, err := c.Read(b); err != nil || n == 0 {
			return true, nil
		}
	}
}
