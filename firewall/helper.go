package firewall

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/tui"
)

// The helper protocol: the parent writes one JSON request per line on the
// helper's stdin, the helper answers each with one JSON line on its stdout.
// Logs go to stderr, never stdout.
type helperRequest struct {
	Op   string `json:"op"` // opInstall, opRemove or opPing
	Spec *Spec  `json:"spec,omitempty"`

	// Mark is the socket an opMark request (mark.go) names.
	Mark *markRequest `json:"mark,omitempty"`
}

type helperReply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

const (
	opInstall = "install"
	opRemove  = "remove"
	opPing    = "ping"

	// maxRequestLine bounds one request; a Spec with thousands of targets
	// still fits.
	maxRequestLine = 1 << 20
	// closeTimeout is how long Close waits for the helper to clean up and exit
	// before killing it (and again after killing it).
	closeTimeout = 10 * time.Second
)

// ServeHelper is the privileged side of the split, run by the hidden
// `k8stunnel firewall` subcommand as root. It answers requests read from in
// on out until in reaches EOF or ctx ends, then removes everything it
// installed and returns. EOF is how it learns its parent is gone, whatever
// killed the parent: the kernel closes the parent's end of the pipe even
// after SIGKILL. The error is that of the final removal, or of writing a
// reply.
//
// While rules are installed it checks them every second and, when something
// flushed them (iptables -t nat -F, a firewall manager reloading), installs
// them again and logs "firewall rules restored".
func ServeHelper(ctx context.Context, in io.Reader, out io.Writer, fw *Firewall, log *slog.Logger) error {
	return serveHelper(ctx, in, out, fw, log, nil)
}

// serveHelper is ServeHelper where authorize, when not nil, must accept a
// Spec before it is installed.
func serveHelper(ctx context.Context, in io.Reader, out io.Writer, fw *Firewall, log *slog.Logger, authorize func(Spec) error) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lines := make(chan []byte)
	readErr := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	// The reader cannot be interrupted: after ctx ends it lingers until in
	// returns, which for os.Stdin is process exit.
	go func() {
		sc := bufio.NewScanner(in)
		sc.Buffer(nil, maxRequestLine)
		for sc.Scan() {
			select {
			case lines <- bytes.Clone(sc.Bytes()):
			case <-stop:
				return
			}
		}
		readErr <- sc.Err()
	}()

	heal := time.NewTicker(fw.healEvery)
	defer heal.Stop()
	var want *Spec // what the parent asked for; nil after remove
	lastHealErr := ""
	enc := json.NewEncoder(out)
	for {
		select {
		case <-ctx.Done():
			log.Debug("firewall helper stopping", "reason", context.Cause(ctx))
			return removeOnExit(fw, log)
		case err := <-readErr:
			if err != nil {
				log.Warn("reading firewall requests", "err", err)
			}
			return removeOnExit(fw, log)
		case line := <-lines:
			req, reply := serveRequest(fw, line, authorize)
			switch {
			case req.Op == opInstall && reply.OK:
				want = req.Spec
			case req.Op == opInstall || req.Op == opRemove:
				// A failed Install leaves nothing installed, so there is
				// nothing to heal either.
				want = nil
			}
			if err := enc.Encode(reply); err != nil {
				removeErr := removeOnExit(fw, log)
				return errors.Join(fmt.Errorf("answering firewall request: %w", err), removeErr)
			}
		case <-heal.C:
			if want == nil {
				continue
			}
			restored, err := fw.heal(*want)
			switch {
			case err != nil && err.Error() != lastHealErr:
				// Logged once until it changes; the check runs every second.
				log.Warn("checking firewall rules", "err", err)
				lastHealErr = err.Error()
			case err == nil && restored:
				log.Warn("firewall rules restored", "chain", ChainName(*want))
				lastHealErr = ""
			case err == nil:
				lastHealErr = ""
			}
		}
	}
}

func serveRequest(fw *Firewall, line []byte, authorize func(Spec) error) (helperRequest, helperReply) {
	var req helperRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return req, failed(fmt.Errorf("decoding firewall request: %w", err))
	}
	switch req.Op {
	case opPing:
		return req, helperReply{OK: true}
	case opInstall:
		if req.Spec == nil {
			return req, failed(errors.New("install request has no spec"))
		}
		if authorize != nil {
			if err := authorize(*req.Spec); err != nil {
				return req, failed(err)
			}
		}
		return req, failed(fw.Install(*req.Spec))
	case opRemove:
		return req, failed(fw.Remove())
	case opMark:
		return req, failed(serveMark(req.Mark))
	}
	return req, failed(fmt.Errorf("unknown firewall request %q", req.Op))
}

