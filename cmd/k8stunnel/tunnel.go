package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/internal/control"
)

// runTunnel is the main job: wire a parsed invocation to this host, then run
// the client until a signal. args are re-run by --daemon's detached child.
func runTunnel(ctx context.Context, inv invocation, args []string, stderr io.Writer) (err error) {
	// x/crypto/ssh allocates every packet it receives afresh: at a Gbit/s that
	// is the client's main garbage. A higher GC target trades a few MB of heap
	// for about 15% less CPU per byte downloaded.
	debug.SetGCPercent(400)
	// One P, as in the helper. A round trip hands each message between
	// goroutines (the relay, yamux's send loop, x/crypto's reader); with a
	// second P every hand-off wakes another thread that spins looking for
	// work. Measured on 2 cores, 64-byte request/response (medians of 5):
	// ~1950 → ~2600 round trips/s, the client's sleeps per round trip 7.3 →
	// 4.2 and its CPU ~180 → ~135 µs; bulk the same speed for 2-10% less CPU
	// per GB. One core encrypts several Gbit/s, as OpenSSH's single-threaded
	// ssh does. GOMAXPROCS set in the environment still wins.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	child := openDaemonChild()
	if err := addTargetFiles(&inv); err != nil {
		return err
	}
	if child == nil {
		for _, n := range inv.notes {
			fmt.Fprintf(stderr, "k8stunnel: %s\n", n)
		}
	}
	if inv.daemon && child == nil {
		return daemonize(inv.logFile, args, stderr)
	}
	// Whatever stops a daemon before the tunnel is up, its parent shows.
	defer func() {
		if err != nil {
			child.failed(err)
		}
	}()
	if inv.logFile != "" && !inv.daemon {
		f, err := openLogFile(inv.logFile)
		if err != nil {
			return fmt.Errorf("opening log file: %w", err)
		}
		defer f.Close()
		stderr = f
	}
	log := newLogger(stderr, inv.verbose)
	inv.logDest = inv.logFile
	switch {
	case inv.syslog:
		if log, err = syslogLogger(inv.verbose); err != nil {
			return err
		}
		inv.logDest = "syslog"
	case child != nil && inv.logFile == "":
		// A daemon's stderr goes nowhere: syslog, else a file status names.
		if l, err := syslogLogger(inv.verbose); err == nil {
			log, inv.logDest = l, "syslog"
			break
		}
		f, path, err := runtimeLogFile()
		if err != nil {
			return err
		}
		defer f.Close()
		log, inv.logDest = newLogger(f, inv.verbose), path
	}
	return runClient(ctx, inv, log, stderr, child)
}

// runtimeDir is where this instance's control socket goes; tests replace it.
var runtimeDir = func() string { return control.Dir(os.Getuid()) }

// runtimeLogFile opens PID.log in the runtime directory, next to the
// control socket, for a daemon that has no other place to log.
func runtimeLogFile() (*os.File, string, error) {
	dir := runtimeDir()
	if err := control.MakeDir(dir, os.Getuid()); err != nil {
		return nil, "", fmt.Errorf("opening a log file: %w", err)
	}
	path := filepath.Join(dir, strconv.Itoa(os.Getpid())+".log")
	f, err := openLogFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("opening a log file: %w", err)
	}
	return f, path, nil
}

// startFirewall starts the privileged helper, through sudo unless we are
// root. Tests replace it, so none can reach sudo or iptables.
var startFirewall = func(ctx context.Context, cfg firewall.HelperConfig) (client.Firewall, error) {
	return firewall.StartHelper(ctx, cfg)
}

func runClient(ctx context.Context, inv invocation, log *slog.Logger, stderr io.Writer, child *daemonChild) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding my own executable: %w", err)
	}
	cfg := inv.cfg
	var pidErr error
	trc := inv.transport
	trc.Helper.Exe = exe
	trc.Log = log
	cfg.Transport, err = newTransport(inv.sshCmd, trc)
	if err != nil {
		return err
	}
	cfg.Log = log
	cfg.OnReady = func() {
		if inv.pidfile != "" {
			if pidErr = writePidfile(inv.pidfile); pidErr != nil {
				log.Error("cannot write pidfile", "err", pidErr)
			}
		}
		child.ready()
	}
	started := false // the first start may ask for sudo's password; restarts may not
	cfg.StartFirewall = func(ctx context.Context) (client.Firewall, error) {
		noPrompt := started
		started = true
		return startFirewall(ctx, firewall.HelperConfig{Exe: exe, Sudo: true, NoPrompt: noPrompt, Log: log, Stderr: stderr})
	}
	c, err := client.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	// A tunnel without its socket still runs; status just cannot see it.
	if srv, err := serveControl(c, inv.logDest, func() { stop(errStopRequested) }); err == nil {
		// Closed once the rules are gone: a waiting `k8stunnel stop` returns then.
		defer srv.Close()
	} else {
		log.Warn("no control socket; k8stunnel status will not show this tunnel", "err", err)
	}
	err = c.Run(ctx)
	if inv.pidfile != "" && pidErr == nil {
		os.Remove(inv.pidfile)
	}
	return err
}
