// Package sshdial is the pure-Go SSH dialer: it reads ssh_config and
// known_hosts the way OpenSSH would, offers agent and file keys, asks for
// passphrases through tui, and keeps the connection proven alive. It knows
// nothing of helpers or tunnels.
package sshdial

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/tui"
)

// Errors of the SSH dialer. They reach the user wrapped, usually inside a
// tui.HintError; callers tell them apart with errors.Is. The host key ones are
// transport.ErrPermanent: someone else may be answering for the node, and a
// reconnect must never retry into that.
var (
	ErrUnknownHostKey   = transport.Permanent("unknown host key")
	ErrHostKeyChanged   = transport.Permanent("host key changed")
	ErrAuthFailed       = errors.New("ssh authentication failed")
	ErrKeepaliveTimeout = errors.New("no answer from the node")
)

// Config says where and how to connect; Dial fills the gaps from ssh_config
// the way OpenSSH would.
type Config struct {
	Remote         string   // [user@]host[:port], host may be an ssh_config Host alias
	Identities     []string // -i files (repeatable)
	ConfigFile     string   // -F; "" = ~/.ssh/config (missing file is fine)
	KnownHostsFile string   // --known-hosts; "" = UserKnownHostsFile from ssh_config or ~/.ssh/known_hosts
	Log            *slog.Logger
	// Prompt asks for a key's passphrase. nil asks on /dev/tty, but only when
	// stdin is a terminal and we are in its foreground process group.
	Prompt func(prompt string) ([]byte, error)
	// ProxyJump is -J: jump hosts [user@]host[:port], comma-separated, as
	// ssh's -J (it overrides ProxyJump and ProxyCommand from ssh_config).
	ProxyJump string
}

// Target is what Dial resolved: for logging, and so the firewall can exclude
// the server's own address from redirection.
type Target struct {
	User, Host string
	Port       int
	Addr       netip.AddrPort // the address actually connected to: the first hop; unset with a ProxyCommand
	// Direct says Addr is the node's own (no jump host).
	Direct bool
}

const (
	sshConnectTimeout   = 10 * time.Second
	sshHandshakeTimeout = 10 * time.Second
	sshPassphraseTries  = 3
	sshPasswordTries    = 3
)

// sshCiphers puts AES-GCM first: it has assembly on amd64 and arm64, while
// chacha20-poly1305 in x/crypto runs at about half the speed.
var sshCiphers = []string{
	"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
	"aes128-ctr", "aes192-ctr", "aes256-ctr",
}

// Dialer connects to one node, again on every reconnect.
type Dialer struct {
	cfg Config
	log *slog.Logger
	// Decrypted keys are kept for the life of the Dialer: Dial runs again on
	// every reconnect, when nobody may be at the terminal any more.
	decrypted keyCache
}

// New checks cfg; nothing is read or dialed until Dial.
func New(cfg Config) (*Dialer, error) {
	if cfg.Remote == "" {
		return nil, errors.New("no remote given")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.Identities = slices.Clone(cfg.Identities)
	return &Dialer{cfg: cfg, log: cfg.Log}, nil
}

// Dial connects and authenticates to the node named by Config.Remote,
// through its ProxyJump hosts or ProxyCommand. ctx bounds the connects and
// the SSH handshakes, not the returned client.
func (dl *Dialer) Dial(ctx context.Context) (*ssh.Client, Target, error) {
	rc, err := sshResolve(dl.cfg, dl.cfg.Remote, dl.cfg.ProxyJump, dl.log)
	if err != nil {
		return nil, Target{}, err
	}
	target := Target{User: rc.user, Host: rc.host, Port: rc.port, Direct: rc.proxyJump == "" && rc.proxyCommand == ""}
	c, first, err := dl.login(ctx, rc, 0)
	target.Addr = first
	return c, target, err
}

// login connects to rc and authenticates; first is the address the laptop's
// own TCP connection goes to (the first hop), unset for a ProxyCommand.
func (dl *Dialer) login(ctx context.Context, rc *sshResolved, depth int) (_ *ssh.Client, first netip.AddrPort, _ error) {
	cfg, log := dl.cfg, dl.log
	hostport := net.JoinHostPort(rc.host, strconv.Itoa(rc.port))
	hk, err := sshNewHostKeys(rc, hostport, log)
	if err != nil {
		return nil, first, err
	}
	auth := &sshAuth{ctx: ctx, log: log, rc: rc, identities: rc.identities, prompt: tui.Password, cache: &dl.decrypted}
	if cfg.Prompt != nil {
		auth.prompt = func(ctx context.Context, p string) ([]byte, error) { return tui.Ask(ctx, cfg.Prompt, p) }
	}
	defer auth.close()

	conn, first, err := dl.connect(ctx, rc, depth)
	if err != nil {
		return nil, first, err
	}

	// ClientConfig.Timeout covers only a dial we do not use; a server that
	// accepts and then says nothing would hang us forever without a deadline.
	auth.conn = conn
	auth.resumeDeadline()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	ccfg := &ssh.ClientConfig{
		Config:            ssh.Config{Ciphers: sshCiphers},
		User:              rc.user,
		Auth:              auth.methods(),
		HostKeyCallback:   hk.check,
		HostKeyAlgorithms: hk.algorithms,
	}
	sc, chans, reqs, err := ssh.NewClientConn(packetConn(conn), hk.addr, ccfg)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		conn.Close()
		return nil, first, fmt.Errorf("ssh handshake with %s: %w", rc.host, context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, first, sshHandshakeError(rc, err, hk, auth)
	}
	conn.SetDeadline(time.Time{})
	log.Debug("ssh connected", "user", rc.user, "host", rc.host, "first_hop", first, "server", string(sc.ServerVersion()))
	return ssh.NewClient(sc, chans, reqs), first, nil
}

// sshDialCause drops the "dial tcp 1.2.3.4:22:" prefix we are about to say
// better ourselves, keeping the error chain below it.
func sshDialCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) && sc.Err != nil {
		err = sc.Err
	}
	return err
}