// failed turns err into a reply; a nil err is success.
func failed(err error) helperReply {
	if err != nil {
		return helperReply{Error: err.Error()}
	}
	return helperReply{OK: true}
}

// removeRetries and removeBackoff bound how hard removeOnExit tries: an
// iptables run can fail when a signal meant for us killed it (systemd signals
// the whole cgroup) or another program holds the xtables lock. The last try
// ends well inside the parent's closeTimeout.
var (
	removeRetries = 8
	removeBackoff = 50 * time.Millisecond
)

// removeOnExit removes the rules, retrying with backoff until it works:
// rules left behind would send the CIDRs to a port nobody holds.
func removeOnExit(fw *Firewall, log *slog.Logger) error {
	var err error
	for try, wait := 1, removeBackoff; ; try, wait = try+1, wait*2 {
		if err = fw.Remove(); err == nil || try == removeRetries {
			break
		}
		log.Warn("removing firewall rules failed; retrying", "try", try, "err", err)
		time.Sleep(wait)
	}
	if err != nil {
		return fmt.Errorf("removing firewall rules on exit: %w", err)
	}
	return nil
}

// ServeHelperProcess is the whole body of the `k8stunnel firewall`
// subcommand: ServeHelper on stdin and stdout, with the signal handling the
// privileged process needs so that it always gets to clean up:
//
//   - SIGINT and SIGHUP are ignored. Ctrl-C and a closing terminal signal the
//     whole foreground process group, the helper included (it stays in the
//     parent's group because sudo must be able to ask for a password on the
//     terminal). The parent handles them and then closes our stdin; dying on
//     them would skip the cleanup.
//   - SIGTERM (kill, system shutdown) ends ctx: remove the rules and return.
//   - SIGPIPE is ignored. By default Go dies of it when a write to stdout or
//     stderr finds the reader gone, which is exactly when the parent died;
//     ignored, the write fails with EPIPE and the cleanup runs.
//
// Once started (sudo has asked for its password by then) it leaves the
// parent's process group, so the iptables runs of its cleanup are not killed
// by a signal to that group: `timeout` and systemd send SIGTERM to the main
// process and then to its group a moment later. SIGTTOU is ignored so that
// logging to the terminal from outside the foreground group never stops it.
// A later SIGTERM is caught and changes nothing; cleanup retries until done.
//
// It installs only rules that redirect to the calling client's own sockets
// (see Caller.Authorize).
func ServeHelperProcess(ctx context.Context, fw *Firewall, log *slog.Logger) error {
	caller, err := FindCaller()
	if err != nil {
		return err
	}
	ignoreJobSignals()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM)
	defer stop()
	if err := leaveProcessGroup(); err != nil {
		log.Debug("firewall helper stays in its parent's process group", "err", err)
	}
	log.Debug("firewall helper serving", "caller_pid", caller.Pid, "caller_uid", caller.UID)
	return serveHelper(ctx, os.Stdin, os.Stdout, fw, log, caller.Authorize)
}

// HelperConfig says how to start the privileged helper.
type HelperConfig struct {
	// Exe is the k8stunnel executable; empty means this one.
	Exe string
	// Args follow Exe; nil means {"firewall"}.
	Args []string
	// Sudo runs the helper through sudo when this process is not root, with
	// -n (fail instead of prompting) when stdin is not a terminal.
	Sudo bool
	// NoPrompt passes -n to sudo even on a terminal: a restart in the middle
	// of a run, perhaps in the background, must not ask for a password.
	NoPrompt bool
	Log      *slog.Logger
	// Stderr receives the helper's logs and sudo's prompt; nil means
	// os.Stderr.
	Stderr io.Writer
}

// Helper is the unprivileged side of the split: it runs the privileged
// helper process and sends it requests, one at a time.
type Helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   *slog.Logger

	replies chan helperReply
	exited  chan struct{} // closed once the process has exited
	waitErr error         // how it exited; read only after exited is closed

	mu sync.Mutex // one request in flight
	// broken, once set, fails every request: a write was cut short. Guarded
	// by mu.
	broken error

	// abandoned counts requests whose caller gave up waiting; read drops
	// their late replies rather than hand them to the next request.
	replyMu   sync.Mutex
	abandoned int

	closeOnce sync.Once
	closeErr  error
}

