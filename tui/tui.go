// Package tui is what talks to the person at the terminal: errors that say
// how to fix them, the check that someone is there to ask, the passphrase
// prompt, and quoting for the commands hints suggest. The CLI, the SSH dialer
// and the firewall helper all need it, and none of them should own it.
package tui

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/term"
)

// ErrNoTerminal says nobody can be asked: stdin is no terminal, or we are not
// its foreground job.
var ErrNoTerminal = errors.New("no terminal to ask on")

// HintError is an error the user can fix; Hint says how. The CLI prints the
// error and then the hint on a line of its own.
type HintError struct {
	Err  error
	Hint string
}

func (e *HintError) Error() string { return e.Err.Error() }
func (e *HintError) Unwrap() error { return e.Err }

// CanPrompt reports whether we may ask the user something: stdin is a
// terminal and we are its foreground job. A background job (`k8stunnel ... &`)
// that read the terminal would be stopped by SIGTTIN, and a service has none.
func CanPrompt() bool {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return false
	}
	return isForeground(fd)
}

// Password asks on /dev/tty with echo off, but only when CanPrompt; otherwise
// it returns ErrNoTerminal. A cancelled ctx ends the wait and restores echo.
func Password(ctx context.Context, prompt string) ([]byte, error) {
	if !CanPrompt() {
		return nil, ErrNoTerminal
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, ErrNoTerminal
	}
	fd := int(tty.Fd())
	state, err := term.GetState(fd)
	if err != nil {
		tty.Close()
		return nil, ErrNoTerminal
	}
	fmt.Fprint(tty, prompt)
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer tty.Close()
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(tty)
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-ctx.Done():
		// Leaving echo off would break the user's shell after we exit.
		term.Restore(fd, state)
		return nil, context.Cause(ctx)
	}
}

// Ask calls prompt, but lets a cancelled ctx win over a prompt that never
// returns.
func Ask(ctx context.Context, prompt func(string) ([]byte, error), text string) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := prompt(text)
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// Quote quotes s for a POSIX shell, leaving plain words alone so hints stay
// readable.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-./:@%+=,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Printable makes s safe to print on a terminal as one line: control
// characters (escape sequences that could set the title, the clipboard or
// hide text, and newlines) and invalid UTF-8 are shown escaped. Errors carry
// text from the node and the network; none of it may drive the terminal.
func Printable(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\t':
			b.WriteRune(' ')
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
