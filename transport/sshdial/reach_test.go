//go:build unix

package sshdial

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/k8stunnel/k8stunnel/transport/internal/sshtest"
	"github.com/k8stunnel/k8stunnel/tui"
)

// The tests of this package read no ssh_config of the machine: those that
// ask OpenSSH do it through withResolvers and always pass -F. Nor do they
// act for whoever ran `sudo make test`: the ones about sudo set SUDO_UID.
func TestMain(m *testing.M) {
	sshProgram = ""
	for _, k := range []string{"SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND", "SUDO_HOME"} {
		os.Unsetenv(k)
	}
	os.Exit(m.Run())
}

// withResolvers runs fn with the pure parser and, where an ssh binary
// exists, with `ssh -G`: both must give the same answers.
func withResolvers(t *testing.T, fn func(t *testing.T)) {
	t.Run("parser", func(t *testing.T) {
		sshProgram = ""
		fn(t)
	})
	t.Run("ssh-G", func(t *testing.T) {
		if _, err := exec.LookPath("ssh"); err != nil {
			t.Skip("no ssh binary: the pure parser is all there is")
		}
		sshProgram = "ssh"
		t.Cleanup(func() { sshProgram = "" })
		fn(t)
	})
}

func writeFile(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// knownHostsFor writes one known_hosts file that trusts every server.
func knownHostsFor(t *testing.T, srvs ...*sshtest.Server) string {
	var b strings.Builder
	for _, s := range srvs {
		b.WriteString(knownhosts.Line([]string{s.Remote("")}, s.HostKey.PublicKey()) + "\n")
	}
	return writeFile(t, filepath.Join(t.TempDir(), "known_hosts"), b.String())
}

// serveAgent serves keyring on a socket and points SSH_AUTH_SOCK at it.
func serveAgent(t *testing.T, keyring agent.Agent) string {
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
	return sock
}

// fakeSudo makes the process look started by `sudo` from alice, whose home
// is returned; $HOME stays root's, as sudo leaves it.
func fakeSudo(t *testing.T) (home string, uid int) {
	home = t.TempDir()
	uid = 4242
	t.Setenv("SUDO_UID", fmt.Sprint(uid))
	t.Setenv("SUDO_USER", "alice")
	oldEuid, oldLookup := geteuid, lookupUser
	geteuid = func() int { return 0 }
	lookupUser = func(id string) (*user.User, error) {
		if id != fmt.Sprint(uid) {
			return nil, user.UnknownUserIdError(uid)
		}
		return &user.User{Uid: id, Gid: id, Username: "alice", HomeDir: home}, nil
	}
	t.Cleanup(func() { geteuid, lookupUser = oldEuid, oldLookup })
	return home, uid
}

func TestDialUnderSudoUsesInvokersSSH(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the known_hosts entry is given to another user")
	}
	sshtest.Env(t) // root's $HOME: empty
	aliceHome, uid := fakeSudo(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{User: "alice", Key: signer.PublicKey()})
	sshtest.KeyFile(t, filepath.Join(aliceHome, ".ssh", "id_ed25519"), priv, "")
	writeFile(t, filepath.Join(aliceHome, ".ssh", "config"), "StrictHostKeyChecking accept-new\n")

	c, target, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("")})
	if err != nil {
		t.Fatalf("Dial under sudo: %v", err)
	}
	c.Close()
	if target.User != "alice" {
		t.Errorf("remote user = %q, want alice (the user who ran sudo)", target.User)
	}
	kh := filepath.Join(aliceHome, ".ssh", "known_hosts")
	fi, err := os.Stat(kh)
	if err != nil {
		t.Fatalf("no known_hosts entry in alice's home: %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
		t.Errorf("%s is owned by uid %d, want alice's %d", kh, st.Uid, uid)
	}
}