// StartHelper starts the privileged helper and returns once it answers a
// ping, or fails when it exits first (sudo refused) or ctx ends.
//
// ctx bounds the start only. The helper is deliberately not tied to ctx or
// killed with the parent (no Pdeathsig, which also fires when the forking
// OS thread exits): it must outlive the parent long enough to remove its
// rules, and the end of its stdin tells it when.
func StartHelper(ctx context.Context, cfg HelperConfig) (*Helper, error) {
	if cfg.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding the k8stunnel executable for the firewall helper: %w", err)
		}
		cfg.Exe = exe
	}
	if cfg.Args == nil {
		cfg.Args = []string{"firewall"}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	viaSudo := cfg.Sudo && os.Geteuid() != 0
	argv := helperArgv(cfg.Exe, cfg.Args, viaSudo, !cfg.NoPrompt && tui.CanPrompt())
	h, err := startHelper(ctx, argv, childEnv(os.Environ(), viaSudo), cfg)
	if err != nil && viaSudo {
		return nil, &tui.HintError{Err: fmt.Errorf("%w: %w", err, ErrNeedRoot), Hint: NeedRootHint}
	}
	return h, err
}

// helperArgv is the command line of the helper process.
func helperArgv(exe string, args []string, viaSudo, interactive bool) []string {
	argv := append([]string{exe}, args...)
	if !viaSudo {
		return argv
	}
	sudo := []string{"sudo"}
	if !interactive {
		sudo = append(sudo, "-n")
	}
	return append(append(sudo, "--"), argv...)
}

// childEnv is the helper's environment. sudo sets SUDO_UID and friends
// afresh; a helper we start directly must not see the ones we got when the
// user ran `sudo k8stunnel`: FindCaller would then want its caller, us, to
// be that user, and refuse root.
func childEnv(environ []string, viaSudo bool) []string {
	if viaSudo {
		return environ
	}
	return slices.DeleteFunc(slices.Clone(environ), func(kv string) bool {
		return strings.HasPrefix(kv, "SUDO_")
	})
}

func startHelper(ctx context.Context, argv, env []string, cfg HelperConfig) (*Helper, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	// Until the helper answers, what it (or sudo) says is kept for the error
	// that explains why it did not start, so the user gets one line.
	stderr := &startupWriter{out: cfg.Stderr}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("starting firewall helper: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("starting firewall helper: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting firewall helper: %w", err)
	}
	h := &Helper{
		cmd:     cmd,
		stdin:   stdin,
		log:     cfg.Log,
		replies: make(chan helperReply, 1),
		exited:  make(chan struct{}),
	}
	go h.read(stdout)
	if err := h.request(ctx, helperRequest{Op: opPing}); err != nil {
		_ = h.Close()
		if said := stderr.said(); said != "" {
			err = fmt.Errorf("%w; it said: %s", err, said)
		}
		return nil, fmt.Errorf("starting firewall helper: %w", err)
	}
	stderr.started()
	cfg.Log.Debug("firewall helper started", "argv", argv, "pid", cmd.Process.Pid)
	return h, nil
}

// read delivers replies until the helper's stdout ends, then reaps it.
func (h *Helper) read(stdout io.Reader) {
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var r helperReply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || (!r.OK && r.Error == "") {
			h.log.Warn("unexpected output from firewall helper", "line", sc.Text())
			continue
		}
		h.replyMu.Lock()
		if h.abandoned > 0 {
			h.abandoned--
			h.replyMu.Unlock()
			h.log.Debug("late reply from firewall helper dropped", "line", sc.Text())
			continue
		}
		select {
		case h.replies <- r:
		default:
			h.log.Warn("unrequested reply from firewall helper", "line", sc.Text())
		}
		h.replyMu.Unlock()
	}
	// Wait must not run before stdout is drained, or a helper blocked
	// writing to it would never exit.
	_, _ = io.Copy(io.Discard, stdout)
	h.waitErr = h.cmd.Wait()
	close(h.exited)
}

