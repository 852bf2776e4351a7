// Command k8stunnel reaches a Kubernetes cluster's service and pod IPs from a
// laptop or VM through one SSH connection to a node.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/k8stunnel/k8stunnel/tui"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err == nil {
		return
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(os.Stderr, "k8stunnel: %v\n", err)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "k8stunnel: error: %v\n", err)
	var he *tui.HintError
	if errors.As(err, &he) && he.Hint != "" {
		fmt.Fprintf(os.Stderr, "k8stunnel: hint: %s\n", he.Hint)
	}
	os.Exit(1)
}

// run dispatches to a subcommand; the tunnel itself is the default.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "server":
			return runServer(ctx, args[1:], stderr)
		case "firewall":
			return runFirewall(ctx, args[1:], stderr)
		case "cleanup":
			return runCleanup(ctx, args[1:], stderr)
		}
	}
	return runTunnel(ctx, args, stderr)
}

// usageError is a mistake on the command line: one line, exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

func newLogger(w io.Writer, verbose int, replace ...func([]string, slog.Attr) slog.Attr) *slog.Logger {
	level := slog.LevelInfo
	if verbose > 0 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if len(replace) > 0 {
		opts.ReplaceAttr = replace[0]
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// dropTime leaves the time out of records whose receiver stamps its own
// (syslog, the client relaying the helper's lines).
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}
