package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshTestServer is an in-process SSH server on 127.0.0.1:0. With home set it
// runs "exec" requests with sh -c there, like sshd would on a node.
type sshTestServer struct {
	port    int
	hostKey ssh.Signer
	opts    sshTestServerOptions

	mu    sync.Mutex
	execs []string
	conns []net.Conn
}

type sshTestServerOptions struct {
	user       string        // the only user allowed in; "" = anyone
	key        ssh.PublicKey // the only key allowed in
	home       string        // run exec requests here; "" = refuse them
	silent     bool          // never answer global requests (a hung node)
	keepalives chan string   // receives the type of each global request
	hostKeys   []ssh.Signer  // nil = one fresh ed25519 key; the first is hostKey
}

func startSSHTestServer(t *testing.T, opts sshTestServerOptions) *sshTestServer {
	t.Helper()
	if len(opts.hostKeys) == 0 {
		k, _ := sshTestKey(t)
		opts.hostKeys = []ssh.Signer{k}
	}
	s := &sshTestServer{hostKey: opts.hostKeys[0], opts: opts}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if opts.user != "" && md.User() != opts.user {
				return nil, fmt.Errorf("user %q not allowed", md.User())
			}
			if opts.key == nil || !bytes.Equal(key.Marshal(), opts.key.Marshal()) {
				return nil, errors.New("key not authorized")
			}
			return nil, nil
		},
	}
	for _, k := range opts.hostKeys {
		cfg.AddHostKey(k)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = ln.Addr().(*net.TCPAddr).Port
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

func (s *sshTestServer) serve(nc net.Conn, cfg *ssh.ServerConfig, wg *sync.WaitGroup) {
	_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		nc.Close()
		return
	}
	wg.Go(func() {
		for r := range reqs {
			select {
			case s.opts.keepalives <- r.Type:
			default: // a nil or full channel must not stall the connection
			}
			if !s.opts.silent && r.WantReply {
				r.Reply(false, nil)
			}
		}
	})
	for nch := range chans {
		if nch.ChannelType() != "session" || s.opts.home == "" {
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
				s.mu.Unlock()
				wg.Go(func() { s.exec(ch, p.Command) })
			}
		})
	}
}

func (s *sshTestServer) exec(ch ssh.Channel, command string) {
	defer ch.Close()
	cmd := exec.Command("sh", "-c", command)
	cmd.Dir = s.opts.home
	cmd.Env = []string{"HOME=" + s.opts.home, "PATH=" + os.Getenv("PATH")}
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

func (s *sshTestServer) execCount(substr string) int {
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

func (s *sshTestServer) remote(user string) string {
	r := fmt.Sprintf("127.0.0.1:%d", s.port)
	if user != "" {
		r = user + "@" + r
	}
	return r
}

// knownHosts writes a known_hosts file that trusts s and returns its path.
func (s *sshTestServer) knownHosts(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "known_hosts")
	line := knownhosts.Line([]string{s.remote("")}, s.hostKey.PublicKey()) + "\n"
	if err := os.WriteFile(f, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func sshTestKey(t *testing.T) (ssh.Signer, ed25519.PrivateKey) {
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

// sshTestKeyFile writes priv in OpenSSH format, encrypted when passphrase is set.
func sshTestKeyFile(t *testing.T, path string, priv ed25519.PrivateKey, passphrase string) string {
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

// sshTestEnv keeps the real ~/.ssh and ssh-agent out of the test.
func sshTestEnv(t *testing.T) string {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	return home
}

func sshTestCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDialSSHIdentityFile(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{user: "alice", key: signer.PublicKey()})
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), priv, "")

	c, target, err := DialSSH(sshTestCtx(t), SSHConfig{
		Remote:         srv.remote("alice"),
		Identities:     []string{keyFile},
		KnownHostsFile: srv.knownHosts(t),
	})
	if err != nil {
		t.Fatalf("DialSSH: %v", err)
	}
	c.Close()
	want := SSHTarget{User: "alice", Host: "127.0.0.1", Port: srv.port,
		Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(srv.port))}
	if target != want {
		t.Errorf("target = %+v, want %+v", target, want)
	}
}

func TestDialSSHAuthFailure(t *testing.T) {
	home := sshTestEnv(t)
	signer, _ := sshTestKey(t)
	_, otherPriv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), otherPriv, "")

	_, _, err := DialSSH(sshTestCtx(t), SSHConfig{
		Remote:         srv.remote("bob"),
		Identities:     []string{keyFile},
		KnownHostsFile: srv.knownHosts(t),
	})
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v, want ErrAuthFailed", err)
	}
	var he *HintError
	if !errors.As(err, &he) || !strings.Contains(he.Hint, "authorized_keys") || !strings.Contains(he.Hint, keyFile) {
		t.Errorf("hint = %+v, want one about authorized_keys naming %s", he, keyFile)
	}
	if !strings.HasPrefix(err.Error(), "ssh handshake with 127.0.0.1: ssh: unable to authenticate") {
		t.Errorf("err = %q", err)
	}
}

