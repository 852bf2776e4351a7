package helper

// Starting the helper through one command (ssh as sshuttle's -e, kubectl
// exec) instead of SSH sessions of our own: one process probes, takes the
// upload on its stdin and runs the helper, so the user authenticates once.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/k8stunnel/k8stunnel/tui"
)

// Process is a running command whose far end runs Command.
type Process struct {
	Stdin          io.WriteCloser
	Stdout, Stderr io.Reader
	// End stops the process; Wait returns how it exited.
	End, Wait func() error
}

// Command is what the process must run on the node, a line for a shell
// (ssh hands it to the login shell): the script that probes, takes the
// upload and starts the helper, or RemoteCmd.
func (l *Launcher) Command() string {
	args := ""
	for _, a := range l.cfg.Args {
		args += " " + tui.Quote(a)
	}
	if l.cfg.RemoteCmd != "" {
		return l.cfg.RemoteCmd + args
	}
	return helperShell(helperOneScript(l.cfg.Args))
}

// helperOneScript is probe, upload and start in one shell. Between the steps
// it talks with Attach: it says the platform, reads "SHA256 SIZE" of the
// build for it, says the cache's state (as the probe does), reads "send"
// followed by exactly SIZE bytes, or "skip", and says "ready" just before it
// runs the helper. Nothing is sent past the upload before "ready", so a head
// that reads ahead cannot swallow what is meant for the helper.
func helperOneScript(args []string) string {
	both := func(temp, plain string) string {
		return "if [ \"$kind\" = temp ]; then\n" + temp + "else\n" + plain + "fi\n"
	}
	return helperFuncs + helperProbeTools + `uname -sm
read H N || exit 1
f=./k8stunnel-$(printf %.16s "$H")
` + helperProbeCache + `read what || exit 1
if [ "$what" = send ]; then
` + both(helperUploadBody(`"$PWD"`, true, `head -c "$N"`), helperUploadBody(`"$PWD"`, false, `head -c "$N"`)) + `fi
echo ready
` + both(helperStartBody(`"$PWD"`, true, args), helperStartBody(`"$PWD"`, false, args))
}

// Attach talks p through the start of the helper and returns its stdio.
// ctx bounds only that; p is ended if it fails.
func (l *Launcher) Attach(ctx context.Context, p Process) (*Stdio, error) {
	br := bufio.NewReaderSize(p.Stdout, maxLine)
	h := newStdio(br, p.Stdin, p.Stderr, p.End, p.Wait, l.log, l.cfg.RemoteCmd != "")
	if l.cfg.RemoteCmd != "" {
		return h, nil
	}
	stop := context.AfterFunc(ctx, func() { p.End() })
	err := l.handshake(br, p.Stdin)
	if !stop() {
		err = fmt.Errorf("starting the helper on the node: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, h.failed(err)
	}
	return h, nil
}

func (l *Launcher) handshake(r *bufio.Reader, w io.Writer) error {
	uname, err := readAnswer(r)
	if err != nil {
		return fmt.Errorf("probing the node: %w", err)
	}
	exe, err := l.exeFor(uname)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "%s %d\n", exe.sum, exe.size); err != nil {
		return fmt.Errorf("probing the node: %w", err)
	}
	var lines [3]string
	for i := range lines {
		if lines[i], err = readAnswer(r); err != nil {
			return fmt.Errorf("probing the node: %w", err)
		}
	}
	state, dir, why := lines[0], lines[1], strings.TrimSuffix(lines[2], "; ")
	if !strings.HasPrefix(dir, "/") {
		return fmt.Errorf("probing the node: unexpected answer %q", dir)
	}
	if _, err := helperUseCache(exe, state, dir, why, l.log); err != nil {
		return err
	}
	if strings.HasPrefix(state, "cached") {
		_, err = io.WriteString(w, "skip\n")
	} else {
		err = l.send(w, exe)
	}
	if err != nil {
		return err
	}
	switch ready, err := readAnswer(r); {
	case err != nil:
		return fmt.Errorf("starting the helper on the node: %w", err)
	case ready != "ready":
		return fmt.Errorf("starting the helper on the node: unexpected answer %q", ready)
	}
	return nil
}

func (l *Launcher) send(w io.Writer, exe helperExe) error {
	f, err := os.Open(exe.path)
	if err != nil {
		return fmt.Errorf("reading this executable: %w", err)
	}
	defer f.Close()
	l.log.Info("uploading k8stunnel to the node", "bytes", exe.size, "hash", exe.hash)
	start := time.Now()
	if _, err := io.WriteString(w, "send\n"); err != nil {
		return fmt.Errorf("uploading k8stunnel to the node: %w", err)
	}
	if n, err := io.Copy(w, f); err != nil || n != exe.size {
		return fmt.Errorf("uploading k8stunnel to the node: %d of %d bytes sent: %v", n, exe.size, err)
	}
	l.log.Debug("uploaded k8stunnel to the node", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// readAnswer reads one line the script printed; a line longer than the
// buffer is an error, not something to keep.
func readAnswer(r *bufio.Reader) (string, error) {
	b, err := r.ReadSlice('\n')
	if errors.Is(err, io.EOF) {
		return "", errors.New("the command ended before the node answered")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// failed ends the process after a failed start and explains err: with the
// script's own message and hint when it refused, else with what the node
// said and how the process exited.
func (h *Stdio) failed(err error) error {
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	select {
	case <-h.exited:
	case <-timer.C:
	}
	h.Close()
	err = h.explain(err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if n, ok := exitStatus(h.exitErr); ok && n == refusedStatus && len(h.early) >= 2 {
		said := h.early[len(h.early)-2:]
		return &tui.HintError{Err: errors.New(said[0]), Hint: said[1]}
	}
	return err
}

// Done is closed once the helper's session or process has ended.
func (h *Stdio) Done() <-chan struct{} { return h.exited }

// ExitErr is how it ended, once Done is closed.
func (h *Stdio) ExitErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.exitErr
}
