//go:build linux

package helper

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/k8stunnel/k8stunnel/internal/logtest"
	"github.com/k8stunnel/k8stunnel/transport/internal/sshtest"
	"github.com/k8stunnel/k8stunnel/tui"
)

// cacheTest is a node (opts.Home, a fresh dir if unset) and a Launcher of a
// fake helper, for the tests of the cache on the node.
type cacheTest struct {
	srv   *sshtest.Server
	c     *ssh.Client
	l     *Launcher
	exe   helperExe
	logs  uploadTestLog
	cache string // where in the home the helper is cached
}

func newCacheTest(t *testing.T, opts sshtest.Options) *cacheTest {
	t.Helper()
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	opts.Key = signer.PublicKey()
	if opts.Home == "" {
		opts.Home = t.TempDir()
	}
	ct := &cacheTest{srv: sshtest.Start(t, opts), logs: make(uploadTestLog, 100)}
	ct.c = sshtest.Client(t, ct.srv, signer)
	ct.l = New(Config{Exe: fakeHelper(t), Log: slog.New(logtest.Records(ct.logs))})
	var err error
	if ct.exe, err = ct.l.localExe(); err != nil {
		t.Fatal(err)
	}
	ct.cache = filepath.Join(opts.Home, ".cache", "k8stunnel")
	return ct
}

// start starts the helper, checks that it echoes and waits for it to exit.
func (ct *cacheTest) start(t *testing.T) {
	t.Helper()
	h, err := ct.l.Start(sshtest.Ctx(t), ct.c)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	uploadTestEcho(t, h)
	ct.srv.WaitExecs()
}

func (ct *cacheTest) uploads() int { return ct.srv.ExecCount("cat > ") }

// writeImpostor puts a script of the helper's size in the cache that, if
// run, leaves a marker file, whose path it returns.
func (ct *cacheTest) writeImpostor(t *testing.T) string {
	t.Helper()
	marker := filepath.Join(t.TempDir(), "impostor-ran")
	impostor := "#!/bin/sh\n: > " + marker + "\nexec cat\n"
	impostor += "#" + strings.Repeat("x", int(ct.exe.size)-len(impostor)-2) + "\n"
	if int64(len(impostor)) != ct.exe.size {
		t.Fatalf("impostor is %d bytes, the helper %d", len(impostor), ct.exe.size)
	}
	if err := os.MkdirAll(ct.cache, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ct.cache, "k8stunnel-"+ct.exe.hash), []byte(impostor), 0o700); err != nil {
		t.Fatal(err)
	}
	return marker
}

func TestCachedImpostorIsNotRun(t *testing.T) {
	ct := newCacheTest(t, sshtest.Options{})
	// Someone who could write to the cache left a script of the helper's size.
	marker := ct.writeImpostor(t)
	ct.start(t)
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the same-size impostor in the cache was run (%v)", err)
	}
	if n := ct.uploads(); n != 1 {
		t.Errorf("%d uploads, want 1: the impostor must be replaced", n)
	}
	want, _ := os.ReadFile(ct.exe.path)
	if got, _ := os.ReadFile(filepath.Join(ct.cache, "k8stunnel-"+ct.exe.hash)); string(got) != string(want) {
		t.Errorf("the cache still holds the impostor")
	}
}

// The check that counts is the one in the step that runs the helper: a copy
// swapped after the probe found it good is not run either.
func TestHelperSwappedAfterProbeIsNotRun(t *testing.T) {
	var ct *cacheTest
	var swap bool
	var marker string
	ct = newCacheTest(t, sshtest.Options{Shell: func(command string) *exec.Cmd {
		if swap && strings.Contains(command, `" server`) && !strings.Contains(command, "uname") {
			marker = ct.writeImpostor(t)
		}
		return exec.Command("sh", "-c", command)
	}})
	ct.start(t)
	swap = true
	h, err := ct.l.Start(sshtest.Ctx(t), ct.c)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	// Our end of stdin closed, a helper (or an impostor echoing it) ends.
	h.stdin.Close()
	io.Copy(io.Discard, h)
	h.Close()
	ct.srv.WaitExecs()
	if marker == "" {
		t.Fatal("the helper was not swapped")
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the helper swapped after the probe was run (%v)", err)
	}
	if err := h.Explain(errors.New("no handshake")); !strings.Contains(err.Error(), "is not this k8stunnel") {
		t.Errorf("Explain = %v, want it to say the cached helper is not this k8stunnel", err)
	}
}

func TestCacheDirNotPrivateIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode os.FileMode
		uid  int
		hint string
	}{
		{"world-writable", 0o777, -1, "chmod 700"},
		{"group-writable", 0o770, -1, "chmod 700"},
		{"someone else's", 0o700, 65534, "remove it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := newCacheTest(t, sshtest.Options{})
			if err := os.MkdirAll(ct.cache, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(ct.cache, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.uid >= 0 {
				if os.Getuid() != 0 {
					t.Skip("needs root to give the cache dir to another user")
				}
				if err := os.Chown(ct.cache, tc.uid, -1); err != nil {
					t.Fatal(err)
				}
			}
			_, err := ct.l.Start(sshtest.Ctx(t), ct.c)
			var he *tui.HintError
			if err == nil || !strings.Contains(err.Error(), ct.cache) || !errors.As(err, &he) ||
				!strings.Contains(he.Hint, tc.hint) {
				t.Fatalf("Start = %v, want an error naming %s with a hint to %s", err, ct.cache, tc.hint)
			}
			if n := ct.uploads(); n != 0 {
				t.Errorf("%d uploads into a refused cache, want 0", n)
			}
		})
	}
}