func TestDialSSHUnknownHostKey(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	kh := filepath.Join(home, "missing", "known_hosts")

	_, _, err := DialSSH(sshTestCtx(t), SSHConfig{Remote: srv.remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if !errors.Is(err, ErrUnknownHostKey) {
		t.Fatalf("err = %v, want ErrUnknownHostKey", err)
	}
	var he *HintError
	if !errors.As(err, &he) {
		t.Fatalf("err = %v, want a HintError", err)
	}
	want := fmt.Sprintf("add it with: ssh-keyscan -p %d 127.0.0.1 >> %s", srv.port, kh)
	if !strings.HasPrefix(he.Hint, want) {
		t.Errorf("hint = %q, want it to start with %q", he.Hint, want)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(srv.hostKey.PublicKey())) {
		t.Errorf("err = %q, want the offered fingerprint", err)
	}
}

func TestDialSSHChangedHostKey(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	old, _ := sshTestKey(t)
	kh := filepath.Join(home, "known_hosts")
	content := "# first line\n" + knownhosts.Line([]string{srv.remote("")}, old.PublicKey()) + "\n"
	if err := os.WriteFile(kh, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}

	_, _, err := DialSSH(sshTestCtx(t), SSHConfig{Remote: srv.remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("err = %v, want ErrHostKeyChanged", err)
	}
	if !strings.Contains(err.Error(), kh+":2") {
		t.Errorf("err = %q, want it to name %s:2", err, kh)
	}
	var he *HintError
	want := fmt.Sprintf("ssh-keygen -R '[127.0.0.1]:%d' -f %s", srv.port, kh)
	if !errors.As(err, &he) || !strings.Contains(he.Hint, want) {
		t.Errorf("hint = %+v, want %q", he, want)
	}
}

func TestDialSSHAcceptNew(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	kh := filepath.Join(home, "new", "known_hosts")
	conf := filepath.Join(home, "config")
	if err := os.WriteFile(conf, []byte("Host *\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile "+kh+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	c, _, err := DialSSH(sshTestCtx(t), SSHConfig{Remote: srv.remote("u"), Identities: []string{keyFile}, ConfigFile: conf})
	if err != nil {
		t.Fatalf("DialSSH with accept-new: %v", err)
	}
	c.Close()
	got, err := os.ReadFile(kh)
	if err != nil {
		t.Fatal(err)
	}
	if want := knownhosts.Line([]string{srv.remote("")}, srv.hostKey.PublicKey()) + "\n"; string(got) != want {
		t.Errorf("known_hosts = %q, want %q", got, want)
	}

	// The appended line must satisfy strict checking from now on.
	c, _, err = DialSSH(sshTestCtx(t), SSHConfig{Remote: srv.remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if err != nil {
		t.Fatalf("DialSSH with the appended key: %v", err)
	}
	c.Close()
}

func TestDialSSHPassphrasePrompt(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	_, otherPriv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})
	other := sshTestKeyFile(t, filepath.Join(home, "k", "other"), otherPriv, "other")
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), priv, "sesame")

	var prompts []string
	c, _, err := DialSSH(sshTestCtx(t), SSHConfig{
		Remote:         srv.remote("u"),
		Identities:     []string{other, keyFile},
		KnownHostsFile: srv.knownHosts(t),
		Prompt: func(p string) ([]byte, error) {
			prompts = append(prompts, p)
			return []byte("sesame"), nil
		},
	})
	if err != nil {
		t.Fatalf("DialSSH: %v", err)
	}
	c.Close()
	// The key the node does not accept is never decrypted.
	if len(prompts) != 1 || !strings.Contains(prompts[0], keyFile) {
		t.Errorf("prompts = %q, want one for %s", prompts, keyFile)
	}
}

func TestDialSSHPassphraseNoTerminal(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), priv, "sesame")

	// Whatever ran the tests, stdin is now no terminal.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin := os.Stdin
	os.Stdin = r
	t.Cleanup(func() { os.Stdin = stdin; r.Close(); w.Close() })

	_, _, err = DialSSH(sshTestCtx(t), SSHConfig{Remote: srv.remote("u"), Identities: []string{keyFile}, KnownHostsFile: srv.knownHosts(t)})
	if !errors.Is(err, ErrNoTerminal) {
		t.Fatalf("err = %v, want ErrNoTerminal", err)
	}
	want := "key " + keyFile + " is passphrase-protected and there is no terminal to ask on"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("err = %q, want it to contain %q", err, want)
	}
	var he *HintError
	if !errors.As(err, &he) || !strings.Contains(he.Hint, "ssh-agent") {
		t.Errorf("hint = %+v, want one about ssh-agent", he)
	}
}

