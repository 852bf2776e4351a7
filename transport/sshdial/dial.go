// Package sshdial is the pure-Go SSH dialer: it reads ssh_config and
// known_hosts the way OpenSSH would, offers agent and file keys, asks for
// passphrases through tui, and keeps the connection proven alive. It knows
// nothing of helpers or tunnels.
package sshdial

import (
	"bufio"
	"bytes"
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
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kevinburke/ssh_config"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
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
}

// Target is what Dial resolved: for logging, and so the firewall can exclude
// the server's own address from redirection.
type Target struct {
	User, Host string
	Port       int
	Addr       netip.AddrPort // the address actually connected to
}

const (
	sshConnectTimeout   = 10 * time.Second
	sshHandshakeTimeout = 10 * time.Second
	sshPassphraseTries  = 3
)

// sshCiphers puts AES-GCM first: it has assembly on amd64 and arm64, while
// chacha20-poly1305 in x/crypto runs at about half the speed.
var sshCiphers = []string{
	"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
	"aes128-ctr", "aes192-ctr", "aes256-ctr",
}

var sshDefaultIdentities = []string{"~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa"}

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

// Dial connects and authenticates to the node named by Config.Remote.
// ctx bounds the TCP connect and the SSH handshake, not the returned client.
func (dl *Dialer) Dial(ctx context.Context) (*ssh.Client, Target, error) {
	cfg, log := dl.cfg, dl.log
	rc, err := sshResolve(cfg, log)
	if err != nil {
		return nil, Target{}, err
	}
	target := Target{User: rc.user, Host: rc.host, Port: rc.port}
	hostport := net.JoinHostPort(rc.host, strconv.Itoa(rc.port))

	hk, err := sshNewHostKeys(rc, hostport, log)
	if err != nil {
		return nil, target, err
	}
	auth := &sshAuth{ctx: ctx, log: log, identities: rc.identities, prompt: tui.Password, cache: &dl.decrypted}
	if cfg.Prompt != nil {
		auth.prompt = func(ctx context.Context, p string) ([]byte, error) { return tui.Ask(ctx, cfg.Prompt, p) }
	}
	defer auth.close()

	d := net.Dialer{
		Timeout:         sshConnectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4},
	}
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, target, fmt.Errorf("connecting to %s: %w", hostport, sshDialCause(err))
	}
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		target.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}

	// ClientConfig.Timeout covers only a dial we do not use; a server that
	// accepts and then says nothing would hang us forever without a deadline.
	auth.conn = conn
	auth.resumeDeadline()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	ccfg := &ssh.ClientConfig{
		Config:            ssh.Config{Ciphers: sshCiphers},
		User:              rc.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeysCallback(auth.signers)},
		HostKeyCallback:   hk.check,
		HostKeyAlgorithms: hk.algorithms,
	}
	sc, chans, reqs, err := ssh.NewClientConn(readAhead(conn), hostport, ccfg)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		conn.Close()
		return nil, target, fmt.Errorf("ssh handshake with %s: %w", rc.host, context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, target, sshHandshakeError(rc.host, err, hk, auth)
	}
	conn.SetDeadline(time.Time{})
	log.Debug("ssh connected", "user", rc.user, "host", rc.host, "addr", target.Addr, "server", string(sc.ServerVersion()))
	return ssh.NewClient(sc, chans, reqs), target, nil
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

func sshHandshakeError(host string, err error, hk *sshHostKeys, auth *sshAuth) error {
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
		hint := "check -i, your ssh-agent, and that the key is in the node's authorized_keys"
		if len(auth.offered) == 0 {
			hint = "no SSH key found (no ssh-agent keys, no -i, no IdentityFile, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa): pass -i or load a key into ssh-agent"
		} else {
			hint += " (offered: " + strings.Join(auth.offered, ", ") + ")"
		}
		return &tui.HintError{Err: sshAuthError{fmt.Errorf("ssh handshake with %s: %w", host, err)}, Hint: hint}
	}
	return fmt.Errorf("ssh handshake with %s: %w", host, err)
}

// sshAuthError marks an authentication failure for errors.Is(err, ErrAuthFailed)
// while keeping the library's message.
type sshAuthError struct{ error }

func (e sshAuthError) Unwrap() error        { return e.error }
func (e sshAuthError) Is(target error) bool { return target == ErrAuthFailed }