func sshHandshakeError(rc *sshResolved, err error, hk *sshHostKeys, auth *sshAuth) error {
	host := rc.host
	if hk.err != nil {
		return hk.err
	}
	if auth.signErr != nil {
		return fmt.Errorf("ssh handshake with %s: %w", host, auth.signErr)
	}
	// NewClientConn always adds "ssh: handshake failed:"; we say that already.
	if inner := errors.Unwrap(err); inner != nil {
		err = inner
	}
	var neg *ssh.AlgorithmNegotiationError
	if errors.As(err, &neg) && neg.What == "host key" && len(hk.algorithms) > 0 {
		// golang/go#29286 the other way round: we only offer the key types
		// known_hosts has for this host, and the node has none of them.
		return &tui.HintError{
			Err: fmt.Errorf("%w for %s: known hosts has %s keys for it, the node offers only %s",
				ErrHostKeyChanged, hk.name, strings.Join(hk.algorithms, ", "), strings.Join(neg.RequestedAlgorithms, ", ")),
			Hint: "if the node was reinstalled, remove the old key with: ssh-keygen -R " + tui.Quote(hk.name) + " -f " + tui.Quote(hk.writeFile),
		}
	}
	var op *net.OpError
	if hk.passed && !errors.Is(err, io.EOF) && !errors.As(err, &op) {
		return &tui.HintError{Err: sshAuthError{fmt.Errorf("ssh login as %s@%s failed: %w", rc.user, host, err)}, Hint: sshAuthHint(rc, auth)}
	}
	return fmt.Errorf("ssh handshake with %s: %w", host, err)
}

// sshAuthError marks an authentication failure for errors.Is(err, ErrAuthFailed)
// while keeping the library's message.
type sshAuthError struct{ error }

func (e sshAuthError) Unwrap() error        { return e.error }
func (e sshAuthError) Is(target error) bool { return target == ErrAuthFailed }

