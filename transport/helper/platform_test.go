//go:build linux

package helper

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/k8stunnel/k8stunnel/internal/logtest"
	"github.com/k8stunnel/k8stunnel/transport/internal/sshtest"
	"github.com/k8stunnel/k8stunnel/tui"
)

// fakeUname is a PATH entry whose uname says machine, as on an arm64 node.
func fakeUname(t *testing.T, machine string) string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\n[ \"$1\" = -sm ] && { echo Linux " + machine + "; exit; }\nexec /bin/uname \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "uname"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return "PATH=" + dir + ":" + os.Getenv("PATH")
}

// platformTest is a node that says it is aarch64, and a Launcher whose own
// executable sits in a dir of its own, where a test may put other builds.
func platformTest(t *testing.T, cfg Config) (*cacheTest, string) {
	t.Helper()
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	home := t.TempDir()
	ct := &cacheTest{srv: sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), Home: home, Env: []string{fakeUname(t, "aarch64")}}),
		logs: make(uploadTestLog, 100), cache: filepath.Join(home, ".cache", "k8stunnel")}
	ct.c = sshtest.Client(t, ct.srv, signer)
	dir := t.TempDir()
	cfg.Exe = filepath.Join(dir, "k8stunnel")
	if err := os.Rename(fakeHelper(t), cfg.Exe); err != nil {
		t.Fatal(err)
	}
	cfg.Log = slog.New(logtest.Records(ct.logs))
	ct.l = New(cfg)
	return ct, dir
}

// otherBuild writes a helper that differs from fakeHelper, so its hash shows
// which one the node got.
func otherBuild(t *testing.T, path string) helperExe {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexec cat\n# another build\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := helperLocalExe(path)
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

func (ct *cacheTest) cached(t *testing.T, exe helperExe) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(ct.cache, "k8stunnel-"+exe.hash))
	return err == nil
}

// An arm64 node gets k8stunnel-linux-arm64 from next to this executable.
func TestOtherPlatformUsesTheBuildNextToIt(t *testing.T) {
	ct, dir := platformTest(t, Config{})
	arm := otherBuild(t, filepath.Join(dir, "k8stunnel-linux-arm64"))
	ct.start(t)
	if !ct.cached(t, arm) {
		t.Errorf("the node did not get k8stunnel-linux-arm64 (hash %s)", arm.hash)
	}
	if n := ct.uploads(); n != 1 {
		t.Errorf("%d uploads, want 1", n)
	}
}

// Without such a build the error names the node's platform and both fixes.
func TestOtherPlatformWithoutABuild(t *testing.T) {
	ct, dir := platformTest(t, Config{})
	_, err := ct.l.Start(sshtest.Ctx(t), ct.c)
	var he *tui.HintError
	want := "the node runs Linux aarch64, this k8stunnel is "
	if !errors.As(err, &he) || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), filepath.Join(dir, "k8stunnel-linux-arm64")) ||
		!strings.Contains(he.Hint, "make dist") || !strings.Contains(he.Hint, "--helper FILE") {
		t.Errorf("Start: %v (hint %v); want %q..., naming k8stunnel-linux-arm64, with a hint naming make dist and --helper", err, he, want)
	}
	if n := ct.uploads(); n != 0 {
		t.Errorf("%d uploads, want none", n)
	}
}

// --helper FILE is uploaded whatever the node runs, after one probe.
func TestHelperFlagIsUploaded(t *testing.T) {
	file := filepath.Join(t.TempDir(), "my-build")
	ct, dir := platformTest(t, Config{Helper: file})
	given := otherBuild(t, file)
	otherBuild(t, filepath.Join(dir, "k8stunnel-linux-arm64")) // not this one
	ct.start(t)
	if !ct.cached(t, given) {
		t.Errorf("the node did not get the --helper file (hash %s)", given.hash)
	}
	if n := ct.srv.ExecCount("uname -sm"); n != 1 {
		t.Errorf("%d probes, want 1", n)
	}
}