func TestDialSSHConfigAlias(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{user: "alice", key: signer.PublicKey()})
	sshTestKeyFile(t, filepath.Join(home, "keys", "id_test"), priv, "")
	kh := srv.knownHosts(t)
	conf := filepath.Join(home, "ssh_config")
	text := fmt.Sprintf("Host mynode\n  HostName 127.0.0.1\n  Port %d\n  User alice\n  IdentityFile %%d/keys/id_test\n  UserKnownHostsFile %s\n", srv.port, kh)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	c, target, err := DialSSH(sshTestCtx(t), SSHConfig{Remote: "mynode", ConfigFile: conf})
	if err != nil {
		t.Fatalf("DialSSH: %v", err)
	}
	c.Close()
	if target.User != "alice" || target.Host != "127.0.0.1" || target.Port != srv.port {
		t.Errorf("target = %+v, want alice@127.0.0.1:%d", target, srv.port)
	}
}

func TestKeepaliveTimeout(t *testing.T) {
	sshTestEnv(t)
	signer, _ := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey(), silent: true})
	c := sshTestClient(t, srv, signer)

	err := Keepalive(t.Context(), c, 10*time.Millisecond, 50*time.Millisecond)
	if !errors.Is(err, ErrKeepaliveTimeout) {
		t.Fatalf("err = %v, want ErrKeepaliveTimeout", err)
	}
	if want := "ssh keepalive: no answer from the node in 50ms"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	// Keepalive closed the client: its connection is gone.
	if c.Wait() == nil {
		t.Error("client still open after a failed keepalive")
	}
}

func TestKeepaliveStopsWithContext(t *testing.T) {
	sshTestEnv(t)
	signer, _ := sshTestKey(t)
	seen := make(chan string, 10)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey(), keepalives: seen})
	c := sshTestClient(t, srv, signer)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Keepalive(ctx, c, 5*time.Millisecond, time.Second) }()
	for range 2 {
		if typ := <-seen; typ != "keepalive@openssh.com" {
			t.Errorf("global request %q", typ)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Keepalive = %v, want nil after cancel", err)
	}
	if _, _, err := c.SendRequest("still-there", true, nil); err != nil {
		t.Errorf("client unusable after Keepalive returned: %v", err)
	}
}

