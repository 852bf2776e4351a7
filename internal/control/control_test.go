//go:build unix

package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dialEnv makes the test binary a client that asks the socket named in it
// for a status and prints what it got: the test runs it as another user.
const dialEnv = "K8STUNNEL_CONTROL_TEST_DIAL"

func TestMain(m *testing.M) {
	if path := os.Getenv(dialEnv); path != "" {
		st, err := Query(path)
		fmt.Printf("pid=%d err=%v\n", st.PID, err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func listen(t *testing.T, dir string) (*Server, chan struct{}) {
	t.Helper()
	stopped := make(chan struct{}, 1)
	s, err := Listen(dir, Handler{
		Status: func() Status { return Status{PID: os.Getpid(), State: "connected", Remote: "root@node1:22"} },
		Stop:   func() { stopped <- struct{}{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, stopped
}

func TestStatusAndStop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "k8stunnel")
	s, stopped := listen(t, dir)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir %v, %v; want mode 0700", fi.Mode(), err)
	}
	if fi, err := os.Lstat(s.Path()); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %v, %v; want a socket, mode 0600", fi.Mode(), err)
	}
	if want := filepath.Join(dir, fmt.Sprint(os.Getpid())+".sock"); s.Path() != want {
		t.Errorf("socket at %s, want %s", s.Path(), want)
	}
	st, err := Query(s.Path())
	if err != nil || st.PID != os.Getpid() || st.State != "connected" || st.Remote != "root@node1:22" {
		t.Fatalf("Query = %+v, %v", st, err)
	}

	// Stop returns once the instance is done, which Close says.
	done := make(chan error, 1)
	go func() { done <- Stop(t.Context(), s.Path()) }()
	<-stopped
	select {
	case err := <-done:
		t.Fatalf("Stop returned before the instance was done: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.Close()
	if err := <-done; err != nil {
		t.Errorf("Stop = %v", err)
	}
	if _, err := os.Lstat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
}

// A peer of another uid gets no answer, even when the file modes would let
// it connect: SO_PEERCRED decides, not only the modes.
func TestOtherUserRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as uid 65534")
	}
	// Somewhere uid 65534 may enter, with a copy of this binary it may run.
	pub, err := os.MkdirTemp("", "k8stunnel-control-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pub) })
	exe := filepath.Join(pub, "control.test")
	b, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(exe, b, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(pub, "run")
	s, _ := listen(t, dir)
	for path, mode := range map[string]os.FileMode{pub: 0o755, dir: 0o755, s.Path(): 0o666} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	as := func(uid uint32) string {
		cmd := exec.Command(exe)
		cmd.Env = []string{dialEnv + "=" + s.Path()}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := as(65534); !strings.HasPrefix(got, "pid=0 err=") || strings.HasSuffix(got, "err=<nil>") {
		t.Errorf("uid 65534 got %q, want no answer", got)
	}
	if got, want := as(0), fmt.Sprintf("pid=%d err=<nil>", os.Getpid()); got != want {
		t.Errorf("root got %q, want %q", got, want)
	}
}

// A socket whose instance was killed (nobody listens) is removed and not
// reported; a live one is.
func TestFindSkipsStale(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "k8stunnel")
	s, _ := listen(t, dir)
	stale := filepath.Join(dir, "999999999.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false) // as a SIGKILL leaves it
	ln.Close()
	other := filepath.Join(dir, "notes.txt.sock")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	found := find([]string{dir, filepath.Join(t.TempDir(), "missing")}, os.Getuid())
	if len(found) != 1 || found[0] != s.Path() {
		t.Errorf("Find = %v, want only %s", found, s.Path())
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket not removed: %v", err)
	}
}

// A runtime directory someone else could enter, or made by someone else, is
// refused.
func TestMakeDirRefusesOpenDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "k8stunnel")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := MakeDir(dir, os.Getuid()); !errors.Is(err, ErrNotOwner) {
		t.Errorf("MakeDir(0755 dir) = %v, want ErrNotOwner", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := MakeDir(dir, os.Getuid()+1); !errors.Is(err, ErrNotOwner) {
		t.Errorf("MakeDir(another uid's dir) = %v, want ErrNotOwner", err)
	}
	link := dir + "-link"
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if err := MakeDir(link, os.Getuid()); !errors.Is(err, ErrNotOwner) {
		t.Errorf("MakeDir(symlink) = %v, want ErrNotOwner", err)
	}
	if _, err := Listen(dir+"-link", Handler{}); err == nil {
		t.Error("Listen in a symlinked dir succeeded")
	}
}

func TestDir(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if d := Dir(1000); d != "/run/user/1000/k8stunnel" {
		t.Errorf("Dir with XDG_RUNTIME_DIR = %s", d)
	}
	if d := Dir(0); d != "/run/k8stunnel" {
		t.Errorf("Dir(0) = %s", d)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("TMPDIR", "/tmp")
	if d := Dir(1000); d != "/tmp/k8stunnel-1000" {
		t.Errorf("Dir without XDG_RUNTIME_DIR = %s", d)
	}
}
