package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
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
	if err := writePidfile(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if want := strconv.Itoa(os.Getpid()) + "\n"; err != nil || string(got) != want {
		t.Errorf("pidfile = %q, %v; want %q", got, err, want)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	missing := filepath.Join(dir, "missing", "k8stunnel.pid")
	if err := writePidfile(missing); err == nil || err.Error() != "writing pidfile: open "+missing+".tmp: no such file or directory" {
		t.Errorf("writePidfile(%s) = %v", missing, err)
	}
}