func (h *Helper) request(ctx context.Context, req helperRequest) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.broken != nil {
		return h.broken
	}
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding %s request: %w", req.Op, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sending %s request to firewall helper: %w", req.Op, context.Cause(ctx))
	}
	if n, err := h.write(ctx, append(line, '\n')); err != nil {
		if ctx.Err() != nil {
			if n > 0 {
				// Part of the line is in the pipe: what follows would be
				// garbled, so no request is sent after it.
				h.broken = fmt.Errorf("firewall helper (pid %d) stopped reading requests", h.cmd.Process.Pid)
			}
			return fmt.Errorf("sending %s request to firewall helper (pid %d): %w", req.Op, h.cmd.Process.Pid, context.Cause(ctx))
		}
		// A broken pipe says little; how the helper exited says more.
		select {
		case <-h.exited:
			return fmt.Errorf("firewall helper exited before answering %s: %s", req.Op, h.exitStatus())
		case <-time.After(closeTimeout):
			return fmt.Errorf("sending %s request to firewall helper: %w", req.Op, err)
		}
	}
	select {
	case r := <-h.replies:
		return r.err()
	case <-h.exited:
		// The reply may have arrived just before the exit.
		select {
		case r := <-h.replies:
			return r.err()
		default:
		}
		return fmt.Errorf("firewall helper exited before answering %s: %s", req.Op, h.exitStatus())
	case <-ctx.Done():
		h.replyMu.Lock()
		select {
		case <-h.replies: // it came after all, too late
		default:
			h.abandoned++
		}
		h.replyMu.Unlock()
		return fmt.Errorf("firewall helper (pid %d) did not answer %s: %w", h.cmd.Process.Pid, req.Op, context.Cause(ctx))
	}
}

// write writes p to the helper's stdin, giving up when ctx ends: a helper
// that stops reading would otherwise block the write once the pipe is full.
func (h *Helper) write(ctx context.Context, p []byte) (int, error) {
	d, ok := h.stdin.(interface{ SetWriteDeadline(time.Time) error })
	if !ok || d.SetWriteDeadline(time.Time{}) != nil {
		return h.stdin.Write(p)
	}
	stop := context.AfterFunc(ctx, func() { _ = d.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	return h.stdin.Write(p)
}

func (r helperReply) err() error {
	if r.OK {
		return nil
	}
	return errors.New(r.Error)
}

// exitStatus describes how the helper exited; call only after exited is closed.
func (h *Helper) exitStatus() string {
	if h.waitErr == nil {
		return "exit status 0"
	}
	return h.waitErr.Error()
}

// Install asks the helper to install spec, replacing what it installed before.
// When ctx ends first it returns an error naming the helper; the helper may
// still finish the install, and its late answer is dropped.
func (h *Helper) Install(ctx context.Context, spec Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	return h.request(ctx, helperRequest{Op: opInstall, Spec: &spec})
}

// Remove asks the helper to remove what it installed.
func (h *Helper) Remove() error {
	if err := h.request(context.Background(), helperRequest{Op: opRemove}); err != nil {
		return fmt.Errorf("removing firewall rules: %w", err)
	}
	return nil
}

// Ping checks that the helper still answers.
func (h *Helper) Ping(ctx context.Context) error {
	return h.request(ctx, helperRequest{Op: opPing})
}

// Done is closed when the helper process has exited, whoever ended it; the
// rules are then gone or, if it was killed, orphaned.
func (h *Helper) Done() <-chan struct{} { return h.exited }

// Close closes the helper's stdin, which makes it remove its rules and exit,
// and waits for that; a helper that takes longer than 10 s is killed. Safe to
// call twice.
//
// It takes no context on purpose: it runs during shutdown, when the caller's
// context has usually ended already, and how long removing the rules may take
// before the kill is the helper's own bound, not the caller's.
func (h *Helper) Close() error {
	h.closeOnce.Do(func() { h.closeErr = h.close() })
	return h.closeErr
}

func (h *Helper) close() error {
	_ = h.stdin.Close()
	timer := time.NewTimer(closeTimeout)
	defer timer.Stop()
	select {
	case <-h.exited:
	case <-timer.C:
		h.log.Warn("firewall helper did not exit; killing it", "pid", h.cmd.Process.Pid)
		_ = h.cmd.Process.Kill()
		timer.Reset(closeTimeout)
		select {
		case <-h.exited:
		case <-timer.C:
			return fmt.Errorf("firewall helper (pid %d) did not exit after kill", h.cmd.Process.Pid)
		}
	}
	if h.waitErr != nil {
		return fmt.Errorf("firewall helper: %w", h.waitErr)
	}
	return nil
}

// startupWriter holds a starting helper's stderr, then passes it on.
type startupWriter struct {
	mu      sync.Mutex
	out     io.Writer
	buf     bytes.Buffer
	passing bool
}

// maxStartupStderr bounds what a helper that fails to start can make us keep.
const maxStartupStderr = 4 << 10

func (w *startupWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.passing {
		return w.out.Write(p)
	}
	if room := maxStartupStderr - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// started passes on what was held and everything from now on.
func (w *startupWriter) started() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.passing = true
	w.out.Write(w.buf.Bytes())
	w.buf.Reset()
}

// said is what was held, as one line.
func (w *startupWriter) said() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(strings.Fields(w.buf.String()), " ")
}