// sshResolved is Config with ssh_config and defaults applied.
type sshResolved struct {
	user, host string
	port       int
	identities []sshIdentity
	knownHosts []string // the first is where accept-new writes
	strict     string   // "yes", "accept-new" or "no"
}

type sshIdentity struct {
	path     string
	explicit bool // from -i: a missing file is worth a warning
}

func sshResolve(cfg Config, log *slog.Logger) (*sshResolved, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil, fmt.Errorf("finding home directory: %w", err)
	}
	localUser := os.Getenv("USER")
	if u, err := user.Current(); err == nil {
		localUser = u.Username
	}

	remoteUser, alias, port, err := sshParseRemote(cfg.Remote)
	if err != nil {
		return nil, err
	}
	conf, err := sshLoadConfig(cfg.ConfigFile, home)
	if err != nil {
		return nil, err
	}
	get := func(key string) string {
		v, err := conf.Get(alias, key)
		if err != nil {
			log.Debug("reading ssh config", "key", key, "err", err)
		}
		return strings.TrimSpace(v)
	}

	for _, k := range []string{"ProxyJump", "ProxyCommand"} {
		if v := get(k); v != "" && !strings.EqualFold(v, "none") {
			log.Warn("ssh config option not supported; connecting directly", "option", k, "value", v)
		}
	}

	rc := &sshResolved{user: remoteUser, host: alias, port: port}
	if hn := get("HostName"); hn != "" {
		rc.host = strings.ReplaceAll(hn, "%h", alias)
	}
	if rc.user == "" {
		rc.user = get("User")
	}
	if rc.user == "" {
		rc.user = localUser
	}
	if rc.port == 0 {
		rc.port = 22
		if p := get("Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("ssh config: bad Port %q for %s", p, alias)
			}
			rc.port = n
		}
	}
	expand := strings.NewReplacer("%%", "%", "%d", home, "%u", localUser, "%h", rc.host, "%r", rc.user)
	path := func(p string) string {
		if p == "~" || strings.HasPrefix(p, "~/") {
			p = home + p[1:]
		}
		return filepath.Clean(expand.Replace(p))
	}

	seen := map[string]bool{}
	addID := func(p string, explicit bool) {
		p = path(p)
		if !seen[p] {
			seen[p] = true
			rc.identities = append(rc.identities, sshIdentity{path: p, explicit: explicit})
		}
	}
	for _, p := range cfg.Identities {
		addID(p, true)
	}
	ids, _ := conf.GetAll(alias, "IdentityFile")
	for _, p := range ids {
		if p = strings.TrimSpace(p); p != "" && !strings.EqualFold(p, "none") {
			addID(p, false)
		}
	}
	for _, p := range sshDefaultIdentities {
		addID(p, false)
	}

	switch {
	case cfg.KnownHostsFile != "":
		rc.knownHosts = []string{path(cfg.KnownHostsFile)}
	case get("UserKnownHostsFile") != "":
		for _, f := range strings.Fields(get("UserKnownHostsFile")) {
			rc.knownHosts = append(rc.knownHosts, path(f))
		}
	default:
		rc.knownHosts = []string{filepath.Join(home, ".ssh", "known_hosts")}
	}
	if cfg.KnownHostsFile == "" {
		rc.knownHosts = append(rc.knownHosts, "/etc/ssh/ssh_known_hosts")
	}

	switch v := strings.ToLower(get("StrictHostKeyChecking")); v {
	case "no", "off":
		rc.strict = "no"
	case "accept-new":
		rc.strict = "accept-new"
	case "", "yes", "ask":
		// No one is there to "ask" in the middle of setting up a tunnel.
		rc.strict = "yes"
	default:
		log.Warn("unknown StrictHostKeyChecking value; treating it as yes", "value", v)
		rc.strict = "yes"
	}
	return rc, nil
}

