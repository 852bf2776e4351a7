package sshdial

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"

	"github.com/k8stunnel/k8stunnel/tui"
)

// sshProgram is the OpenSSH client asked for the resolved configuration
// (`ssh -G`), which applies Match, Include, /etc/ssh/ssh_config and tokens
// exactly as ssh does. Without it the pure parser stands in. Tests set it.
var sshProgram = "ssh"

// sshDefaultIdentities are OpenSSH 9's, in its order.
var sshDefaultIdentities = []string{"~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
	"~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa"}

const sshSystemConfig = "/etc/ssh/ssh_config"

// sshResolved is Config with ssh_config and defaults applied, for one host.
type sshResolved struct {
	user, host     string
	port           int
	alias          string // the name given, before HostName
	identities     []sshIdentity
	certificates   []string
	identitiesOnly bool
	agent          string // the agent socket; "" = none
	proxyJump      string // "" or "none" = none
	proxyCommand   string
	knownHosts     []string // the first is where accept-new writes
	hostKeyAlias   string
	strict         string // "yes", "accept-new" or "no"
	local          localUser
	source         string // "ssh -G" or "ssh_config parser", for logs
}

type sshIdentity struct {
	path     string
	explicit bool // from -i: a missing file is worth a warning
}

// sshOptions is one host's ssh_config options, keys in lower case.
type sshOptions map[string][]string

