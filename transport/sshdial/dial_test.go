package sshdial

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/transport/internal/sshtest"
	"github.com/k8stunnel/k8stunnel/tui"
)

// dial is one Dial with a fresh Dialer.
func dial(ctx context.Context, cfg Config) (*ssh.Client, Target, error) {
	d, err := New(cfg)
	if err != nil {
		return nil, Target{}, err
	}
	return d.Dial(ctx)
}

func TestDialIdentityFile(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{User: "alice", Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")

	c, target, err := dial(sshtest.Ctx(t), Config{
		Remote:         srv.Remote("alice"),
		Identities:     []string{keyFile},
		KnownHostsFile: srv.KnownHosts(t),
	})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	c.Close()
	want := Target{User: "alice", Host: "127.0.0.1", Port: srv.Port,
		Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(srv.Port)), Direct: true}
	if target != want {
		t.Errorf("target = %+v, want %+v", target, want)
	}
}

func TestDialAuthFailure(t *testing.T) {
	home := sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	_, otherPriv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), otherPriv, "")

	_, _, err := dial(sshtest.Ctx(t), Config{
		Remote:         srv.Remote("bob"),
		Identities:     []string{keyFile},
		KnownHostsFile: srv.KnownHosts(t),
	})
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v, want ErrAuthFailed", err)
	}
	var he *tui.HintError
	if !errors.As(err, &he) || !strings.Contains(he.Hint, "authorized_keys") || !strings.Contains(he.Hint, keyFile) {
		t.Errorf("hint = %+v, want one about authorized_keys naming %s", he, keyFile)
	}
	if !strings.HasPrefix(err.Error(), "ssh login as bob@127.0.0.1 failed: ssh: unable to authenticate") {
		t.Errorf("err = %q", err)
	}
}

func TestDialUnknownHostKey(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	kh := filepath.Join(home, "missing", "known_hosts")

	_, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if !errors.Is(err, ErrUnknownHostKey) || !errors.Is(err, transport.ErrPermanent) {
		t.Fatalf("err = %v, want ErrUnknownHostKey, permanent", err)
	}
	var he *tui.HintError
	if !errors.As(err, &he) {
		t.Fatalf("err = %v, want a HintError", err)
	}
	want := fmt.Sprintf("add it with: ssh-keyscan -p %d 127.0.0.1 >> %s", srv.Port, kh)
	if !strings.HasPrefix(he.Hint, want) {
		t.Errorf("hint = %q, want it to start with %q", he.Hint, want)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(srv.HostKey.PublicKey())) {
		t.Errorf("err = %q, want the offered fingerprint", err)
	}
}

func TestDialChangedHostKey(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	old, _ := sshtest.Key(t)
	kh := filepath.Join(home, "known_hosts")
	content := "# first line\n" + knownhosts.Line([]string{srv.Remote("")}, old.PublicKey()) + "\n"
	if err := os.WriteFile(kh, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}

	_, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if !errors.Is(err, ErrHostKeyChanged) || !errors.Is(err, transport.ErrPermanent) {
		t.Fatalf("err = %v, want ErrHostKeyChanged, permanent", err)
	}
	if !strings.Contains(err.Error(), kh+":2") {
		t.Errorf("err = %q, want it to name %s:2", err, kh)
	}
	var he *tui.HintError
	want := fmt.Sprintf("ssh-keygen -R '[127.0.0.1]:%d' -f %s", srv.Port, kh)
	if !errors.As(err, &he) || !strings.Contains(he.Hint, want) {
		t.Errorf("hint = %+v, want %q", he, want)
	}
}

func TestDialAcceptNew(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	kh := filepath.Join(home, "new", "known_hosts")
	conf := filepath.Join(home, "config")
	if err := os.WriteFile(conf, []byte("Host *\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile "+kh+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	c, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, ConfigFile: conf})
	if err != nil {
		t.Fatalf("Dial with accept-new: %v", err)
	}
	c.Close()
	got, err := os.ReadFile(kh)
	if err != nil {
		t.Fatal(err)
	}
	if want := knownhosts.Line([]string{srv.Remote("")}, srv.HostKey.PublicKey()) + "\n"; string(got) != want {
		t.Errorf("known_hosts = %q, want %q", got, want)
	}

	// The appended line must satisfy strict checking from now on.
	c, _, err = dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if err != nil {
		t.Fatalf("Dial with the appended key: %v", err)
	}
	c.Close()
}

func TestDialPassphrasePrompt(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	_, otherPriv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	other := sshtest.KeyFile(t, filepath.Join(home, "k", "other"), otherPriv, "other")
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "sesame")

	var prompts []string
	c, _, err := dial(sshtest.Ctx(t), Config{
		Remote:         srv.Remote("u"),
		Identities:     []string{other, keyFile},
		KnownHostsFile: srv.KnownHosts(t),
		Prompt: func(p string) ([]byte, error) {
			prompts = append(prompts, p)
			return []byte("sesame"), nil
		},
	})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	c.Close()
	// The key the node does not accept is never decrypted.
	if len(prompts) != 1 || !strings.Contains(prompts[0], keyFile) {
		t.Errorf("prompts = %q, want one for %s", prompts, keyFile)
	}
}

