// Package sshtest is an in-process SSH server and key helpers for the tests
// of the SSH transport: the dialer, the helper launcher and the transport
// that joins them all need a node to talk to.
package sshtest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Server is an in-process SSH server on 127.0.0.1:0. With Home set it runs
// "exec" requests with sh -c there, like sshd would on a node.
type Server struct {
	Port    int
	HostKey ssh.Signer
	opts    Options

	mu      sync.Mutex
	execs   []string
	conns   []net.Conn
	running sync.WaitGroup // exec requests
}

// Options says what the server accepts and how it behaves.
type Options struct {
	User       string        // the only user allowed in; "" = anyone
	Key        ssh.PublicKey // the only key allowed in
	Home       string        // run exec requests here; "" = refuse them
	Silent     bool          // never answer global requests (a hung node)
	Keepalives chan string   // receives the type of each global request
	SlowFirst  time.Duration // answer the first global request this late (a busy node)
	HostKeys   []ssh.Signer  // nil = one fresh ed25519 key; the first is HostKey
	Env        []string      // added to the environment of exec requests (HOME and PATH)
	Password   string        // also accepted, by password and keyboard-interactive; "" = none
	UserCA     ssh.PublicKey // user certificates signed by it are accepted for their principals
	Forward    bool          // allow direct-tcpip channels, like a jump host

	// Shell makes the process that runs an exec request; nil = sh -c command.
	// Tests use it to give the node, say, a read-only home in a mount namespace.
	Shell func(command string) *exec.Cmd
}

// Start runs a server until the test ends.
func Start(t *testing.T, opts Options) *Server {
	t.Helper()
	if len(opts.HostKeys) == 0 {
		k, _ := Key(t)
		opts.HostKeys = []ssh.Signer{k}
	}
	s := &Server{HostKey: opts.HostKeys[0], opts: opts}
	userOK := func(md ssh.ConnMetadata) error {
		if opts.User != "" && md.User() != opts.User {
			return fmt.Errorf("user %q not allowed", md.User())
		}
		return nil
	}
	certs := &ssh.CertChecker{
		IsUserAuthority: func(k ssh.PublicKey) bool {
			return opts.UserCA != nil && bytes.Equal(k.Marshal(), opts.UserCA.Marshal())
		},
		UserKeyFallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if opts.Key == nil || !bytes.Equal(key.Marshal(), opts.Key.Marshal()) {
				return nil, errors.New("key not authorized")
			}
			return nil, nil
		},
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if err := userOK(md); err != nil {
				return nil, err
			}
			return certs.Authenticate(md, key)
		},
	}
	if opts.Password != "" {
		cfg.PasswordCallback = func(md ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if err := userOK(md); err != nil || string(pw) != opts.Password {
				return nil, errors.New("wrong password")
			}
			return nil, nil
		}
		cfg.KeyboardInteractiveCallback = func(md ssh.ConnMetadata, ask ssh.KeyboardInteractiveChallenge) (*ssh.Permissions, error) {
			ans, err := ask("", "", []string{"Password: "}, []bool{false})
			if err != nil || userOK(md) != nil || len(ans) != 1 || ans[0] != opts.Password {
				return nil, errors.New("wrong password")
			}
			return nil, nil
		}
	}
	for _, k := range opts.HostKeys {
		cfg.AddHostKey(k)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Port = ln.Addr().(*net.TCPAddr).Port
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, nc)
			s.mu.Unlock()
			wg.Go(func() { s.serve(nc, cfg, &wg) })
		}
	})
	return s
}

