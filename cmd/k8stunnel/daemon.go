package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/k8stunnel/k8stunnel/tui"
)

// daemonEnv marks the detached child of --daemon; its value is the fd of the
// pipe on which the child reports "ready" or why it failed.
const daemonEnv = "K8STUNNEL_DAEMON_FD"

// daemonize starts this command again, detached in a new session, and waits
// until it reports that the tunnel is up, so a first connection that fails
// still fails here, with its error and a non-zero exit status.
func daemonize(logFile string, args []string, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding my own executable: %w", err)
	}
	out, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if logFile != "" {
		out, err = openLogFile(logFile)
	}
	if err != nil {
		return fmt.Errorf("opening log file: %w", err)
	}
	defer out.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("starting the daemon: %w", err)
	}
	w.Close()
	report := bufio.NewReader(r)
	line, _ := report.ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "ready" {
		fmt.Fprintf(stderr, "k8stunnel: running in the background, pid %d\n", cmd.Process.Pid)
		cmd.Process.Release()
		return nil
	}
	hint, _ := report.ReadString('\n')
	cmd.Wait()
	if line == "" {
		line = "the daemon exited before the tunnel came up"
		if logFile != "" {
			line += "; see " + logFile
		}
	}
	if hint = strings.TrimSpace(hint); hint != "" {
		return &tui.HintError{Err: errors.New(line), Hint: hint}
	}
	return errors.New(line)
}

// daemonChild is the detached side: it reports to the waiting parent.
type daemonChild struct{ report *os.File }

func openDaemonChild() *daemonChild {
	fd, err := strconv.Atoi(os.Getenv(daemonEnv))
	if err != nil {
		return nil
	}
	os.Unsetenv(daemonEnv) // not for the firewall helper
	return &daemonChild{report: os.NewFile(uintptr(fd), "daemon-report")}
}

func (d *daemonChild) ready() {
	if d != nil && d.report != nil {
		fmt.Fprintln(d.report, "ready")
		d.report.Close()
		d.report = nil
	}
}

// failed reports err in one line and, when it has a hint, the hint in a
// second one.
func (d *daemonChild) failed(err error) {
	if d != nil && d.report != nil {
		fmt.Fprintln(d.report, strings.ReplaceAll(err.Error(), "\n", " "))
		var he *tui.HintError
		if errors.As(err, &he) && he.Hint != "" {
			fmt.Fprintln(d.report, strings.ReplaceAll(he.Hint, "\n", " "))
		}
		d.report.Close()
		d.report = nil
	}
}

// dialSyslog connects to the local syslog daemon; tests replace it.
var dialSyslog = func() (io.Writer, error) { return syslog.New(syslog.LOG_INFO|syslog.LOG_DAEMON, "k8stunnel") }

// syslogLogger sends records to the local syslog daemon.
func syslogLogger(verbose int) (*slog.Logger, error) {
	w, err := dialSyslog()
	if err != nil {
		return nil, fmt.Errorf("connecting to syslog: %w", err)
	}
	return newLogger(w, verbose, dropTime), nil
}

// writePidfile writes pid atomically.
//
// Run as root in a directory others can write to, a predictable temp name
// or a followed symlink would let them make us overwrite any file: the temp
// file gets a random name and is created exclusively, and the rename
// replaces whatever is at path (a symlink included) without following it.
func writePidfile(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing pidfile: %w", err)
	}
	tmp := f.Name()
	_, err = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	err = errors.Join(err, f.Chmod(0o644), f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing pidfile: %w", err)
	}
	return nil
}

// openLogFile opens --log-file for appending, creating it 0600: it holds
// the addresses the user connects to. A symlink is refused, not followed.
func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; name the file itself", path)
	}
	return f, err
}
