package sshdial

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/k8stunnel/k8stunnel/tui"
)

const sshAskpassDefault = "/usr/bin/ssh-askpass"

// readPass asks for a passphrase or password as OpenSSH's read_passphrase
// (readpass.c) does: SSH_ASKPASS_REQUIRE=force always runs SSH_ASKPASS,
// =prefer runs it when DISPLAY or WAYLAND_DISPLAY is set, =never never does;
// unset, it runs only when there is no terminal to ask on and a display is
// set. Otherwise tty asks on the terminal.
func readPass(ctx context.Context, lu localUser, prompt string, tty func(context.Context, string) ([]byte, error)) ([]byte, error) {
	allow := os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != ""
	use := false
	switch strings.ToLower(os.Getenv("SSH_ASKPASS_REQUIRE")) {
	case "force":
		use, allow = true, true
	case "prefer":
		use = allow
	case "never":
		allow = false
	}
	if !use {
		b, err := tty(ctx, prompt)
		if !errors.Is(err, tui.ErrNoTerminal) || !allow {
			return b, err
		}
	}
	return askpass(ctx, lu, prompt)
}

// askpass runs SSH_ASKPASS with the prompt as its argument, as the local
// user, and takes the first line it prints.
func askpass(ctx context.Context, lu localUser, prompt string) ([]byte, error) {
	prog := os.Getenv("SSH_ASKPASS")
	if prog == "" {
		prog = sshAskpassDefault
	}
	cmd := exec.CommandContext(ctx, prog, prompt)
	cmd.SysProcAttr = sysProcAttr(lu)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("running SSH_ASKPASS %s: %w", prog, err)
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	return bytes.TrimSuffix(line, []byte("\r")), nil
}