func TestDialPassphraseNoTerminal(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "sesame")

	// Whatever ran the tests, stdin is now no terminal.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin := os.Stdin
	os.Stdin = r
	t.Cleanup(func() { os.Stdin = stdin; r.Close(); w.Close() })

	_, _, err = dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: srv.KnownHosts(t)})
	if !errors.Is(err, tui.ErrNoTerminal) {
		t.Fatalf("err = %v, want ErrNoTerminal", err)
	}
	want := "key " + keyFile + " is passphrase-protected and there is no terminal to ask on"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("err = %q, want it to contain %q", err, want)
	}
	var he *tui.HintError
	if !errors.As(err, &he) || !strings.Contains(he.Hint, "ssh-agent") {
		t.Errorf("hint = %+v, want one about ssh-agent", he)
	}
}

func TestDialConfigAlias(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{User: "alice", Key: signer.PublicKey()})
	sshtest.KeyFile(t, filepath.Join(home, "keys", "id_test"), priv, "")
	kh := srv.KnownHosts(t)
	conf := filepath.Join(home, "ssh_config")
	text := fmt.Sprintf("Host mynode\n  HostName 127.0.0.1\n  Port %d\n  User alice\n  IdentityFile %%d/keys/id_test\n  UserKnownHostsFile %s\n", srv.Port, kh)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	c, target, err := dial(sshtest.Ctx(t), Config{Remote: "mynode", ConfigFile: conf})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	c.Close()
	if target.User != "alice" || target.Host != "127.0.0.1" || target.Port != srv.Port {
		t.Errorf("target = %+v, want alice@127.0.0.1:%d", target, srv.Port)
	}
}

func TestKeepaliveTimeout(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), Silent: true})
	c := sshtest.Client(t, srv, signer)

	err := Keepalive(t.Context(), c, 10*time.Millisecond, 50*time.Millisecond, nil)
	if !errors.Is(err, ErrKeepaliveTimeout) {
		t.Fatalf("err = %v, want ErrKeepaliveTimeout", err)
	}
	if want := "ssh keepalive: no answer from the node in 50ms"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

// The first keepalive goes out at once, not after an interval: the client
// sizes a link's channels by its round trip while the first helper starts.
func TestKeepaliveFirstAtOnce(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	seen := make(chan string, 10)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), Keepalives: seen})
	c := sshtest.Client(t, srv, signer)

	rtts := make(chan time.Duration, 1)
	go Keepalive(t.Context(), c, time.Hour, time.Minute, func(d time.Duration) { rtts <- d })
	select {
	case d := <-rtts:
		if d <= 0 {
			t.Errorf("round trip %v, want > 0", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no keepalive answered within 30 s; the first waited for the interval (1 h)")
	}
}

func TestKeepaliveStopsWithContext(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	seen := make(chan string, 10)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), Keepalives: seen})
	c := sshtest.Client(t, srv, signer)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	rtts := make(chan time.Duration, 100)
	go func() {
		done <- Keepalive(ctx, c, 5*time.Millisecond, time.Second, func(d time.Duration) {
			select {
			case rtts <- d:
			default:
			}
		})
	}()
	for range 2 {
		if typ := <-seen; typ != "keepalive@openssh.com" {
			t.Errorf("global request %q", typ)
		}
	}
	// Each answer's round trip is reported, for `k8stunnel status`.
	if d := <-rtts; d <= 0 || d > time.Second {
		t.Errorf("round trip %v, want between 0 and the timeout", d)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Keepalive = %v, want nil after cancel", err)
	}
	if _, _, err := c.SendRequest("still-there", true, nil); err != nil {
		t.Errorf("client unusable after Keepalive returned: %v", err)
	}
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
		// ssh -G prints a ProxyJump host that is an address in brackets, without a port.
		{"root@[10.200.2.1]", "root", "10.200.2.1", 0},
		{"[fd00::1]", "", "fd00::1", 0},
	} {
		user, host, port, err := sshParseRemote(tc.in)
		if err != nil || user != tc.user || host != tc.host || port != tc.port {
			t.Errorf("sshParseRemote(%q) = %q, %q, %d, %v; want %q, %q, %d", tc.in, user, host, port, err, tc.user, tc.host, tc.port)
		}
	}
	for _, bad := range []string{"", "user@", "node:0", "node:x", "node:70000", "[]", "[node"} {
		if _, _, _, err := sshParseRemote(bad); err == nil {
			t.Errorf("sshParseRemote(%q) succeeded", bad)
		}
	}
}

func TestDialNoKeys(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})

	_, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), KnownHostsFile: srv.KnownHosts(t)})
	var he *tui.HintError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &he) || !strings.Contains(he.Hint, "no SSH key found") {
		t.Fatalf("err = %v (%+v), want ErrAuthFailed with a hint that no key was found", err, he)
	}
}