// TestCacheFallback gives the node a home it cannot use (read-only or
// noexec) in a mount namespace of each session's own, so the test can run
// as root, whom permissions would not stop.
func TestCacheFallback(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for a mount namespace with a read-only home")
	}
	for _, tc := range []struct {
		name   string
		home   string // mount options for the home
		shm    string // mount options for /dev/shm (a dir of the test's)
		runDir bool   // whether XDG_RUNTIME_DIR is set
		want   string // where the helper goes: run, shm or tmp (a new dir each run)
	}{
		{"read-only home", "ro", "", true, "run"},
		{"noexec home", "noexec", "", false, "shm"},
		{"read-only home and noexec shm", "ro", "noexec", false, "tmp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			top := t.TempDir()
			home, run, shm, tmp := filepath.Join(top, "home"), filepath.Join(top, "run"), filepath.Join(top, "shm"), filepath.Join(top, "tmp")
			for _, d := range []string{home, run, shm, tmp} {
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			mounts := "mount -o bind," + tc.home + " $HOME $HOME && mount -o bind" + prefixed(",", tc.shm) + " " + shm + " /dev/shm"
			env := []string{"TMPDIR=" + tmp}
			if tc.runDir {
				env = append(env, "XDG_RUNTIME_DIR="+run)
			}
			ct := newCacheTest(t, sshtest.Options{Home: home, Env: env, Shell: func(command string) *exec.Cmd {
				cmd := exec.Command("sh", "-c", mounts+` && exec sh -c "$0"`, command)
				cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
				return cmd
			}})
			var dir, said string // where the helper is, seen from here and from the node
			switch tc.want {
			case "run":
				dir = filepath.Join(run, "k8stunnel")
				said = dir
			case "shm":
				dir = filepath.Join(shm, "k8stunnel-0")
				said = "/dev/shm/k8stunnel-0"
			}

			for i := 1; i <= 2; i++ {
				ct.start(t)
				msg := "the helper is cached outside the node's home"
				if dir == "" {
					msg = "the helper runs from a temporary directory on the node, uploaded each run"
				}
				if logged := ct.logs.waitLog(t, msg); dir != "" && logged["dir"] != said || !strings.Contains(logged["why"], ct.cache) {
					t.Errorf("start %d logged %q %v, want dir %s and why naming %s", i, msg, logged, said, ct.cache)
				}
				wantUploads := 1
				if dir == "" {
					wantUploads = i
					if left, _ := os.ReadDir(tmp); len(left) != 0 {
						t.Errorf("after start %d the node's temporary dir still holds %v", i, left)
					}
				} else if st, err := os.Stat(filepath.Join(dir, "k8stunnel-"+ct.exe.hash)); err != nil || st.Mode().Perm() != 0o700 {
					t.Errorf("after start %d the helper is not in %s with mode 0700 (%v)", i, dir, err)
				}
				if n := ct.uploads(); n != wantUploads {
					t.Errorf("%d uploads after start %d, want %d", n, i, wantUploads)
				}
			}
			if _, err := os.Stat(ct.cache); !errors.Is(err, os.ErrNotExist) && tc.home == "ro" {
				t.Errorf("a cache was made in the read-only home (%v)", err)
			}
		})
	}
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func TestNodeWithoutSha256sum(t *testing.T) {
	// A node with the tools the scripts use, but sha256sum.
	bin := t.TempDir()
	for _, tool := range []string{"sh", "id", "uname", "mkdir", "ls", "chmod", "rm", "mktemp", "cat", "mv"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	ct := newCacheTest(t, sshtest.Options{Env: []string{"PATH=" + bin}})
	_, err := ct.l.Start(sshtest.Ctx(t), ct.c)
	var he *tui.HintError
	if err == nil || !strings.Contains(err.Error(), "sha256sum") || !errors.As(err, &he) || !strings.Contains(he.Hint, "--remote-cmd") {
		t.Fatalf("Start = %v, want an error about sha256sum with a hint to use --remote-cmd", err)
	}
	if n := ct.uploads(); n != 0 {
		t.Errorf("%d uploads to a node that cannot check them, want 0", n)
	}
}

// The probe hands back the cache's path as it is, whatever it holds: dash's
// echo would make a tab of the \t here.
func TestCachePathWithBackslash(t *testing.T) {
	home := filepath.Join(t.TempDir(), `a\tb`)
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	ct := newCacheTest(t, sshtest.Options{Home: home})
	ct.start(t)
	ct.start(t)
	if n := ct.uploads(); n != 1 {
		t.Errorf("%d uploads, want 1", n)
	}
}