func TestDialUnderSudoHintNamesUser(t *testing.T) {
	sshtest.Env(t)
	aliceHome, _ := fakeSudo(t)
	signer, _ := sshtest.Key(t)
	_, otherPriv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	sshtest.KeyFile(t, filepath.Join(aliceHome, ".ssh", "id_ed25519"), otherPriv, "")

	_, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("root"), KnownHostsFile: srv.KnownHosts(t)})
	var he *tui.HintError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &he) {
		t.Fatalf("err = %v, want ErrAuthFailed with a hint", err)
	}
	want := fmt.Sprintf("no key of alice (%s) was accepted by root@127.0.0.1", filepath.Join(aliceHome, ".ssh"))
	for _, w := range []string{want, "sudo --preserve-env=SSH_AUTH_SOCK"} {
		if !strings.Contains(he.Hint, w) {
			t.Errorf("hint = %q, want it to say %q", he.Hint, w)
		}
	}
	if strings.Contains(he.Hint, "no SSH key found") {
		t.Errorf("hint = %q says no key was found, but alice has one", he.Hint)
	}
}

// Many agent keys and the right one with -i: the node gives up before the
// last. With IdentitiesOnly only -i is offered, as in OpenSSH. (x/crypto's
// server forgives MaxAuthTries key queries, OpenSSH's none: 12 here are
// what 6 are for sshd, see e2e.)
func TestDialIdentitiesOnly(t *testing.T) {
	withResolvers(t, func(t *testing.T) {
		home := sshtest.Env(t)
		signer, priv := sshtest.Key(t)
		srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
		keyring := agent.NewKeyring()
		for range 12 {
			_, p := sshtest.Key(t)
			if err := keyring.Add(agent.AddedKey{PrivateKey: p}); err != nil {
				t.Fatal(err)
			}
		}
		serveAgent(t, keyring)
		keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
		kh := srv.KnownHosts(t)
		without := writeFile(t, filepath.Join(home, "config-without"), "Host *\n  IdentitiesOnly no\n")
		with := writeFile(t, filepath.Join(home, "config-with"), "Host 127.0.0.1\n  IdentitiesOnly yes\n")

		_, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, ConfigFile: without, KnownHostsFile: kh})
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("without IdentitiesOnly: err = %v, want too many failures (the agent's keys go first)", err)
		}
		c, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, ConfigFile: with, KnownHostsFile: kh})
		if err != nil {
			t.Fatalf("with IdentitiesOnly: %v", err)
		}
		c.Close()
	})
}

// userCert signs pub as a user certificate of ca.
func userCert(t *testing.T, ca ssh.Signer, pub ssh.PublicKey) string {
	cert := &ssh.Certificate{Key: pub, CertType: ssh.UserCert, KeyId: "test", ValidPrincipals: []string{"u"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return string(ssh.MarshalAuthorizedKey(cert))
}

func TestDialUserCertificate(t *testing.T) {
	withResolvers(t, func(t *testing.T) {
		home := sshtest.Env(t)
		ca, _ := sshtest.Key(t)
		signer, priv := sshtest.Key(t)
		// Only certificates get in: the plain key is in no authorized_keys.
		srv := sshtest.Start(t, sshtest.Options{UserCA: ca.PublicKey()})
		kh := srv.KnownHosts(t)

		keyFile := sshtest.KeyFile(t, filepath.Join(home, "beside", "id"), priv, "")
		writeFile(t, keyFile+"-cert.pub", userCert(t, ca, signer.PublicKey()))
		c, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh,
			ConfigFile: writeFile(t, filepath.Join(home, "empty_config"), "")})
		if err != nil {
			t.Fatalf("with %s-cert.pub: %v", keyFile, err)
		}
		c.Close()

		other := sshtest.KeyFile(t, filepath.Join(home, "apart", "id"), priv, "")
		certFile := writeFile(t, filepath.Join(home, "certs", "my.cert"), userCert(t, ca, signer.PublicKey()))
		conf := writeFile(t, filepath.Join(home, "config"), "Host *\n  IdentityFile "+other+"\n  CertificateFile "+certFile+"\n")
		c, _, err = dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), ConfigFile: conf, KnownHostsFile: kh})
		if err != nil {
			t.Fatalf("with CertificateFile: %v", err)
		}
		c.Close()
	})
}