// sshTestClient connects to srv directly, for tests about what comes after DialSSH.
func sshTestClient(t *testing.T, srv *sshTestServer, signer ssh.Signer) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", srv.remote(""), &ssh.ClientConfig{
		User:            "u",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(srv.hostKey.PublicKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSSHParseRemote(t *testing.T) {
	for _, tc := range []struct {
		in         string
		user, host string
		port       int
	}{
		{"node", "", "node", 0},
		{"root@node", "root", "node", 0},
		{"root@node:2222", "root", "node", 2222},
		{"a@b@node", "a@b", "node", 0},
		{"[::1]:22", "", "::1", 22},
		{"root@fe80::1", "root", "fe80::1", 0},
	} {
		user, host, port, err := sshParseRemote(tc.in)
		if err != nil || user != tc.user || host != tc.host || port != tc.port {
			t.Errorf("sshParseRemote(%q) = %q, %q, %d, %v; want %q, %q, %d", tc.in, user, host, port, err, tc.user, tc.host, tc.port)
		}
	}
	for _, bad := range []string{"", "user@", "node:0", "node:x", "node:70000"} {
		if _, _, _, err := sshParseRemote(bad); err == nil {
			t.Errorf("sshParseRemote(%q) succeeded", bad)
		}
	}
}

func TestSSHQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/root/.ssh/known_hosts": "/root/.ssh/known_hosts",
		"[10.0.0.1]:2222":        "'[10.0.0.1]:2222'",
		"a b":                    "'a b'",
		"it's":                   `'it'\''s'`,
		"":                       "''",
		"$HOME":                  "'$HOME'",
	} {
		if got := sshQuote(in); got != want {
			t.Errorf("sshQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestDialSSHNoKeys(t *testing.T) {
	sshTestEnv(t)
	signer, _ := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})

	_, _, err := DialSSH(sshTestCtx(t), SSHConfig{Remote: srv.remote("u"), KnownHostsFile: srv.knownHosts(t)})
	var he *HintError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &he) || !strings.Contains(he.Hint, "no SSH key found") {
		t.Fatalf("err = %v (%+v), want ErrAuthFailed with a hint that no key was found", err, he)
	}
}

func TestDialSSHAgent(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey()})

	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				agent.ServeAgent(keyring, c)
			}()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)

	// The same key, encrypted on disk: with it in the agent nobody is asked.
	keyFile := sshTestKeyFile(t, filepath.Join(home, ".ssh", "id_ed25519"), priv, "sesame")
	c, _, err := DialSSH(sshTestCtx(t), SSHConfig{
		Remote:         srv.remote("u"),
		KnownHostsFile: srv.knownHosts(t),
		Prompt: func(string) ([]byte, error) {
			t.Errorf("asked for the passphrase of %s although the agent has the key", keyFile)
			return nil, errors.New("no")
		},
	})
	if err != nil {
		t.Fatalf("DialSSH via agent: %v", err)
	}
	c.Close()
}

// golang/go#29286: the node prefers a key type known_hosts does not list for
// it; we must ask for the type we know instead of failing as "changed".
func TestDialSSHHostKeyAlgorithms(t *testing.T) {
	home := sshTestEnv(t)
	signer, priv := sshTestKey(t)
	edHost, _ := sshTestKey(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecHost, err := ssh.NewSignerFromKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := sshTestKeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	srv := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey(), hostKeys: []ssh.Signer{edHost, ecHost}})
	kh := srv.knownHosts(t) // lists only the Ed25519 key; x/crypto prefers ECDSA

	c, _, err := DialSSH(sshTestCtx(t), SSHConfig{Remote: srv.remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if err != nil {
		t.Fatalf("DialSSH: %v", err)
	}
	c.Close()

	// A node that has only other key types than the known ones has changed.
	srv2 := startSSHTestServer(t, sshTestServerOptions{key: signer.PublicKey(), hostKeys: []ssh.Signer{ecHost}})
	line := knownhosts.Line([]string{srv2.remote("")}, edHost.PublicKey()) + "\n"
	if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = DialSSH(sshTestCtx(t), SSHConfig{Remote: srv2.remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	var he *HintError
	if !errors.Is(err, ErrHostKeyChanged) || !errors.As(err, &he) || !strings.Contains(he.Hint, "ssh-keygen -R") {
		t.Errorf("err = %v, want ErrHostKeyChanged with an ssh-keygen hint", err)
	}
}

func TestDialSSHHandshakeBounded(t *testing.T) {
	sshTestEnv(t)
	// Accepts, then never says a word.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			held <- c
		}
	}()
	t.Cleanup(func() {
		select {
		case c := <-held:
			c.Close()
		default:
		}
	})

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, _, err = DialSSH(ctx, SSHConfig{Remote: ln.Addr().String(), KnownHostsFile: filepath.Join(t.TempDir(), "kh")})
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if !strings.HasPrefix(err.Error(), "ssh handshake with 127.0.0.1: ") {
		t.Errorf("err = %q", err)
	}
}