// sshParseRemote splits [user@]host[:port]; host may be bracketed (with or without a port) or a bare IPv6 address.
func sshParseRemote(remote string) (user, host string, port int, err error) {
	if remote == "" {
		return "", "", 0, errors.New("no remote host given")
	}
	host = remote
	if i := strings.LastIndex(host, "@"); i >= 0 {
		user, host = host[:i], host[i+1:]
	}
	// [host] without a port: how ssh -G prints a ProxyJump address, and how ssh takes an IPv6 one.
	if inner, ok := strings.CutSuffix(strings.TrimPrefix(host, "["), "]"); ok && strings.HasPrefix(host, "[") && !strings.ContainsAny(inner, "[]") {
		host = inner
	} else if strings.HasPrefix(host, "[") || strings.Count(host, ":") == 1 {
		h, p, err := net.SplitHostPort(host)
		if err != nil {
			return "", "", 0, fmt.Errorf("parsing remote %q: %w", remote, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", "", 0, fmt.Errorf("parsing remote %q: bad port %q", remote, p)
		}
		host, port = h, n
	}
	if host == "" {
		return "", "", 0, fmt.Errorf("parsing remote %q: no host", remote)
	}
	return user, host, port, nil
}

// sshHostKeys verifies the node's host key against known_hosts and remembers
// what went wrong, so Dial can report that instead of the library's wrapping.
type sshHostKeys struct {
	log        *slog.Logger
	db         ssh.HostKeyCallback
	strict     string
	name       string // the host as known_hosts spells it
	writeFile  string
	algorithms []string
	addr       string          // what the handshake checks: host:port, or HostKeyAlias
	ca         map[string]bool // the @cert-authority lines, see sshCALines
	local      localUser

	passed bool
	err    error
}

func sshNewHostKeys(rc *sshResolved, hostport string, log *slog.Logger) (*sshHostKeys, error) {
	var files []string
	for _, f := range rc.knownHosts {
		fi, err := os.Stat(f)
		if err != nil {
			continue
		}
		if err := rc.local.checkOwner(fi); err != nil {
			return nil, fmt.Errorf("refusing known hosts file %s: %w", f, err)
		}
		files = append(files, f)
	}
	db, err := knownhosts.New(files...)
	if err != nil {
		return nil, fmt.Errorf("reading known hosts: %w", err)
	}
	if rc.hostKeyAlias != "" {
		hostport = net.JoinHostPort(rc.hostKeyAlias, "22")
	}
	hk := &sshHostKeys{
		log:       log,
		db:        db,
		strict:    rc.strict,
		name:      knownhosts.Normalize(hostport),
		writeFile: rc.knownHosts[0],
		addr:      hostport,
		local:     rc.local,
	}
	hk.ca = sshCALines(files)
	hk.algorithms = sshKnownAlgorithms(db, hostport, hk.ca)
	if len(hk.algorithms) > 0 && len(hk.ca) > 0 {
		// Pinning the plain types would hide the node's certificate.
		hk.algorithms = append(sshCertAlgorithms(), hk.algorithms...)
	}
	return hk, nil
}

// sshProbeKey matches no real key, so checking it makes knownhosts list every
// key it holds for a host in KeyError.Want (with its own matching of hashed
// names and wildcards, which a hand-written scan would get wrong).
type sshProbeKey struct{}

func (sshProbeKey) Type() string                        { return "k8stunnel-probe" }
func (sshProbeKey) Marshal() []byte                     { return []byte("k8stunnel-probe") }
func (sshProbeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key") }

// sshKnownAlgorithms returns the host key algorithms for the key types
// known_hosts has for hostport, or nil (library defaults) for an unknown host.
// Without it the node may offer another type than the one we know and look
// like a changed key (golang/go#29286).
func sshKnownAlgorithms(db ssh.HostKeyCallback, hostport string, ca map[string]bool) []string {
	var ke *knownhosts.KeyError
	if err := db(hostport, &net.TCPAddr{IP: net.IPv4zero}, sshProbeKey{}); !errors.As(err, &ke) {
		return nil
	}
	supported := ssh.SupportedAlgorithms().HostKeys
	var algos []string
	for _, k := range sshHostKeysOnly(ke.Want, ca) {
		want := []string{k.Key.Type()}
		if k.Key.Type() == ssh.KeyAlgoRSA {
			want = []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
		}
		for _, a := range want {
			if slices.Contains(supported, a) && !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	return algos
}

func (hk *sshHostKeys) check(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := hk.verify(hostname, remote, key)
	hk.passed = err == nil
	hk.err = err
	return err
}

func (hk *sshHostKeys) verify(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := hk.db(hostname, remote, key)
	if err == nil {
		return nil
	}
	if cert, ok := key.(*ssh.Certificate); ok {
		// Signed by no CA we trust: like ssh, judge its plain key instead.
		hk.log.Debug("host certificate not trusted; checking its key", "host", hk.name, "err", err)
		key = cert.Key
		if err = hk.db(hostname, remote, key); err == nil {
			return nil
		}
	}
	fp := key.Type() + " " + ssh.FingerprintSHA256(key)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		// Revoked keys end up here; not even "no" lets them through.
		return fmt.Errorf("checking host key of %s: %w", hk.name, err)
	}
	want := sshHostKeysOnly(ke.Want, hk.ca)
	if len(want) == 0 {
		switch hk.strict {
		case "no":
			hk.log.Warn("not verifying the node's host key (StrictHostKeyChecking no)", "host", hk.name, "key", fp)
			return nil
		case "accept-new":
			if err := sshAppendKnownHost(hk.local, hk.writeFile, hostname, key); err != nil {
				return fmt.Errorf("adding host key of %s to %s: %w", hk.name, hk.writeFile, err)
			}
			hk.log.Info("added the node's host key to known hosts", "host", hk.name, "key", fp, "file", hk.writeFile)
			return nil
		}
		return &tui.HintError{
			Err: fmt.Errorf("%w for %s (the node offers %s)", ErrUnknownHostKey, hk.name, fp),
			Hint: "add it with: " + sshKeyscan(hostname) + " >> " + tui.Quote(hk.writeFile) +
				" (or set StrictHostKeyChecking accept-new)",
		}
	}
	// A changed key is refused even with StrictHostKeyChecking no: OpenSSH
	// then refuses forwarding, and forwarding is all this connection does.
	old := want[0]
	for _, w := range want {
		if w.Key.Type() == key.Type() {
			old = w
			break
		}
	}
	return &tui.HintError{
		Err: fmt.Errorf("%w for %s: the node offers %s, but %s:%d has a different key",
			ErrHostKeyChanged, hk.name, fp, old.Filename, old.Line),
		Hint: "if the node was reinstalled, remove the old key with: ssh-keygen -R " + tui.Quote(hk.name) + " -f " + tui.Quote(old.Filename),
	}
}

func sshKeyscan(hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "ssh-keyscan " + tui.Quote(hostport)
	}
	if port == "22" {
		return "ssh-keyscan " + tui.Quote(host)
	}
	return "ssh-keyscan -p " + port + " " + tui.Quote(host)
}

func sshAppendKnownHost(lu localUser, file, hostport string, key ssh.PublicKey) error {
	dir := filepath.Dir(file)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := lu.give(dir); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if err := lu.give(file); err != nil {
		f.Close()
		return err
	}
	line := knownhosts.Line([]string{hostport}, key) + "\n"
	// A last line without its newline would swallow ours.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// keyCache holds decrypted keys by the hash of their file's contents.
type keyCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]ssh.Signer
}

func (c *keyCache) get(data []byte) ssh.Signer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[sha256.Sum256(data)]
}