// hostCertSigner is the node's host key signed by ca for principal.
func hostCertSigner(t *testing.T, ca, host ssh.Signer, principal string) ssh.Signer {
	cert := &ssh.Certificate{Key: host.PublicKey(), CertType: ssh.HostCert, KeyId: "node",
		ValidPrincipals: []string{principal}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewCertSigner(cert, host)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDialHostCertAuthority(t *testing.T) {
	home := sshtest.Env(t)
	ca, _ := sshtest.Key(t)
	hostKey, _ := sshtest.Key(t)
	signer, priv := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), HostKeys: []ssh.Signer{hostCertSigner(t, ca, hostKey, "127.0.0.1")}})
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	caLine := "@cert-authority " + knownhosts.Normalize(srv.Remote("")) + " " + string(ssh.MarshalAuthorizedKey(ca.PublicKey()))

	// The CA alone, and the CA next to a stale plain key of the node (which
	// alone would pin the plain key type and hide the certificate).
	stale, _ := sshtest.Key(t)
	for name, text := range map[string]string{
		"ca only":      caLine,
		"ca and stale": knownhosts.Line([]string{srv.Remote("")}, stale.PublicKey()) + "\n" + caLine,
	} {
		t.Run(name, func(t *testing.T) {
			kh := writeFile(t, filepath.Join(t.TempDir(), "known_hosts"), text)
			c, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
			if err != nil {
				t.Fatalf("host certificate signed by a listed CA: %v", err)
			}
			c.Close()
		})
	}

	// A CA that did not sign it, and a stale plain key: changed, and the
	// hint names the plain key's line, never the CA's.
	otherCA, _ := sshtest.Key(t)
	kh := writeFile(t, filepath.Join(t.TempDir(), "known_hosts"),
		"@cert-authority "+knownhosts.Normalize(srv.Remote(""))+" "+string(ssh.MarshalAuthorizedKey(otherCA.PublicKey()))+
			knownhosts.Line([]string{srv.Remote("")}, stale.PublicKey())+"\n")
	_, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: kh})
	var he *tui.HintError
	if !errors.Is(err, ErrHostKeyChanged) || !errors.As(err, &he) {
		t.Fatalf("err = %v, want ErrHostKeyChanged with a hint", err)
	}
	if !strings.Contains(err.Error(), kh+":2") {
		b, _ := os.ReadFile(kh)
		t.Errorf("err = %q, want it to name the plain key's line %s:2 of:\n%s", err, kh, b)
	}
}

func TestDialProxyJump(t *testing.T) {
	withResolvers(t, func(t *testing.T) {
		home := sshtest.Env(t)
		signer, priv := sshtest.Key(t)
		keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
		bastion1 := sshtest.Start(t, sshtest.Options{User: "jump", Key: signer.PublicKey(), Forward: true})
		bastion2 := sshtest.Start(t, sshtest.Options{User: "jump2", Key: signer.PublicKey(), Forward: true})
		node := sshtest.Start(t, sshtest.Options{User: "root", Key: signer.PublicKey()})
		kh := knownHostsFor(t, bastion1, bastion2, node)
		first := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(bastion1.Port))
		empty := writeFile(t, filepath.Join(home, "empty_config"), "")

		cases := []struct {
			name      string
			jump      string
			config    string
			wantFirst netip.AddrPort
		}{
			{"-J", bastion1.Remote("jump"), empty, first},
			{"-J chain", bastion1.Remote("jump") + "," + bastion2.Remote("jump2"), empty, first},
			{"ssh_config", "", writeFile(t, filepath.Join(home, "config"),
				fmt.Sprintf("Host node\n  HostName 127.0.0.1\n  Port %d\n  User root\n  ProxyJump bastion\nHost bastion\n  HostName 127.0.0.1\n  Port %d\n  User jump\n",
					node.Port, bastion1.Port)), first},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				remote := node.Remote("root")
				if tc.jump == "" {
					remote = "node"
				}
				c, target, err := dial(sshtest.Ctx(t), Config{Remote: remote, ProxyJump: tc.jump, Identities: []string{keyFile},
					KnownHostsFile: kh, ConfigFile: tc.config})
				if err != nil {
					t.Fatalf("Dial through %s: %v", tc.name, err)
				}
				c.Close()
				if target.Addr != tc.wantFirst || target.Port != node.Port || target.User != "root" || target.Direct {
					t.Errorf("target = %+v, want the node as root with Addr %v (the first hop, for the firewall), not Direct", target, tc.wantFirst)
				}
			})
		}
	})
}

