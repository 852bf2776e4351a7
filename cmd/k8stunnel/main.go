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
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses args, starts what they ask for and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	inv, err := parse(args)
	if err == nil {
		err = start(ctx, inv, args, stdout, stderr)
	}
	return report(err, stderr)
}

// start dispatches a parsed invocation to its subcommand.
func start(ctx context.Context, inv invocation, args []string, stdout, stderr io.Writer) error {
	if inv.output != "" {
		io.WriteString(stdout, inv.output)
		return nil
	}
	switch inv.cmd {
	case cmdServer:
		return runServer(ctx, inv.verbose, stderr)
	case cmdFirewall:
		return runFirewall(stderr)
	case cmdCleanup:
		return runCleanup(stderr)
	case cmdStatus:
		return runStatus(ctx, inv.asJSON, inv.watch, stdout)
	case cmdStop:
		return runStop(ctx, inv.pid, inv.all, stderr)
	case cmdManifest:
		return writeManifest(stdout, inv.manifest)
	case cmdSudoers:
		return runSudoers(inv.sudoersUser, stdout, stderr)
	}
	return runTunnel(ctx, inv, args, stderr)
}

// report prints err, if any, and returns the exit status for it: 2 for a
// usage error (one line), else 1, with a hint line when the error has one.
func report(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "k8stunnel: %s\n", tui.Printable(err.Error()))
		return 2
	}
	// Errors carry what the node and the network said: never raw.
	fmt.Fprintf(stderr, "k8stunnel: error: %s\n", tui.Printable(err.Error()))
	var he *tui.HintError
	if errors.As(err, &he) && he.Hint != "" {
		fmt.Fprintf(stderr, "k8stunnel: hint: %s\n", tui.Printable(he.Hint))
	}
	return 1
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
