//go:build unix

package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/k8stunnel/k8stunnel/tui"
)

// reportPipe is a daemonChild writing to a pipe, and the pipe's other end.
func reportPipe(t *testing.T) (*daemonChild, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &daemonChild{report: w}, r
}

func TestDaemonChildReady(t *testing.T) {
	d, r := reportPipe(t)
	d.ready()
	d.ready()                    // once only
	d.failed(errors.New("late")) // after ready, nothing more
	if got, _ := io.ReadAll(r); string(got) != "ready\n" {
		t.Errorf("report = %q, want %q", got, "ready\n")
	}
}

func TestDaemonChildFailed(t *testing.T) {
	d, r := reportPipe(t)
	d.failed(&tui.HintError{Err: errors.New("helper died:\nstderr line"), Hint: "run\nk8stunnel cleanup"})
	d.ready()
	want := "helper died: stderr line\nrun k8stunnel cleanup\n"
	if got, _ := io.ReadAll(r); string(got) != want {
		t.Errorf("report = %q, want %q", got, want)
	}

	d, r = reportPipe(t)
	d.failed(errors.New("no hint"))
	if got, _ := io.ReadAll(r); string(got) != "no hint\n" {
		t.Errorf("report = %q, want %q", got, "no hint\n")
	}

	var none *daemonChild // not a daemon: both are no-ops
	none.ready()
	none.failed(errors.New("x"))
}

func TestOpenDaemonChild(t *testing.T) {
	t.Setenv(daemonEnv, "")
	if d := openDaemonChild(); d != nil {
		t.Errorf("openDaemonChild() = %v without %s", d, daemonEnv)
	}
	_, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// A copy of the descriptor, since the child closes it.
	fd, err := syscall.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(daemonEnv, strconv.Itoa(fd))
	d := openDaemonChild()
	if d == nil || d.report == nil || d.report.Fd() != uintptr(fd) {
		t.Fatalf("openDaemonChild() = %+v, want the report on fd %d", d, fd)
	}
	d.ready()
	if v, ok := os.LookupEnv(daemonEnv); ok {
		t.Errorf("%s=%q left for the firewall helper", daemonEnv, v)
	}
}

func TestWritePidfile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k8stunnel.pid")
	// Another user's traps: the old predictable temp name and a symlink at
	// the path itself, both pointing at a file that must stay untouched.
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, trap := range []string{path + ".tmp", path} {
		if err := os.Symlink(victim, trap); err != nil {
			t.Fatal(err)
		}
	}
	if err := writePidfile(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if want := strconv.Itoa(os.Getpid()) + "\n"; err != nil || string(got) != want {
		t.Errorf("pidfile = %q, %v; want %q", got, err, want)
	}
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Errorf("pidfile is %v, %v; want a regular file, mode 0644", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("the symlinks' target was written: %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".k8stunnel.pid.*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	missing := filepath.Join(dir, "missing", "k8stunnel.pid")
	if err := writePidfile(missing); err == nil || !strings.HasPrefix(err.Error(), "writing pidfile: ") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("writePidfile(%s) = %v", missing, err)
	}
}

func TestOpenLogFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k8stunnel.log")
	f, err := openLogFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("log file mode %v, %v; want 0600", fi.Mode(), err)
	}
	link := filepath.Join(dir, "link.log")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if f, err := openLogFile(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		if f != nil {
			f.Close()
		}
		t.Errorf("openLogFile(symlink) = %v, want a refusal", err)
	}
}

// Whatever stops the daemon child before the tunnel is up reaches its
// parent, the missing syslog included; without --log-file and syslog it logs
// to a file in the runtime dir.
func TestDaemonChildReportsEveryError(t *testing.T) {
	dialSyslog = func() (io.Writer, error) { return nil, errors.New("no /dev/log") }
	t.Cleanup(func() { dialSyslog = func() (io.Writer, error) { return nil, errors.New("restored by the test") } })
	dir := filepath.Join(t.TempDir(), "k8stunnel")
	old := runtimeDir
	runtimeDir = func() string { return dir }
	t.Cleanup(func() { runtimeDir = old })
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--syslog"}, "connecting to syslog: no /dev/log\n"},
		{nil, "listening on 192.0.2.1:5000: listen tcp4 192.0.2.1:5000: bind: cannot assign requested address\n"},
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		fd, err := syscall.Dup(int(w.Fd())) // the child closes it
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(daemonEnv, strconv.Itoa(fd))
		inv, err := parse(append([]string{"--daemon", "-r", "node1", "-l", "192.0.2.1:5000", "10.0.0.0/8"}, tc.args...))
		if err != nil {
			t.Fatal(err)
		}
		runTunnel(t.Context(), inv, nil, io.Discard)
		got, _ := io.ReadAll(r)
		r.Close()
		if string(got) != tc.want {
			t.Errorf("%q: the parent was told %q, want %q", tc.args, got, tc.want)
		}
	}
	logFile := filepath.Join(dir, strconv.Itoa(os.Getpid())+".log")
	if fi, err := os.Stat(logFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("daemon log in the runtime dir: %v, %v; want %s, mode 0600", fi, err, logFile)
	}
}