func TestDialProxyCommand(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	withResolvers(t, func(t *testing.T) {
		home := sshtest.Env(t)
		signer, priv := sshtest.Key(t)
		keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
		node := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
		conf := writeFile(t, filepath.Join(home, "config"),
			"Host node\n  HostName 127.0.0.1\n  ProxyCommand bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3'\n")
		c, target, err := dial(sshtest.Ctx(t), Config{Remote: fmt.Sprintf("u@node:%d", node.Port), Identities: []string{keyFile},
			KnownHostsFile: node.KnownHosts(t), ConfigFile: conf})
		if err != nil {
			t.Fatalf("Dial through ProxyCommand: %v", err)
		}
		c.Close()
		if target.Addr.IsValid() {
			t.Errorf("target.Addr = %v, want none: the command makes its own connections", target.Addr)
		}
	})
}

func TestDialPasswordAskpass(t *testing.T) {
	home := sshtest.Env(t)
	srv := sshtest.Start(t, sshtest.Options{User: "carol", Password: "s3cret"})
	script := writeFile(t, filepath.Join(home, "askpass"), "#!/bin/sh\necho \"$1\" >> "+home+"/asked\necho s3cret\n")
	os.Chmod(script, 0o700)
	t.Setenv("SSH_ASKPASS", script)
	t.Setenv("SSH_ASKPASS_REQUIRE", "force")
	t.Setenv("DISPLAY", "")

	c, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("carol"), KnownHostsFile: srv.KnownHosts(t),
		Prompt: func(string) ([]byte, error) {
			t.Error("asked on the terminal with SSH_ASKPASS_REQUIRE=force")
			return nil, tui.ErrNoTerminal
		}})
	if err != nil {
		t.Fatalf("Dial with a password from SSH_ASKPASS: %v", err)
	}
	c.Close()
	asked, _ := os.ReadFile(filepath.Join(home, "asked"))
	if !strings.Contains(string(asked), "carol@127.0.0.1") {
		t.Errorf("askpass was asked %q, want a prompt naming carol@127.0.0.1", asked)
	}
}

func TestDialWrongPasswordHint(t *testing.T) {
	sshtest.Env(t)
	srv := sshtest.Start(t, sshtest.Options{User: "carol", Password: "s3cret"})
	_, _, err := dial(sshtest.Ctx(t), Config{Remote: srv.Remote("carol"), KnownHostsFile: srv.KnownHosts(t),
		Prompt: func(string) ([]byte, error) { return []byte("wrong"), nil }})
	var he *tui.HintError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &he) || !strings.Contains(he.Hint, "was refused") {
		t.Fatalf("err = %v (%+v), want ErrAuthFailed saying the password was refused", err, he)
	}
	// Someone logging in with a password has no key to miss: the hint is about the password, and names the user.
	if strings.Contains(he.Hint, "no SSH key found") || !strings.Contains(he.Hint, "password for carol@") {
		t.Errorf("hint %q, want it to say the password for carol@... was refused, not that no key was found", he.Hint)
	}
}

