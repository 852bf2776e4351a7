package sshdial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshMaxHops bounds ProxyJump chains, which ssh_config could make circular.
const sshMaxHops = 8

// connect opens the byte stream that rc's SSH handshake runs over: a TCP
// connection, a channel through the last jump host, or a ProxyCommand's
// stdin and stdout. first is where the laptop's own TCP connection goes.
func (dl *Dialer) connect(ctx context.Context, rc *sshResolved, depth int) (net.Conn, netip.AddrPort, error) {
	hostport := net.JoinHostPort(rc.host, strconv.Itoa(rc.port))
	switch {
	case rc.proxyJump != "":
		if depth >= sshMaxHops {
			return nil, netip.AddrPort{}, fmt.Errorf("more than %d ProxyJump hops to %s; is ProxyJump circular?", sshMaxHops, rc.alias)
		}
		// a,b: reach b through a, then the node through b (ssh -J a b -W node).
		rest, last := "", rc.proxyJump
		if i := strings.LastIndex(rc.proxyJump, ","); i >= 0 {
			rest, last = rc.proxyJump[:i], rc.proxyJump[i+1:]
		}
		last = strings.TrimPrefix(last, "ssh://")
		hop, err := sshResolve(dl.cfg, last, rest, dl.log)
		if err != nil {
			return nil, netip.AddrPort{}, fmt.Errorf("jump host %s: %w", last, err)
		}
		jc, first, err := dl.login(ctx, hop, depth+1)
		if err != nil {
			return nil, first, fmt.Errorf("jump host %s: %w", last, err)
		}
		c, err := jc.DialContext(ctx, "tcp", hostport)
		if err != nil {
			jc.Close()
			return nil, first, fmt.Errorf("connecting to %s through jump host %s: %w", hostport, hop.host, err)
		}
		dl.log.Debug("through jump host", "jump", hop.host, "to", hostport)
		return &jumpConn{Conn: c, jump: jc}, first, nil
	case rc.proxyCommand != "":
		c, err := startProxyCommand(rc)
		return c, netip.AddrPort{}, err
	}
	d := net.Dialer{
		Timeout:         sshConnectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4},
	}
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("connecting to %s: %w", hostport, sshDialCause(err))
	}
	var first netip.AddrPort
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		first = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return conn, first, nil
}

// jumpConn is a channel through a jump host that takes the jump host's
// connection with it when closed.
type jumpConn struct {
	net.Conn
	jump *ssh.Client
}

func (c *jumpConn) Close() error {
	err := c.Conn.Close()
	c.jump.Close()
	return err
}

// Channels have no deadlines; the handshake is bounded by its context.
func (c *jumpConn) SetDeadline(time.Time) error { return nil }

// startProxyCommand runs ProxyCommand through sh -c, as the local user, and
// talks SSH over its stdin and stdout like ssh does. Its stderr is ours.
func startProxyCommand(rc *sshResolved) (net.Conn, error) {
	command := strings.NewReplacer("%%", "%", "%h", rc.host, "%p", strconv.Itoa(rc.port), "%r", rc.user,
		"%n", rc.alias, "%u", rc.local.name, "%d", rc.local.home).Replace(rc.proxyCommand)
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.SysProcAttr = sysProcAttr(rc.local)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting ProxyCommand %q: %w", command, err)
	}
	// knownhosts wants a host:port to parse even though it prefers the name.
	return &cmdConn{cmd: cmd, r: stdout, w: stdin, addr: net.JoinHostPort(rc.host, strconv.Itoa(rc.port))}, nil
}

// cmdConn is a net.Conn over a command's stdout and stdin.
type cmdConn struct {
	cmd  *exec.Cmd
	r    io.ReadCloser
	w    io.WriteCloser
	addr string
	once sync.Once
}

func (c *cmdConn) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if errors.Is(err, os.ErrClosed) {
		err = net.ErrClosed
	}
	return n, err
}

func (c *cmdConn) Write(b []byte) (int, error) { return c.w.Write(b) }

// Close ends the command: closing its stdin is the polite way, a kill the
// sure one.
func (c *cmdConn) Close() error {
	c.once.Do(func() {
		c.w.Close()
		c.cmd.Process.Kill()
		c.cmd.Wait()
	})
	return nil
}

// cmdAddr is the host:port the command was asked to reach.
type cmdAddr string

func (a cmdAddr) Network() string { return "proxycommand" }
func (a cmdAddr) String() string  { return string(a) }

func (c *cmdConn) LocalAddr() net.Addr              { return cmdAddr("local") }
func (c *cmdConn) RemoteAddr() net.Addr             { return cmdAddr(c.addr) }
func (c *cmdConn) SetDeadline(time.Time) error      { return nil }
func (c *cmdConn) SetReadDeadline(time.Time) error  { return nil }
func (c *cmdConn) SetWriteDeadline(time.Time) error { return nil }