// sshParseRemote splits [user@]host[:port]; host may be a bracketed or bare IPv6 address.
func sshParseRemote(remote string) (user, host string, port int, err error) {
	if remote == "" {
		return "", "", 0, errors.New("no remote host given")
	}
	host = remote
	if i := strings.LastIndex(host, "@"); i >= 0 {
		user, host = host[:i], host[i+1:]
	}
	if strings.HasPrefix(host, "[") || strings.Count(host, ":") == 1 {
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

func sshLoadConfig(file, home string) (*ssh_config.Config, error) {
	explicit := file != ""
	if !explicit {
		file = filepath.Join(home, ".ssh", "config")
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		b, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading ssh config: %w", err)
	}
	conf, err := ssh_config.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parsing ssh config %s: %w", file, err)
	}
	return conf, nil
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

	passed bool
	err    error
}

func sshNewHostKeys(rc *sshResolved, hostport string, log *slog.Logger) (*sshHostKeys, error) {
	var files []string
	for _, f := range rc.knownHosts {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	db, err := knownhosts.New(files...)
	if err != nil {
		return nil, fmt.Errorf("reading known hosts: %w", err)
	}
	hk := &sshHostKeys{
		log:       log,
		db:        db,
		strict:    rc.strict,
		name:      knownhosts.Normalize(hostport),
		writeFile: rc.knownHosts[0],
	}
	hk.algorithms = sshKnownAlgorithms(db, hostport)
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
func sshKnownAlgorithms(db ssh.HostKeyCallback, hostport string) []string {
	var ke *knownhosts.KeyError
	if err := db(hostport, &net.TCPAddr{IP: net.IPv4zero}, sshProbeKey{}); !errors.As(err, &ke) {
		return nil
	}
	supported := ssh.SupportedAlgorithms().HostKeys
	var algos []string
	for _, k := range ke.Want {
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
	fp := key.Type() + " " + ssh.FingerprintSHA256(key)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		// Revoked keys end up here; not even "no" lets them through.
		return fmt.Errorf("checking host key of %s: %w", hk.name, err)
	}
	if len(ke.Want) == 0 {
		switch hk.strict {
		case "no":
			hk.log.Warn("not verifying the node's host key (StrictHostKeyChecking no)", "host", hk.name, "key", fp)
			return nil
		case "accept-new":
			if err := sshAppendKnownHost(hk.writeFile, hostname, key); err != nil {
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
	old := ke.Want[0]
	for _, w := range ke.Want {
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

func sshAppendKnownHost(file, hostport string, key ssh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
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

// sshAuth offers keys in OpenSSH's order: agent, -i, IdentityFile, defaults.
// All of them go through one publickey method, because x/crypto tries each
// method name once: a second publickey method would never run.
type sshAuth struct {
	ctx        context.Context
	log        *slog.Logger
	identities []sshIdentity
	prompt     func(ctx context.Context, prompt string) ([]byte, error)
	cache      *keyCache

	conn    net.Conn
	agent   net.Conn
	offered []string
	signErr error
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

func (a *sshAuth) signers() ([]ssh.Signer, error) {
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

	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" && a.agent == nil {
		var d net.Dialer
		c, err := d.DialContext(a.ctx, "unix", sock)
		if err != nil {
			a.log.Debug("ssh-agent not reachable", "socket", sock, "err", err)
		} else {
			a.agent = c
			ss, err := agent.NewClient(c).Signers()
			if err != nil {
				a.log.Debug("listing ssh-agent keys", "err", err)
			}
			for _, s := range ss {
				add(s, "agent:"+ssh.FingerprintSHA256(s.PublicKey()))
			}
		}
	}

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
			add(s, id.path)
			continue
		}
		s, err := ssh.ParsePrivateKey(data)
		var missing *ssh.PassphraseMissingError
		switch {
		case err == nil:
			add(s, id.path)
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
				add(&sshLazySigner{a: a, path: id.path, data: data, pub: pub}, id.path)
				continue
			}
			s, err := a.decrypt(id.path, data)
			if err != nil {
				a.log.Warn("skipping passphrase-protected identity file", "file", id.path, "err", err)
				continue
			}
			add(s, id.path)
		default:
			a.log.Debug("skipping identity file", "file", id.path, "err", err)
		}
	}
	return out, nil
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
	if a.conn != nil {
		a.conn.SetDeadline(time.Time{})
		defer a.resumeDeadline()
	}
	for range sshPassphraseTries {
		pass, err := a.prompt(a.ctx, fmt.Sprintf("Enter passphrase for key '%s': ", path))
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

// readAhead gives x/crypto/ssh a connection that reads as much as the socket
// holds: x/crypto reads through a 4 KiB buffer, which is two read syscalls
// per 32 KiB packet, each waking this process once more.
func readAhead(c net.Conn) net.Conn { return bufConn{c, bufio.NewReaderSize(c, 256<<10)} }

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }
