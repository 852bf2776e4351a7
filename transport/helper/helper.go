// Package helper starts `k8stunnel server` next to the cluster over an SSH
// connection: it copies this executable to a per-user cache on the node unless
// told to run one already there, and hands back the helper's stdio as a
// transport.Channel.
package helper

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/tui"
)

// Config says how to start the helper (`k8stunnel server`) on the node.
type Config struct {
	RemoteCmd string // --remote-cmd; when set, run it instead of uploading
	Exe       string // local executable to upload; "" = this process's own
	// Helper (--helper) is uploaded instead, whatever the node runs; without
	// it a node unlike this machine gets k8stunnel-OS-ARCH from next to Exe.
	Helper string
	Log    *slog.Logger // the helper's stderr lines end up here
	Args   []string     // extra args appended after "server", e.g. "-v"
}

// Launcher starts helpers, as many as asked for, on any SSH connection.
type Launcher struct {
	cfg Config
	log *slog.Logger

	// The executable is hashed once per Launcher; a reconnect should not
	// read megabytes again.
	exeOnce sync.Once
	exe     helperExe
	exeErr  error

	mu     sync.Mutex
	builds map[string]helperExe // other builds, by path (see exeFor)
}

// New returns a Launcher for cfg.
func New(cfg Config) *Launcher {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.Args = slices.Clone(cfg.Args)
	return &Launcher{cfg: cfg, log: cfg.Log}
}

// Start runs the helper on the node in a new SSH session, without a PTY so
// the byte stream stays untouched, and returns its stdio: Read is the helper's
// stdout, Write its stdin, Close closes stdin and the session. Unless RemoteCmd
// is set it first copies this executable to a per-user cache on the node,
// named by its hash, so nothing has to be installed there and later runs reuse
// the copy. ctx bounds only the setup, not the returned stream.
func (l *Launcher) Start(ctx context.Context, c *ssh.Client) (*Stdio, error) {
	opt, log := l.cfg, l.log
	var cmd string
	if opt.RemoteCmd != "" {
		cmd = opt.RemoteCmd
		for _, a := range opt.Args {
			cmd += " " + tui.Quote(a)
		}
	} else {
		exe, cache, err := l.install(ctx, c)
		if err != nil {
			return nil, err
		}
		cmd = helperShell(helperStartScript(exe, cache, opt.Args))
	}

	sess, err := c.NewSession()
	if err != nil {
		return nil, fmt.Errorf("opening ssh session for the helper: %w", err)
	}
	stdin, err1 := sess.StdinPipe()
	stdout, err2 := sess.StdoutPipe()
	stderr, err3 := sess.StderrPipe()
	if err := errors.Join(err1, err2, err3); err != nil {
		sess.Close()
		return nil, fmt.Errorf("setting up the helper's stdio: %w", err)
	}
	log.Debug("starting the helper on the node", "cmd", cmd)
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	err = sess.Start(cmd)
	if !stop() {
		sess.Close()
		return nil, fmt.Errorf("starting the helper on the node: %w", context.Cause(ctx))
	}
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("starting the helper on the node: %w", err)
	}

	return newStdio(stdout, stdin, stderr, sess.Close, sess.Wait, log, opt.RemoteCmd != ""), nil
}

// newStdio watches a running helper: its stdio, end to stop it, wait to
// learn how it exited.
func newStdio(stdout io.Reader, stdin io.WriteCloser, stderr io.Reader, end, wait func() error, log *slog.Logger, remoteCmd bool) *Stdio {
	h := &Stdio{Reader: stdout, stdin: stdin, end: end, log: log, starting: true, remoteCmd: remoteCmd,
		stderrDone: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		defer close(h.stderrDone)
		// Unread stderr would stall the channel, stdout included, so it is
		// read to the end, whatever it holds.
		readLines(stderr, h.stderrLine)
	}()
	go func() {
		err := wait()
		h.mu.Lock()
		h.exitErr = err
		starting := h.starting
		h.mu.Unlock()
		close(h.exited)
		if _, ok := exitStatus(err); ok && !h.closed.Load() && !starting {
			log.Warn("the helper on the node exited", "err", err)
			return
		}
		log.Debug("the helper on the node exited", "err", err)
	}()
	return h
}

// exitStatus is the status a helper's session or process exited with.
func exitStatus(err error) (int, bool) {
	var sshExit *ssh.ExitError
	if errors.As(err, &sshExit) {
		return sshExit.ExitStatus(), true
	}
	var procExit *exec.ExitError
	if errors.As(err, &procExit) && procExit.ExitCode() >= 0 {
		return procExit.ExitCode(), true
	}
	return 0, false
}

// Stdio is the helper's session as one stream.
type Stdio struct {
	io.Reader
	stdin     io.WriteCloser
	end       func() error // ends the session or process
	log       *slog.Logger
	remoteCmd bool
	closed    atomic.Bool
	once      sync.Once
	err       error

	// Until Started, what the helper says on stderr is kept for the error
	// that explains why it did not start, instead of being logged apart.
	mu         sync.Mutex
	starting   bool
	early      []string
	exitErr    error
	stderrDone chan struct{}
	exited     chan struct{}
	relay      lineLimiter
}

// maxEarlyLines bounds what a helper that fails to start can make us keep.
const maxEarlyLines = 3

func (h *Stdio) stderrLine(line string) {
	h.mu.Lock()
	if h.starting {
		if len(h.early) < maxEarlyLines {
			h.early = append(h.early, line)
		}
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	if dropped, ok := h.relay.allow(time.Now()); ok {
		if dropped > 0 {
			h.log.Warn("the node said too much; lines dropped", "lines", dropped, "from", "node")
		}
		logNodeLine(h.log, line)
	}
}

// maxLine is where a line from the node's stderr is cut.
const maxLine = 1024

// readLines calls line for each line r holds, each cut to maxLine bytes,
// until r ends.
func readLines(r io.Reader, line func(string)) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		b, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			line(strings.ToValidUTF8(string(b), "") + "...")
			for err == bufio.ErrBufferFull { // the rest of a long line
				_, err = br.ReadSlice('\n')
			}
			if err != nil {
				return
			}
			continue
		}
		if len(b) > 0 {
			line(strings.TrimRight(string(b), "\r\n"))
		}
		if err != nil {
			return
		}
	}
}

// lineLimiter lets a burst of lines through and then a steady rate, so a
// helper (or a node) writing stderr as fast as it can does not flood the
// user's terminal and log.
type lineLimiter struct {
	mu      sync.Mutex
	tokens  float64
	last    time.Time
	dropped int
}

const (
	lineBurst = 100
	lineRate  = 20 // per second
)

// allow says whether a line may go out now, and how many were dropped since
// the last one that did.
func (l *lineLimiter) allow(now time.Time) (dropped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = lineBurst
	} else {
		l.tokens = min(lineBurst, l.tokens+now.Sub(l.last).Seconds()*lineRate)
	}
	l.last = now
	if l.tokens < 1 {
		l.dropped++
		return 0, false
	}
	l.tokens--
	dropped, l.dropped = l.dropped, 0
	return dropped, true
}

// Started says the helper answered: from now on its stderr is logged as it
// comes, starting with what it said so far.
func (h *Stdio) Started() {
	h.mu.Lock()
	early := h.early
	h.starting, h.early = false, nil
	h.mu.Unlock()
	for _, line := range early {
		logNodeLine(h.log, line)
	}
}

// Explain adds to err what the node said and how the helper exited, and with
// RemoteCmd a hint about what that command must be. Call it after Close: the
// session's end brings the rest of its stderr.
func (h *Stdio) Explain(err error) error {
	err = h.explain(err)
	if h.remoteCmd {
		return &tui.HintError{Err: err, Hint: "--remote-cmd must run `k8stunnel server` of this version on the node"}
	}
	return err
}

func (h *Stdio) explain(err error) error {
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	select {
	case <-h.stderrDone:
	case <-timer.C:
	}
	select {
	case <-h.exited:
	case <-timer.C:
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var said []string
	for _, line := range h.early {
		if line = strings.TrimSpace(line); line != "" {
			said = append(said, line)
		}
	}
	var status string
	if n, ok := exitStatus(h.exitErr); ok {
		status = fmt.Sprintf(" (exit status %d)", n)
	}
	if len(said) == 0 {
		if status != "" {
			return fmt.Errorf("%w; the helper exited%s", err, status)
		}
		return err
	}
	return fmt.Errorf("%w; on stderr the node said: %s%s", err, strings.Join(said, " / "), status)
}

func (h *Stdio) Write(p []byte) (int, error) { return h.stdin.Write(p) }

// Close is safe to call more than once.
func (h *Stdio) Close() error {
	h.once.Do(func() {
		h.closed.Store(true)
		err := errors.Join(h.stdin.Close(), h.end())
		if errors.Is(err, io.EOF) {
			err = nil
		}
		h.err = err
	})
	return h.err
}

// helperExe is the local executable as the node will cache it.
type helperExe struct {
	path string
	sum  string // its sha256, in hex
	hash string // the first 16 hex digits of sum, which name it in the cache
	size int64
}

func (l *Launcher) localExe() (helperExe, error) {
	l.exeOnce.Do(func() { l.exe, l.exeErr = helperLocalExe(l.cfg.Exe) })
	return l.exe, l.exeErr
}

func helperLocalExe(path string) (helperExe, error) {
	if path == "" {
		// /proc/self/exe stays this very binary even if a package upgrade
		// replaces the file meanwhile.
		path = "/proc/self/exe"
		if runtime.GOOS != "linux" {
			p, err := os.Executable()
			if err != nil {
				return helperExe{}, fmt.Errorf("finding this executable: %w", err)
			}
			path = p
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return helperExe{}, fmt.Errorf("reading this executable: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return helperExe{}, fmt.Errorf("reading this executable: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	return helperExe{path: path, sum: sum, hash: sum[:16], size: n}, nil
}

// nodeCache is the directory on the node the helper is cached in.
type nodeCache struct {
	dir  string
	temp bool // made for this run only, and removed when the helper exits
}

// helperScript is a script for the node: the variables and functions that
// its three steps (probe, upload, start) share, then body.
//
// The cached helper is trusted for its full sha256 only, checked right
// before each exec in the same script. So that no one can swap it between
// check and exec, every step first changes into the cache directory, then
// checks that this directory is the user's own and no one else can write to
// it, and from then on names the file relative to it: once we are inside,
// no rename of a parent can redirect the path.
func helperScript(exe helperExe, body string) string {
	return `H=` + exe.sum + `; f=./k8stunnel-` + exe.hash + "\n" + helperFuncs + body
}

// helperFuncs are the functions every script for the node starts with; $H
// and $f name the helper.
const helperFuncs = `u=$(id -u)
# refuse MESSAGE HINT: the node cannot run the helper safely; status 3 tells the client.
refuse() { printf '%s\n' "$1" "$2" >&2; exit 3; }
# private: only this user can write to the current directory.
private() {
	set -- $(ls -ldn .)
	[ "$3" = "$u" ] || refuse "refusing the helper cache $PWD: it belongs to uid $3, not $u" "remove it (as its owner or root): rm -r $PWD"
	case $1 in ?????w*|????????w*)
		refuse "refusing the helper cache $PWD: others can write to it" "chmod 700 $PWD"
	esac
}
# verify FILE: FILE is exactly this k8stunnel.
verify() { [ -f "$1" ] && set -- $(sha256sum < "$1") && [ "$1" = "$H" ]; }
`

// helperProbeScript says the node's platform and picks the cache: the
// user's cache dir, or when that cannot be written or is mounted noexec
// another private one, made for this run if need be. It prints four lines:
// `uname -sm`, "cached|missing home|other|temp", the dir, and why the ones
// before it could not be used.
const helperProbeScript = helperProbeTools + "uname -sm\n" + helperProbeCache

const helperProbeTools = `command -v sha256sum >/dev/null || refuse "the node has no sha256sum to check the helper with" \
	"install coreutils or busybox on the node, or install k8stunnel there and pass --remote-cmd '/path/to/k8stunnel server'"
`

// helperProbeCache picks the cache dir, changes into it and prints the
// probe's last three lines; $kind says which it is.
const helperProbeCache = `umask 077
why= d=
# try DIR: DIR (made 0700 if need be) is private and we can write and run files
# there; if not, add why to $why.
try() {
	mkdir -p "$1" 2>/dev/null && cd "$1" 2>/dev/null || { why="$why$1 cannot be made or entered; "; return 1; }
	private
	t=.exec-test.$$
	printf '#!/bin/sh\n' 2>/dev/null > "$t" || { why="$why$1 is not writable; "; return 1; }
	chmod 700 "$t" && "./$t" 2>/dev/null; s=$?; rm -f "$t"
	[ $s = 0 ] || { why="$why$1 does not allow running programs (noexec); "; return 1; }
}
if try "${XDG_CACHE_HOME:-$HOME/.cache}/k8stunnel"; then kind=home
elif [ -d "$XDG_RUNTIME_DIR" ] && try "$XDG_RUNTIME_DIR/k8stunnel"; then kind=other
elif [ -d /dev/shm ] && try "/dev/shm/k8stunnel-$u"; then kind=other
elif d=$(mktemp -d "${TMPDIR:-/tmp}/k8stunnel.XXXXXX") && try "$d"; then kind=temp
else
	[ -z "$d" ] || rm -rf "$d"
	refuse "no directory on the node lets k8stunnel keep and run its helper: $why" \
		"install k8stunnel on the node and pass --remote-cmd '/path/to/k8stunnel server'"
fi
if verify "$f"; then echo "cached $kind"; else echo "missing $kind"; fi
printf '%s\n' "$PWD" "$why"
`

// helperUploadScript writes stdin to the cache under a temporary name and
// renames it only once it checks out, so a dropped connection or a parallel
// run never leaves a damaged helper.
func helperUploadScript(exe helperExe, cache nodeCache) string {
	return helperScript(exe, helperUploadBody(tui.Quote(cache.dir), cache.temp, "cat"))
}

// helperUploadBody copies what the command take writes to the cache in dir
// (a shell word), or exits.
func helperUploadBody(dir string, temp bool, take string) string {
	body := `d=` + dir + `; cd "$d" || exit 1; private
umask 077; t=$f.tmp.$$
` + take + ` > "$t" && verify "$t" && chmod 700 "$t" && mv -f "$t" "$f" || {
rm -f "$t"
`
	if temp {
		body += `cd / && rm -rf "$d"` + "\n"
	}
	return body + `echo "the upload does not match this k8stunnel" >&2; exit 1
}
`
}

// helperStartScript runs the cached helper, checked in the same script.
func helperStartScript(exe helperExe, cache nodeCache, args []string) string {
	return helperScript(exe, helperStartBody(tui.Quote(cache.dir), cache.temp, args))
}

// helperStartBody runs the helper cached in dir (a shell word).
func helperStartBody(dir string, temp bool, args []string) string {
	body := `d=` + dir + `; cd "$d" || exit 1; private
`
	run := `exec "$f" server`
	if temp {
		// No exec: the shell stays to remove the dir once the helper exits.
		body += `trap 'cd / && rm -rf "$d"' EXIT; trap 'exit 1' HUP INT TERM
`
		run = `"$f" server`
	}
	body += `verify "$f" || refuse "the helper cached in $PWD is not this k8stunnel" "run k8stunnel again"
`
	for _, a := range args {
		run += " " + tui.Quote(a)
	}
	return body + run + "\n"
}

// helperShell runs script under sh: the login shell on the node may be one
// (fish, csh) that does not speak POSIX.
func helperShell(script string) string {
	return "sh -c " + tui.Quote(script)
}

// install is helperInstall with the build the node's platform needs: when
// the probe shows that exe is not it, a second probe asks about that one.
func (l *Launcher) install(ctx context.Context, c *ssh.Client) (helperExe, nodeCache, error) {
	exe, err := l.firstExe()
	if err != nil {
		return helperExe{}, nodeCache{}, err
	}
	uname, cache, err := helperInstall(ctx, c, exe, l.cfg.Helper != "", l.log)
	if err == nil || uname == "" {
		return exe, cache, err
	}
	if exe, err = l.exeFor(uname); err != nil {
		return helperExe{}, nodeCache{}, err
	}
	_, cache, err = helperInstall(ctx, c, exe, true, l.log)
	return exe, cache, err
}

// errOtherPlatform is what helperInstall returns with the node's uname when
// exe is not for it.
var errOtherPlatform = errors.New("the node runs another platform")

// helperInstall picks the cache on the node and makes sure exe is in it,
// uploading it if not. One probe session answers "which platform", "which
// cache" and "already there". Unless exe is what the node needs (or
// anyPlatform says it was chosen for the node), it returns the node's uname
// and errOtherPlatform.
func helperInstall(ctx context.Context, c *ssh.Client, exe helperExe, anyPlatform bool, log *slog.Logger) (string, nodeCache, error) {
	out, err := helperRun(ctx, c, helperScript(exe, helperProbeScript), nil)
	if err != nil {
		return "", nodeCache{}, fmt.Errorf("probing the node: %w", err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 5 || lines[4] != "" || !strings.HasPrefix(lines[2], "/") {
		return "", nodeCache{}, fmt.Errorf("probing the node: unexpected answer %q", out)
	}
	uname, state, dir, why := strings.TrimSpace(lines[0]), lines[1], lines[2], strings.TrimSuffix(lines[3], "; ")
	if !anyPlatform && !helperPlatformMatches(uname, runtime.GOOS, runtime.GOARCH) {
		return uname, nodeCache{}, errOtherPlatform
	}
	cache, err := helperUseCache(exe, state, dir, why, log)
	if err != nil || strings.HasPrefix(state, "cached") {
		return "", cache, err
	}
	return "", cache, helperUpload(ctx, c, exe, cache, log)
}

// helperUseCache checks the probe's answer about the cache.
func helperUseCache(exe helperExe, state, dir, why string, log *slog.Logger) (nodeCache, error) {
	cache := nodeCache{dir: dir}
	switch state {
	case "cached home", "missing home":
	case "cached other", "missing other":
		log.Info("the helper is cached outside the node's home", "dir", dir, "why", why)
	case "missing temp":
		cache.temp = true
		log.Info("the helper runs from a temporary directory on the node, uploaded each run", "dir", dir, "why", why)
	default:
		return nodeCache{}, fmt.Errorf("probing the node: unexpected answer %q", state)
	}
	if strings.HasPrefix(state, "cached") {
		log.Debug("the node has this k8stunnel cached", "hash", exe.hash, "dir", dir)
	}
	return cache, nil
}

func helperUpload(ctx context.Context, c *ssh.Client, exe helperExe, cache nodeCache, log *slog.Logger) error {
	f, err := os.Open(exe.path)
	if err != nil {
		return fmt.Errorf("reading this executable: %w", err)
	}
	defer f.Close()
	log.Info("uploading k8stunnel to the node", "bytes", exe.size, "hash", exe.hash)
	start := time.Now()
	if _, err := helperRun(ctx, c, helperUploadScript(exe, cache), f); err != nil {
		return fmt.Errorf("uploading k8stunnel to the node: %w", err)
	}
	log.Debug("uploaded k8stunnel to the node", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// helperRun runs script on the node and returns its stdout; stderr goes into
// the error.
func helperRun(ctx context.Context, c *ssh.Client, script string, stdin io.Reader) (string, error) {
	sess, err := c.NewSession()
	if err != nil {
		return "", fmt.Errorf("opening ssh session: %w", err)
	}
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	// What the node answers is bounded: a probe says a line or two.
	out, errOut := capBuffer{max: maxCommandOutput}, capBuffer{max: maxCommandOutput}
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, &out, &errOut
	err = sess.Run(helperShell(script))
	if ctx.Err() != nil {
		return "", context.Cause(ctx)
	}
	var exit *ssh.ExitError
	if errors.As(err, &exit) && exit.ExitStatus() == refusedStatus {
		// The script refused, and said why on stderr: a line of error, a line of hint.
		msg, hint, _ := strings.Cut(strings.TrimSpace(errOut.String()), "\n")
		return "", &tui.HintError{Err: errors.New(msg), Hint: hint}
	}
	if err != nil {
		if msg := strings.TrimSpace(errOut.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return "", err
	}
	return out.String(), nil
}

// refusedStatus is the exit status of refuse in helperScript.
const refusedStatus = 3

// maxCommandOutput bounds what we keep of a setup command's output.
const maxCommandOutput = 16 << 10

// capBuffer keeps the first max bytes written to it and drops the rest,
// while still taking it all, so the SSH channel never stalls.
type capBuffer struct {
	bytes.Buffer
	max int
}

func (b *capBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// helperMachines maps GOARCH to what `uname -m` says on such a machine.
var helperMachines = map[string][]string{
	"amd64":   {"x86_64", "amd64"},
	"arm64":   {"aarch64", "arm64"},
	"arm":     {"armv6l", "armv7l", "armv8l", "arm"},
	"386":     {"i386", "i486", "i586", "i686", "x86"},
	"loong64": {"loongarch64"},
}

// helperPlatformMatches reports whether a binary for goos/goarch runs on a
// node whose `uname -sm` printed uname.
func helperPlatformMatches(uname, goos, goarch string) bool {
	f := strings.Fields(uname)
	if len(f) != 2 || !strings.EqualFold(f[0], goos) {
		return false
	}
	machines, ok := helperMachines[goarch]
	if !ok {
		machines = []string{goarch}
	}
	return slices.Contains(machines, f[1])
}

// Stdio is what the engine reads and writes.
var _ transport.Channel = (*Stdio)(nil)
