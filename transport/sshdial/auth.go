package sshdial

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/k8stunnel/k8stunnel/tui"
)

// sshAuth offers keys in OpenSSH's order (sshconnect2.c pubkey_prepare):
// agent keys first, in the agent's order, with IdentitiesOnly only those
// that are also identity files; then the identity files the agent lacks.
// A key with a certificate (CertificateFile, or <key>-cert.pub beside it)
// offers the certificate first. All keys go through one publickey method,
// because x/crypto tries each method name once. Then keyboard-interactive
// and password, as OpenSSH's PreferredAuthentications.
type sshAuth struct {
	ctx        context.Context
	log        *slog.Logger
	rc         *sshResolved
	identities []sshIdentity
	prompt     func(ctx context.Context, prompt string) ([]byte, error)
	cache      *keyCache

	conn      net.Conn
	agent     net.Conn
	offered   []string
	keysFound bool // any key at all, offered or not
	passwords int  // password or keyboard-interactive answers given
	signErr   error
}

func (a *sshAuth) close() {
	if a.agent != nil {
		a.agent.Close()
	}
}

// resumeDeadline (re)arms the handshake deadline; it is lifted while a human
// types a passphrase.
func (a *sshAuth) resumeDeadline() {
	d := time.Now().Add(sshHandshakeTimeout)
	if cd, ok := a.ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	a.conn.SetDeadline(d)
}

// pauseDeadline lifts the deadline while someone types; call the result after.
func (a *sshAuth) pauseDeadline() func() {
	if a.conn == nil {
		return func() {}
	}
	a.conn.SetDeadline(time.Time{})
	return a.resumeDeadline
}

func (a *sshAuth) methods() []ssh.AuthMethod {
	return []ssh.AuthMethod{
		ssh.PublicKeysCallback(a.signers),
		ssh.RetryableAuthMethod(ssh.KeyboardInteractive(a.keyboardInteractive), sshPasswordTries),
		ssh.RetryableAuthMethod(ssh.PasswordCallback(a.password), sshPasswordTries),
	}
}

func (a *sshAuth) password() (string, error) {
	defer a.pauseDeadline()()
	b, err := a.ask(fmt.Sprintf("%s@%s's password: ", a.rc.user, a.rc.host), false)
	if err != nil {
		return "", err
	}
	a.passwords++
	return string(b), nil
}

func (a *sshAuth) keyboardInteractive(name, instruction string, questions []string, echos []bool) ([]string, error) {
	if len(questions) == 0 {
		return nil, nil
	}
	defer a.pauseDeadline()()
	answers := make([]string, len(questions))
	for i, q := range questions {
		if i == 0 && instruction != "" {
			q = instruction + "\n" + q
		}
		// The node's words reach a terminal or a program: no control characters.
		b, err := a.ask(printableText(fmt.Sprintf("(%s@%s) %s", a.rc.user, a.rc.host, q)), echos[i])
		if err != nil {
			return nil, err
		}
		answers[i] = string(b)
	}
	a.passwords++
	return answers, nil
}

// ask reads an answer the way OpenSSH's read_passphrase does.
func (a *sshAuth) ask(prompt string, echo bool) ([]byte, error) {
	return readPass(a.ctx, a.rc.local, prompt, a.prompt)
}

// sshKey is one key we could offer.
type sshKey struct {
	signer ssh.Signer
	name   string
}

func (a *sshAuth) signers() ([]ssh.Signer, error) {
	files := a.fileKeys()
	var agentKeys []sshKey
	if a.rc.agent != "" && a.agent == nil {
		agentKeys = a.agentKeys(a.rc.agent)
	}
	a.keysFound = len(files) > 0 || len(agentKeys) > 0

	var keys []sshKey
	inFiles := func(pub ssh.PublicKey) int {
		for i, f := range files {
			if f.signer != nil && keyEqual(f.signer.PublicKey(), pub) {
				return i
			}
		}
		return -1
	}
	for _, k := range agentKeys {
		if i := inFiles(k.signer.PublicKey()); i >= 0 {
			files[i].signer = nil // the agent's copy signs without a passphrase
		} else if a.rc.identitiesOnly {
			continue
		}
		keys = append(keys, k)
	}
	for _, f := range files {
		if f.signer != nil {
			keys = append(keys, f)
		}
	}

	certs := a.certificates()
	var out []ssh.Signer
	have := map[string]bool{}
	add := func(s ssh.Signer, name string) {
		k := string(s.PublicKey().Marshal())
		if !have[k] {
			have[k] = true
			out = append(out, s)
			a.offered = append(a.offered, name)
		}
	}
	for _, k := range keys {
		for _, c := range certs {
			if keyEqual(c.Key, k.signer.PublicKey()) {
				if cs, err := ssh.NewCertSigner(c, k.signer); err == nil {
					add(cs, k.name+" (certificate)")
				}
			}
		}
		add(k.signer, k.name)
	}
	return out, nil
}

