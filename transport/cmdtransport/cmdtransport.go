// Package cmdtransport is the transport.Transport of -e/--ssh-cmd: each link
// is one run of a command, like sshuttle's `CMD [-p PORT] [user@]host --
// COMMAND`, whose stdin and stdout carry the helper's byte stream. With
// OpenSSH's ssh as the command, everything ssh supports (ssh_config,
// ControlMaster, agents, FIDO keys, its own prompts) works unchanged; a
// command that is not ssh at all (kubectl exec -i POD) works as long as it
// runs the line it is given with a shell next to the cluster.
package cmdtransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"github.com/k8stunnel/k8stunnel/internal/rawio"
	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/transport/helper"
)

// Config says which command to run and where.
type Config struct {
	// Command is -e's value, split into words as a shell would.
	Command string
	// Remote is [user@]host[:port]; a port becomes -p PORT, as sshuttle does.
	Remote string
	Helper helper.Config
	Log    *slog.Logger
}

// Transport runs the command once per link.
type Transport struct {
	argv     []string // the command, then [-p PORT] [user@]host --
	remote   string
	launcher *helper.Launcher
	log      *slog.Logger
	told     sync.Once
}

// New checks cfg.
func New(cfg Config) (*Transport, error) {
	words, err := SplitWords(cfg.Command)
	if err != nil {
		return nil, fmt.Errorf("-e/--ssh-cmd: %w", err)
	}
	if len(words) == 0 {
		return nil, errors.New("-e/--ssh-cmd is empty: want a command such as ssh")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Helper.Log == nil {
		cfg.Helper.Log = cfg.Log
	}
	dest, port := cfg.Remote, ""
	if i := strings.LastIndex(dest, "@"); strings.HasPrefix(dest[i+1:], "[") || strings.Count(dest[i+1:], ":") == 1 {
		host, p, err := net.SplitHostPort(dest[i+1:])
		if n, perr := strconv.Atoi(p); err != nil || perr != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("parsing remote %q: want [user@]host[:port]", cfg.Remote)
		}
		dest, port = dest[:i+1]+host, p
	}
	if port != "" {
		words = append(words, "-p", port)
	}
	return &Transport{argv: append(words, dest, "--"), remote: cfg.Remote,
		launcher: helper.New(cfg.Helper), log: cfg.Log}, nil
}

// Connect runs the command and starts the helper through it.
func (t *Transport) Connect(ctx context.Context) (transport.Link, error) {
	t.told.Do(func() {
		// ssh may go through a ProxyJump, kubectl to an API server: only
		// the user knows where the connection goes.
		t.log.Info("with -e the firewall exempts no address for the node: if the command connects into a forwarded CIDR, exclude its address with -x")
	})
	argv := append(t.argv[:len(t.argv):len(t.argv)], t.launcher.Command())
	p, err := start(argv)
	if err != nil {
		return nil, err
	}
	t.log.Debug("started the command for the node", "argv", argv[:len(argv)-1])
	ch, err := t.launcher.Attach(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("through %s: %w", argv[0], err)
	}
	return &link{ch: ch, remote: t.remote + " via " + argv[0]}, nil
}

// start runs argv with pipes of our own, so that stderr is read to its end
// (exec.Cmd's pipes are closed by Wait, which could lose the node's last
// words).
func start(argv []string) (helper.Process, error) {
	var files []*os.File
	pipe := func() (r, w *os.File) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil
		}
		files = append(files, r, w)
		return r, w
	}
	inR, inW := pipe()
	outR, outW := pipe()
	errR, errW := pipe()
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	if len(files) != 6 {
		closeAll()
		return helper.Process{}, errors.New("running the command for the node: out of file descriptors")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	if err := runAsInvoker(cmd); err != nil {
		closeAll()
		return helper.Process{}, fmt.Errorf("running the command for the node: %w", err)
	}
	if err := cmd.Start(); err != nil {
		closeAll()
		return helper.Process{}, fmt.Errorf("running the command for the node: %w", err)
	}
	inR.Close()
	outW.Close()
	errW.Close()
	end := func() error {
		err := cmd.Process.Kill()
		outR.Close() // a reader of the helper's output returns now
		if errors.Is(err, os.ErrProcessDone) {
			err = nil
		}
		return err
	}
	wait := func() error {
		err := cmd.Wait()
		if err == nil {
			err = errors.New("the command exited")
		}
		return err
	}
	// The session's pipes idle between every two messages: rawio.
	return helper.Process{Stdin: rawio.File(inW), Stdout: rawio.File(outR), Stderr: closeAtEnd{errR}, End: end, Wait: wait}, nil
}

// closeAtEnd closes the file once a read fails: stderr is read to its end
// and then let go.
type closeAtEnd struct{ *os.File }

func (c closeAtEnd) Read(p []byte) (int, error) {
	n, err := c.File.Read(p)
	if err != nil {
		c.File.Close()
	}
	return n, err
}

// link is one run of the command: one helper, one channel.
type link struct {
	ch     *helper.Stdio
	remote string
	mu     sync.Mutex
	opened bool
}

// Open hands out the one channel the command carries.
func (l *link) Open(ctx context.Context) (transport.Channel, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.opened {
		return nil, errors.New("with -e a link carries one channel")
	}
	l.opened = true
	return l.ch, nil
}

func (l *link) Remote() string { return l.remote }

// Server is unknown: the command decides where it connects.
func (l *link) Server() netip.Addr    { return netip.Addr{} }
func (l *link) Done() <-chan struct{} { return l.ch.Done() }

func (l *link) Err() error {
	select {
	case <-l.ch.Done():
		return fmt.Errorf("the command for the node ended: %w", l.ch.ExitErr())
	default:
		return nil
	}
}

// Close ends the command. It is safe twice.
func (l *link) Close() error {
	l.ch.Close()
	return nil
}