func (s *Server) serve(nc net.Conn, cfg *ssh.ServerConfig, wg *sync.WaitGroup) {
	_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		nc.Close()
		return
	}
	wg.Go(func() {
		for first := true; ; first = false {
			r, ok := <-reqs
			if !ok {
				break
			}
			select {
			case s.opts.Keepalives <- r.Type:
			default: // a nil or full channel must not stall the connection
			}
			if first {
				time.Sleep(s.opts.SlowFirst)
			}
			if !s.opts.Silent && r.WantReply {
				r.Reply(false, nil)
			}
		}
	})
	for nch := range chans {
		if nch.ChannelType() == "direct-tcpip" && s.opts.Forward {
			wg.Go(func() { forward(nch) })
			continue
		}
		if nch.ChannelType() != "session" || s.opts.Home == "" {
			nch.Reject(ssh.UnknownChannelType, "no")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		wg.Go(func() {
			for r := range creqs {
				var p struct{ Command string }
				if r.Type != "exec" || ssh.Unmarshal(r.Payload, &p) != nil {
					r.Reply(false, nil)
					continue
				}
				r.Reply(true, nil)
				s.mu.Lock()
				s.execs = append(s.execs, p.Command)
				s.running.Add(1)
				s.mu.Unlock()
				wg.Go(func() {
					defer s.running.Done()
					s.exec(ch, p.Command)
				})
			}
		})
	}
}

func (s *Server) exec(ch ssh.Channel, command string) {
	defer ch.Close()
	var cmd *exec.Cmd
	if s.opts.Shell != nil {
		cmd = s.opts.Shell(command)
	} else {
		cmd = exec.Command("sh", "-c", command)
	}
	cmd.Dir = s.opts.Home
	cmd.Env = append([]string{"HOME=" + s.opts.Home, "PATH=" + os.Getenv("PATH")}, s.opts.Env...)
	cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
	// Like sshd, end the session when the command exits, even if the client
	// never closes stdin: exec.Cmd would wait for a Stdin copy forever.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return
	}
	go func() {
		io.Copy(stdin, ch)
		stdin.Close()
	}()
	status := 0
	if err := cmd.Run(); err != nil {
		status = 255
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			status = exit.ExitCode()
		}
	}
	ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
}

// forward connects a direct-tcpip channel to its target, as a jump host.
func forward(nch ssh.NewChannel) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil {
		nch.Reject(ssh.ConnectionFailed, "bad request")
		return
	}
	c, err := net.Dial("tcp", net.JoinHostPort(p.Host, fmt.Sprint(p.Port)))
	if err != nil {
		nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nch.Accept()
	if err != nil {
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{})
	go func() {
		io.Copy(c, ch)
		c.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(ch, c)
	ch.CloseWrite()
	<-done
	ch.Close()
	c.Close()
}

// ExecCount counts the exec requests whose command contains substr.
func (s *Server) ExecCount(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.execs {
		if strings.Contains(e, substr) {
			n++
		}
	}
	return n
}

// WaitExecs waits until the commands of all exec requests so far have
// exited: closing a session does not wait for that.
func (s *Server) WaitExecs() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running.Wait()
}

// Remote is user@127.0.0.1:port, or without user@ when user is "".
func (s *Server) Remote(user string) string {
	r := fmt.Sprintf("127.0.0.1:%d", s.Port)
	if user != "" {
		r = user + "@" + r
	}
	return r
}

// KnownHosts writes a known_hosts file that trusts s and returns its path.
func (s *Server) KnownHosts(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "known_hosts")
	line := knownhosts.Line([]string{s.Remote("")}, s.HostKey.PublicKey()) + "\n"
	if err := os.WriteFile(f, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// Key makes a fresh ed25519 key.
func Key(t *testing.T) (ssh.Signer, ed25519.PrivateKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, priv
}

// KeyFile writes priv in OpenSSH format, encrypted when passphrase is set.
func KeyFile(t *testing.T, path string, priv ed25519.PrivateKey, passphrase string) string {
	t.Helper()
	var block *pem.Block
	var err error
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "test")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Env keeps the real ~/.ssh and ssh-agent out of the test.
func Env(t *testing.T) string {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	return home
}

// Ctx is the test context, bounded to 10 s.
func Ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Client connects to srv directly, for tests about what comes after dialing.
func Client(t *testing.T, srv *Server, signer ssh.Signer) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", srv.Remote(""), &ssh.ClientConfig{
		User:            "u",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(srv.HostKey.PublicKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