func (o sshOptions) get(key string) string {
	if v := o[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// sshResolve resolves remote (with jump, a -J list) the way `ssh` run by the
// local user would.
func sshResolve(cfg Config, remote, jump string, log *slog.Logger) (*sshResolved, error) {
	lu, err := currentLocal()
	if err != nil {
		return nil, err
	}
	remoteUser, alias, port, err := sshParseRemote(remote)
	if err != nil {
		return nil, err
	}
	var opts sshOptions
	source := "ssh -G"
	// ssh reads the files of its user's passwd home, never $HOME: with
	// another $HOME (a test, a container) it would read someone else's
	// config, unless -F names the file.
	pwHome := lu.home
	if u, err := lookupUser(strconv.Itoa(lu.uid)); err == nil {
		pwHome = u.HomeDir
	}
	prog, err := exec.LookPath(sshProgram)
	if sshProgram != "" && err == nil && (cfg.ConfigFile != "" || pwHome == lu.home) {
		opts, err = sshAskOpenSSH(prog, cfg, lu, remoteUser, alias, port, jump)
		if err != nil {
			return nil, err
		}
		if pwHome != lu.home {
			opts["userknownhostsfile"] = []string{rehome(opts.get("userknownhostsfile"), pwHome, lu.home)}
		}
	} else {
		source = "ssh_config parser"
		opts, err = sshParseConfig(cfg, lu, alias, log)
		if err != nil {
			return nil, err
		}
	}

	rc := &sshResolved{user: remoteUser, host: alias, alias: alias, port: port, local: lu, source: source}
	if hn := opts.get("hostname"); hn != "" {
		rc.host = strings.ReplaceAll(hn, "%h", alias)
	}
	if rc.user == "" {
		rc.user = opts.get("user")
	}
	if rc.user == "" {
		rc.user = lu.name
	}
	if rc.port == 0 {
		rc.port = 22
		if p := opts.get("port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("ssh config: bad Port %q for %s", p, alias)
			}
			rc.port = n
		}
	}
	expand := strings.NewReplacer("%%", "%", "%d", lu.home, "%u", lu.name, "%h", rc.host, "%r", rc.user,
		"%n", alias, "%p", strconv.Itoa(rc.port), "%i", strconv.Itoa(lu.uid))
	path := func(p string) string {
		if p == "~" || strings.HasPrefix(p, "~/") {
			p = lu.home + p[1:]
		}
		return filepath.Clean(os.ExpandEnv(expand.Replace(p)))
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
	for _, p := range opts["identityfile"] {
		if p = strings.TrimSpace(p); p != "" && !strings.EqualFold(p, "none") {
			addID(p, false)
		}
	}
	for _, p := range opts["certificatefile"] {
		if p = strings.TrimSpace(p); p != "" && !strings.EqualFold(p, "none") {
			rc.certificates = append(rc.certificates, path(p))
		}
	}
	rc.identitiesOnly = strings.EqualFold(opts.get("identitiesonly"), "yes")

	switch a := opts.get("identityagent"); {
	case a == "" || a == "SSH_AUTH_SOCK":
		rc.agent = lu.agent
	case strings.EqualFold(a, "none"):
	case strings.HasPrefix(a, "$"):
		rc.agent = os.Getenv(strings.Trim(a[1:], "{}"))
	default:
		rc.agent = path(a)
	}

	rc.proxyJump = jump
	if rc.proxyJump == "" {
		rc.proxyJump = opts.get("proxyjump")
	}
	if strings.EqualFold(rc.proxyJump, "none") {
		rc.proxyJump = ""
	}
	if pc := opts.get("proxycommand"); pc != "" && !strings.EqualFold(pc, "none") && rc.proxyJump == "" {
		rc.proxyCommand = pc
	}
	rc.hostKeyAlias = opts.get("hostkeyalias")

	switch {
	case cfg.KnownHostsFile != "":
		rc.knownHosts = []string{path(cfg.KnownHostsFile)}
	default:
		for _, f := range strings.Fields(opts.get("userknownhostsfile")) {
			rc.knownHosts = append(rc.knownHosts, path(f))
		}
		if len(rc.knownHosts) == 0 {
			rc.knownHosts = []string{filepath.Join(lu.sshDir(), "known_hosts"), filepath.Join(lu.sshDir(), "known_hosts2")}
		}
		global := strings.Fields(opts.get("globalknownhostsfile"))
		if len(global) == 0 {
			global = []string{"/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"}
		}
		for _, f := range global {
			rc.knownHosts = append(rc.knownHosts, path(f))
		}
	}

	switch v := strings.ToLower(opts.get("stricthostkeychecking")); v {
	case "no", "off", "false":
		rc.strict = "no"
	case "accept-new":
		rc.strict = "accept-new"
	case "", "yes", "ask", "true":
		// No one is there to "ask" in the middle of setting up a tunnel.
		rc.strict = "yes"
	default:
		log.Warn("unknown StrictHostKeyChecking value; treating it as yes", "value", v)
		rc.strict = "yes"
	}
	log.Debug("ssh config resolved", "from", source, "host", alias, "user", rc.user, "hostname", rc.host,
		"port", rc.port, "local_user", lu.name, "proxyjump", rc.proxyJump, "proxycommand", rc.proxyCommand)
	return rc, nil
}

// sshAskOpenSSH runs `ssh -G` as the local user and reads its answer.
func sshAskOpenSSH(prog string, cfg Config, lu localUser, remoteUser, host string, port int, jump string) (sshOptions, error) {
	args := []string{"-G"}
	if cfg.ConfigFile != "" {
		args = append(args, "-F", cfg.ConfigFile)
	}
	if remoteUser != "" {
		args = append(args, "-l", remoteUser)
	}
	if port != 0 {
		args = append(args, "-p", strconv.Itoa(port))
	}
	if jump != "" {
		args = append(args, "-J", jump)
	}
	for _, id := range cfg.Identities {
		args = append(args, "-i", id)
	}
	args = append(args, "--", host)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = sysProcAttr(lu)
	cmd.Env = append(os.Environ(), "HOME="+lu.home, "USER="+lu.name, "LOGNAME="+lu.name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("reading ssh config of %s with ssh -G: %s", lu.name, firstLine(msg))
	}
	opts := sshOptions{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok {
			k = strings.ToLower(k)
			opts[k] = append(opts[k], strings.TrimSpace(v))
		}
	}
	// ssh -G names the -i files among the identity files; they are added
	// first, and explicitly, by sshResolve.
	return opts, nil
}

// rehome moves the paths in a list from one home to another.
func rehome(list, from, to string) string {
	fs := strings.Fields(list)
	for i, f := range fs {
		if rest, ok := strings.CutPrefix(f, from+"/"); ok {
			fs[i] = filepath.Join(to, rest)
		}
	}
	return strings.Join(fs, " ")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// sshParseConfig is the fallback without an ssh binary: the user's file
// (or -F alone, as ssh does), then /etc/ssh/ssh_config. It knows no Match.
func sshParseConfig(cfg Config, lu localUser, alias string, log *slog.Logger) (sshOptions, error) {
	files := []string{cfg.ConfigFile}
	if cfg.ConfigFile == "" {
		files = []string{filepath.Join(lu.sshDir(), "config"), sshSystemConfig}
	}
	opts := sshOptions{}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if errors.Is(err, os.ErrNotExist) && cfg.ConfigFile == "" {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading ssh config: %w", err)
		}
		conf, err := ssh_config.Decode(bytes.NewReader(b))
		if err != nil {
			return nil, &tui.HintError{Err: fmt.Errorf("parsing ssh config %s: %w", file, err),
				Hint: "without an ssh binary k8stunnel reads ssh_config itself and knows only Match host and Match all; " +
					"install the OpenSSH client and k8stunnel asks ssh -G instead"}
		}
		for _, key := range []string{"HostName", "User", "Port", "IdentitiesOnly", "IdentityAgent", "ProxyJump",
			"ProxyCommand", "UserKnownHostsFile", "GlobalKnownHostsFile", "StrictHostKeyChecking", "HostKeyAlias"} {
			k := strings.ToLower(key)
			if _, done := opts[k]; done {
				continue // the first value wins, as in ssh
			}
			v, err := conf.Get(alias, key)
			if err != nil {
				log.Debug("reading ssh config", "file", file, "key", key, "err", err)
			}
			if v = strings.TrimSpace(v); v != "" {
				opts[k] = []string{v}
			}
		}
		for _, key := range []string{"IdentityFile", "CertificateFile"} {
			vs, _ := conf.GetAll(alias, key)
			for _, v := range vs {
				if v = strings.TrimSpace(v); v != "" {
					opts[strings.ToLower(key)] = append(opts[strings.ToLower(key)], v)
				}
			}
		}
	}
	if len(opts["identityfile"]) == 0 && len(cfg.Identities) == 0 {
		opts["identityfile"] = sshDefaultIdentities
	}
	return opts, nil
}