func keyEqual(a, b ssh.PublicKey) bool { return string(a.Marshal()) == string(b.Marshal()) }

func (a *sshAuth) agentKeys(sock string) []sshKey {
	var d net.Dialer
	c, err := d.DialContext(a.ctx, "unix", sock)
	if err != nil {
		a.log.Debug("ssh-agent not reachable", "socket", sock, "err", err)
		return nil
	}
	a.agent = c
	ss, err := agent.NewClient(c).Signers()
	if err != nil {
		a.log.Debug("listing ssh-agent keys", "err", err)
	}
	var keys []sshKey
	for _, s := range ss {
		keys = append(keys, sshKey{s, "agent:" + ssh.FingerprintSHA256(s.PublicKey())})
	}
	return keys
}

// fileKeys loads the identity files that exist, in order.
func (a *sshAuth) fileKeys() []sshKey {
	var keys []sshKey
	for _, id := range a.identities {
		data, err := os.ReadFile(id.path)
		if err != nil {
			switch {
			case errors.Is(err, os.ErrNotExist) && id.explicit:
				a.log.Warn("identity file not found", "file", id.path)
			case !errors.Is(err, os.ErrNotExist):
				a.log.Debug("skipping identity file", "file", id.path, "err", err)
			}
			continue
		}
		if s := a.cache.get(data); s != nil {
			keys = append(keys, sshKey{s, id.path})
			continue
		}
		s, err := ssh.ParsePrivateKey(data)
		var missing *ssh.PassphraseMissingError
		switch {
		case err == nil:
			keys = append(keys, sshKey{s, id.path})
		case errors.As(err, &missing):
			pub := missing.PublicKey
			if pub == nil {
				// Old PEM keys hide their public half; OpenSSH keeps it next door.
				if b, err := os.ReadFile(id.path + ".pub"); err == nil {
					pub, _, _, _, _ = ssh.ParseAuthorizedKey(b)
				}
			}
			if pub != nil {
				// Asked for only once the node says it would accept this key.
				keys = append(keys, sshKey{&sshLazySigner{a: a, path: id.path, data: data, pub: pub}, id.path})
				continue
			}
			s, err := a.decrypt(id.path, data)
			if err != nil {
				a.log.Warn("skipping passphrase-protected identity file", "file", id.path, "err", err)
				continue
			}
			keys = append(keys, sshKey{s, id.path})
		default:
			a.log.Debug("skipping identity file", "file", id.path, "err", err)
		}
	}
	return keys
}

// certificates reads CertificateFile and every <identity>-cert.pub there is.
func (a *sshAuth) certificates() []*ssh.Certificate {
	files := append([]string(nil), a.rc.certificates...)
	for _, id := range a.identities {
		files = append(files, id.path+"-cert.pub")
	}
	var certs []*ssh.Certificate
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				a.log.Debug("skipping certificate file", "file", f, "err", err)
			}
			continue
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
		c, ok := pub.(*ssh.Certificate)
		if err != nil || !ok {
			a.log.Warn("not an SSH certificate", "file", f)
			continue
		}
		certs = append(certs, c)
	}
	return certs
}

// printableText escapes control characters but keeps line breaks.
func printableText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = tui.Printable(l)
	}
	return strings.Join(lines, "\n")
}

// sshAuthHint says what was tried, for whom, and what to do about it.
func sshAuthHint(rc *sshResolved, a *sshAuth) string {
	lu := rc.local
	var b strings.Builder
	switch {
	case !a.keysFound && a.passwords > 0:
		// Someone who logs in with a password is not missing a key.
		fmt.Fprintf(&b, "the password for %s@%s was refused; check it, or log in with a key (none tried: no ssh-agent keys, no -i, no IdentityFile, no key in %s)",
			rc.user, rc.host, lu.sshDir())
		if lu.sudo && lu.agent == "" {
			b.WriteString("; sudo dropped SSH_AUTH_SOCK, keep your agent with: sudo --preserve-env=SSH_AUTH_SOCK k8stunnel ...")
		}
		return b.String()
	case !a.keysFound:
		fmt.Fprintf(&b, "no SSH key found for %s (no ssh-agent keys, no -i, no IdentityFile, no key in %s)", lu.name, lu.sshDir())
	default:
		fmt.Fprintf(&b, "no key of %s (%s) was accepted by %s@%s", lu.name, lu.sshDir(), rc.user, rc.host)
		if len(a.offered) > 0 {
			b.WriteString(" (offered: " + strings.Join(a.offered, ", ") + ")")
		}
		if a.passwords > 0 {
			b.WriteString("; the password was refused too")
		}
	}
	if lu.sudo && lu.agent == "" {
		b.WriteString("; sudo dropped SSH_AUTH_SOCK, keep your agent with: sudo --preserve-env=SSH_AUTH_SOCK k8stunnel ...")
	} else {
		b.WriteString("; check -i, your ssh-agent, and that the key is in the node's authorized_keys")
	}
	return b.String()
}