func TestReadPassAskpassRules(t *testing.T) {
	dir := t.TempDir()
	script := writeFile(t, filepath.Join(dir, "askpass"), "#!/bin/sh\necho from-askpass\n")
	os.Chmod(script, 0o700)
	t.Setenv("SSH_ASKPASS", script)
	cases := []struct {
		require, display string
		terminal         bool
		want             string
	}{
		{"force", "", true, "from-askpass"},
		{"prefer", ":0", true, "from-askpass"},
		{"prefer", "", true, "from-tty"},
		{"never", ":0", false, "no terminal"},
		{"", ":0", true, "from-tty"},
		{"", ":0", false, "from-askpass"},
		{"", "", false, "no terminal"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/display=%q/tty=%v", tc.require, tc.display, tc.terminal), func(t *testing.T) {
			t.Setenv("SSH_ASKPASS_REQUIRE", tc.require)
			t.Setenv("DISPLAY", tc.display)
			t.Setenv("WAYLAND_DISPLAY", "")
			tty := func(_ context.Context, _ string) ([]byte, error) {
				if !tc.terminal {
					return nil, tui.ErrNoTerminal
				}
				return []byte("from-tty"), nil
			}
			b, err := readPass(t.Context(), localUser{}, "pw: ", tty)
			got := string(b)
			if err != nil {
				got = err.Error()
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// ssh -G and the parser resolve the same configuration alike, Match host
// included; the parser has no other Match and says so.
func TestResolveAgrees(t *testing.T) {
	home := sshtest.Env(t)
	kh := filepath.Join(home, "kh1")
	conf := writeFile(t, filepath.Join(home, "config"), fmt.Sprintf(`Host node
  HostName 127.0.0.1
  Port 2222
  IdentityFile ~/.ssh/node_key
  IdentitiesOnly yes
  CertificateFile ~/.ssh/node_key-cert.pub
  ProxyJump jump@bastion:2200
  UserKnownHostsFile %s %s2
  StrictHostKeyChecking accept-new
  HostKeyAlias nodealias
  IdentityAgent none
Match host 10.9.9.9
  User admin
Host *
  User nobody
`, kh, kh))
	type result struct {
		rc  sshResolved
		err error
	}
	for _, remote := range []string{"node", "10.9.9.9", "other", "bob@10.9.9.9:99"} {
		got := map[string]sshResolved{}
		withResolvers(t, func(t *testing.T) {
			rc, err := sshResolve(Config{Remote: remote, ConfigFile: conf}, remote, "", discard())
			if err != nil {
				t.Fatalf("resolving %s: %v", remote, err)
			}
			rc.local, rc.source = localUser{}, ""
			got[t.Name()] = *rc
		})
		var prev *sshResolved
		for name, rc := range got {
			if prev != nil && fmt.Sprintf("%+v", *prev) != fmt.Sprintf("%+v", rc) {
				t.Errorf("%s: %s resolved\n%+v\nthe other\n%+v", remote, name, rc, *prev)
			}
			prev = &rc
		}
	}
	rc, err := sshResolve(Config{Remote: "10.9.9.9", ConfigFile: conf}, "10.9.9.9", "", discard())
	if err != nil || rc.user != "admin" {
		t.Errorf("Match host picked user %q (err %v), want admin", rc.user, err)
	}

	withResolvers(t, func(t *testing.T) {
		rc, err := sshResolve(Config{Remote: "node", ConfigFile: conf}, "node", "", discard())
		if err != nil {
			t.Fatal(err)
		}
		want := sshResolved{user: "nobody", host: "127.0.0.1", port: 2222, alias: "node",
			identities:   []sshIdentity{{path: filepath.Join(home, ".ssh", "node_key")}},
			certificates: []string{filepath.Join(home, ".ssh", "node_key-cert.pub")}, identitiesOnly: true,
			proxyJump: "jump@bastion:2200", knownHosts: []string{kh, kh + "2", "/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"},
			hostKeyAlias: "nodealias", strict: "accept-new"}
		rc.local, rc.source = localUser{}, ""
		if fmt.Sprintf("%+v", *rc) != fmt.Sprintf("%+v", want) {
			t.Errorf("resolved\n%+v\nwant\n%+v", *rc, want)
		}
	})

	t.Run("parser/Match user", func(t *testing.T) {
		sshProgram = ""
		bad := writeFile(t, filepath.Join(home, "config-match-user"), "Match user root\n  Port 2\n")
		_, err := sshResolve(Config{Remote: "x", ConfigFile: bad}, "x", "", discard())
		var he *tui.HintError
		if !errors.As(err, &he) || !strings.Contains(he.Hint, "ssh -G") {
			t.Errorf("err = %v, want a hint to install ssh", err)
		}
	})
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