func (c *keyCache) put(data []byte, s ssh.Signer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[[sha256.Size]byte]ssh.Signer{}
	}
	c.m[sha256.Sum256(data)] = s
}

func (a *sshAuth) decrypt(path string, data []byte) (ssh.Signer, error) {
	if s := a.cache.get(data); s != nil {
		return s, nil
	}
	// The deadline would otherwise expire while someone is typing.
	defer a.pauseDeadline()()
	for range sshPassphraseTries {
		pass, err := a.ask(fmt.Sprintf("Enter passphrase for key '%s': ", path), false)
		if errors.Is(err, tui.ErrNoTerminal) {
			return nil, &tui.HintError{
				Err:  fmt.Errorf("key %s is passphrase-protected and there is %w", path, err),
				Hint: "load it into ssh-agent: ssh-add " + tui.Quote(path),
			}
		}
		if err != nil {
			return nil, fmt.Errorf("reading passphrase for %s: %w", path, err)
		}
		s, err := ssh.ParsePrivateKeyWithPassphrase(data, pass)
		clear(pass)
		if errors.Is(err, x509.IncorrectPasswordError) {
			a.log.Warn("wrong passphrase", "file", path)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("decrypting %s: %w", path, err)
		}
		a.cache.put(data, s)
		return s, nil
	}
	return nil, fmt.Errorf("wrong passphrase for %s, %d times", path, sshPassphraseTries)
}

// sshLazySigner stands in for a passphrase-protected key until the node has
// said it would accept it, so we never ask for a passphrase in vain.
type sshLazySigner struct {
	a    *sshAuth
	path string
	data []byte
	pub  ssh.PublicKey
}

func (l *sshLazySigner) PublicKey() ssh.PublicKey { return l.pub }

func (l *sshLazySigner) Algorithms() []string {
	if l.pub.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{l.pub.Type()}
}

func (l *sshLazySigner) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	return l.SignWithAlgorithm(rand, data, "")
}

func (l *sshLazySigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	s, err := l.a.decrypt(l.path, l.data)
	if err != nil {
		// x/crypto replaces this with a generic message; Dial reports ours.
		if l.a.signErr == nil {
			l.a.signErr = err
		}
		return nil, err
	}
	if as, ok := s.(ssh.AlgorithmSigner); ok && algorithm != "" {
		return as.SignWithAlgorithm(rand, data, algorithm)
	}
	return s.Sign(rand, data)
}
