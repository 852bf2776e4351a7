package tui

import (
	"context"
	"errors"
	"os"
	"testing"
)

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/root/.ssh/known_hosts": "/root/.ssh/known_hosts",
		"[10.0.0.1]:2222":        "'[10.0.0.1]:2222'",
		"a b":                    "'a b'",
		"it's":                   `'it'\''s'`,
		"":                       "''",
		"$HOME":                  "'$HOME'",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
}

// pipeStdin makes stdin a pipe, whatever ran the tests.
func pipeStdin(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin := os.Stdin
	os.Stdin = r
	t.Cleanup(func() { os.Stdin = stdin; r.Close(); w.Close() })
}

func TestNoTerminal(t *testing.T) {
	pipeStdin(t)
	if CanPrompt() {
		t.Error("CanPrompt with stdin a pipe")
	}
	if _, err := Password(t.Context(), "passphrase: "); !errors.Is(err, ErrNoTerminal) {
		t.Errorf("Password = %v, want ErrNoTerminal", err)
	}
}

func TestAskCancelled(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := Ask(ctx, func(string) ([]byte, error) { <-block; return nil, nil }, "?")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Ask = %v, want context.Canceled", err)
	}
}

func TestHintError(t *testing.T) {
	inner := errors.New("boom")
	err := error(&HintError{Err: inner, Hint: "try again"})
	if err.Error() != "boom" || !errors.Is(err, inner) {
		t.Errorf("HintError = %q, want it to read and unwrap as its Err", err)
	}
}

func TestAskAnswered(t *testing.T) {
	var asked string
	b, err := Ask(t.Context(), func(text string) ([]byte, error) { asked = text; return []byte("secret"), nil }, "passphrase: ")
	if err != nil || string(b) != "secret" || asked != "passphrase: " {
		t.Errorf("Ask = %q, %v (asked %q); want the prompt's answer to the text given", b, err, asked)
	}
	failure := errors.New("no such key")
	if _, err := Ask(t.Context(), func(string) ([]byte, error) { return nil, failure }, "?"); !errors.Is(err, failure) {
		t.Errorf("Ask = %v, want the prompt's error", err)
	}
}

func TestAskCancelledCause(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	cause := errors.New("shutting down")
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(cause)
	if _, err := Ask(ctx, func(string) ([]byte, error) { <-block; return nil, nil }, "?"); !errors.Is(err, cause) {
		t.Errorf("Ask = %v, want the ctx's cause", err)
	}
}