func TestDialAgent(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})

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
	keyFile := sshtest.KeyFile(t, filepath.Join(home, ".ssh", "id_ed25519"), priv, "sesame")
	c, _, err := dial(sshtest.Ctx(t), Config{
		Remote:         srv.Remote("u"),
		KnownHostsFile: srv.KnownHosts(t),
		Prompt: func(string) ([]byte, error) {
			t.Errorf("asked for the passphrase of %s although the agent has the key", keyFile)
			return nil, errors.New("no")
		},
	})
	if err != nil {
		t.Fatalf("Dial via agent: %v", err)
	}
	c.Close()
}

// golang/go#29286: the node prefers a key type known_hosts does not list for
// it; we must ask for the type we know instead of failing as "changed".
func TestDialHostKeyAlgorithms(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	edHost, _ := sshtest.Key(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecHost, err := ssh.NewSignerFromKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), HostKeys: []ssh.Signer{edHost, ecHost}})
	kh := srv.KnownHosts(t) // lists only the Ed25519 key; x/crypto prefers ECDSA

	c, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	c.Close()

	// A node that has only other key types than the known ones has changed.
	srv2 := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), HostKeys: []ssh.Signer{ecHost}})
	line := knownhosts.Line([]string{srv2.Remote("")}, edHost.PublicKey()) + "\n"
	if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = dial(sshtest.Ctx(t), Config{Remote: srv2.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	var he *tui.HintError
	if !errors.Is(err, ErrHostKeyChanged) || !errors.As(err, &he) || !strings.Contains(he.Hint, "ssh-keygen -R") {
		t.Errorf("err = %v, want ErrHostKeyChanged with an ssh-keygen hint", err)
	}
}

func TestDialHandshakeBounded(t *testing.T) {
	sshtest.Env(t)
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
	_, _, err = dial(ctx, Config{Remote: ln.Addr().String(), KnownHostsFile: filepath.Join(t.TempDir(), "kh")})
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if !strings.HasPrefix(err.Error(), "ssh handshake with 127.0.0.1: ") {
		t.Errorf("err = %q", err)
	}
}

// A reconnect must not ask again: the Dialer keeps what was decrypted, and
// only the Dialer (another one asks anew).
func TestDialerKeepsDecryptedKeys(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "sesame")
	prompts := 0
	cfg := Config{
		Remote:         srv.Remote("u"),
		Identities:     []string{keyFile},
		KnownHostsFile: srv.KnownHosts(t),
		Prompt: func(string) ([]byte, error) {
			prompts++
			return []byte("sesame"), nil
		},
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c, _, err := d.Dial(sshtest.Ctx(t))
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		c.Close()
	}
	if prompts != 1 {
		t.Errorf("%d prompts for two dials with one Dialer, want 1", prompts)
	}
	c, _, err := dial(sshtest.Ctx(t), cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	c.Close()
	if prompts != 2 {
		t.Errorf("%d prompts after a dial with a new Dialer, want 2", prompts)
	}
}

func TestNewNeedsRemote(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without Remote succeeded")
	}
}

// StrictHostKeyChecking no lets an unknown key through but never a changed
// one: OpenSSH refuses forwarding then, and forwarding is all we do.
func TestDialStrictNo(t *testing.T) {
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	old, _ := sshtest.Key(t)
	for _, tt := range []struct {
		name  string
		known string
		want  error
	}{
		{"unknown key", "", nil},
		{"changed key", knownhosts.Line([]string{srv.Remote("")}, old.PublicKey()) + "\n", ErrHostKeyChanged},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kh := filepath.Join(t.TempDir(), "known_hosts")
			if err := os.WriteFile(kh, []byte(tt.known), 0o600); err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(t.TempDir(), "config")
			if err := os.WriteFile(conf, []byte("Host *\n  StrictHostKeyChecking no\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			c, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile},
				ConfigFile: conf, KnownHostsFile: kh})
			if c != nil {
				c.Close()
			}
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Dial with StrictHostKeyChecking no: %v, want %v", err, tt.want)
			}
		})
	}
}

// TestKeepaliveFirstRoundTripIsTheLeast: the first answer from a busy node
// can be late; the round trip the client sizes its channels by is the least
// of the first few, not the first.
func TestKeepaliveFirstRoundTripIsTheLeast(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	const slow = 300 * time.Millisecond
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), SlowFirst: slow})
	c := sshtest.Client(t, srv, signer)

	rtts := make(chan time.Duration, 10)
	go Keepalive(t.Context(), c, time.Hour, time.Minute, func(d time.Duration) { rtts <- d })
	var got []time.Duration
	for range firstProbes {
		select {
		case d := <-rtts:
			got = append(got, d)
		case <-time.After(30 * time.Second):
			t.Fatalf("round trips %v, want %d at once", got, firstProbes)
		}
	}
	if got[0] < slow {
		t.Errorf("first round trip %v, want the slow answer's %v or more", got[0], slow)
	}
	if last := got[len(got)-1]; last >= slow/2 {
		t.Errorf("round trips %v: the last reported is %v, want the least, well under %v", got, last, slow/2)
	}
}
