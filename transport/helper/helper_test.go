package helper

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/internal/logtest"
	"github.com/k8stunnel/k8stunnel/transport/internal/sshtest"
	"github.com/k8stunnel/k8stunnel/tui"
)

// uploadTestLog gets every record the launcher logs (through logtest.Records).
type uploadTestLog chan slog.Record

// waitLog waits for a record with message msg and returns its attributes as text.
func (h uploadTestLog) waitLog(t *testing.T, msg string) map[string]string {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-h:
			if r.Message != msg {
				continue
			}
			attrs := map[string]string{}
			r.Attrs(func(a slog.Attr) bool {
				attrs[a.Key] = a.Value.String()
				return true
			})
			return attrs
		case <-timeout:
			t.Fatalf("no log record %q", msg)
			return nil
		}
	}
}

// fakeHelper writes a stand-in for k8stunnel: it ignores "server" and echoes
// its stdin. Its comment pads it to a size an impostor can match.
func fakeHelper(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "fake-k8stunnel")
	script := "#!/bin/sh\necho helper started >&2\nexec cat\n#" + strings.Repeat("-", 500) + "\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

func uploadTestEcho(t *testing.T, rwc io.ReadWriteCloser) {
	t.Helper()
	if _, err := rwc.Write([]byte("ping\n")); err != nil {
		t.Fatalf("write to helper: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(rwc, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("read from helper = %q, %v; want the echo", buf, err)
	}
	if err := rwc.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := rwc.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestStartRemoteHelperUploadsOnce(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	nodeHome := t.TempDir()
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), Home: nodeHome})
	c := sshtest.Client(t, srv, signer)

	logs := make(uploadTestLog, 100)
	l := New(Config{Exe: fakeHelper(t), Log: slog.New(logtest.Records(logs)), Args: []string{"-v"}})
	local, err := l.localExe()
	if err != nil {
		t.Fatal(err)
	}
	cached := filepath.Join(nodeHome, ".cache", "k8stunnel", "k8stunnel-"+local.hash)
	ctx := sshtest.Ctx(t)

	rwc, err := l.Start(ctx, c)
	if err != nil {
		t.Fatalf("first Start: %v", err)
	}
	// Until the caller says the helper answered, its stderr is kept for the error that would explain a failure.
	rwc.Started()
	if from := logs.waitLog(t, "helper started")["from"]; from != "node" {
		t.Errorf("helper stderr logged with from=%q, want node", from)
	}
	uploadTestEcho(t, rwc)
	st, err := os.Stat(cached)
	if err != nil {
		t.Fatalf("helper not cached on the node: %v", err)
	}
	if st.Mode().Perm() != 0o700 || st.Size() != local.size {
		t.Errorf("cached helper: mode %v size %d, want 0700 and %d", st.Mode().Perm(), st.Size(), local.size)
	}
	// The dirs made for the cache are this user's alone.
	for _, dir := range []string{filepath.Dir(cached), filepath.Dir(filepath.Dir(cached))} {
		if st, err := os.Stat(dir); err != nil {
			t.Error(err)
		} else if st.Mode().Perm() != 0o700 {
			t.Errorf("%s made with mode %v, want 0700", dir, st.Mode().Perm())
		}
	}
	// A probe, an upload and the helper itself; then a probe and the helper.
	if n := srv.ExecCount(""); n != 3 {
		t.Errorf("%d ssh sessions for a start that uploads, want 3", n)
	}

	rwc, err = l.Start(ctx, c)
	if err != nil {
		t.Fatalf("second Start: %v", err)
	}
	uploadTestEcho(t, rwc)
	if n := srv.ExecCount("cat > "); n != 1 {
		t.Errorf("%d uploads, want 1: the second start must reuse the cache", n)
	}
	if n := srv.ExecCount(""); n != 5 {
		t.Errorf("%d ssh sessions after a start from the cache, want 5 (2 more)", n)
	}

	// A truncated copy (say, from an older k8stunnel) is replaced.
	if err := os.WriteFile(cached, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	rwc, err = l.Start(ctx, c)
	if err != nil {
		t.Fatalf("third Start: %v", err)
	}
	uploadTestEcho(t, rwc)
	if n := srv.ExecCount("cat > "); n != 2 {
		t.Errorf("%d uploads, want 2 after the cache was damaged", n)
	}
}

func TestStartRemoteHelperRemoteCmd(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), Home: t.TempDir()})
	c := sshtest.Client(t, srv, signer)

	rwc, err := New(Config{
		RemoteCmd: "printf '%s|' server",
		Args:      []string{"a b", "it's", "-v"},
	}).Start(sshtest.Ctx(t), c)
	if err != nil {
		t.Fatal(err)
	}
	defer rwc.Close()
	out, err := io.ReadAll(rwc)
	if want := "server|a b|it's|-v|"; string(out) != want || err != nil {
		t.Errorf("helper printed %q, %v; want %q", out, err, want)
	}
	if n := srv.ExecCount("cat > "); n != 0 {
		t.Errorf("%d uploads with --remote-cmd, want 0", n)
	}
}

func TestHelperPlatformMatches(t *testing.T) {
	for _, tc := range []struct {
		uname, goos, goarch string
		want                bool
	}{
		{"Linux x86_64", "linux", "amd64", true},
		{"Linux aarch64", "linux", "arm64", true},
		{"Linux armv7l", "linux", "arm", true},
		{"Linux i686", "linux", "386", true},
		{"Linux riscv64", "linux", "riscv64", true},
		{"Linux aarch64", "linux", "amd64", false},
		{"Darwin arm64", "linux", "arm64", false},
		{"Darwin arm64", "darwin", "arm64", true},
		{"", "linux", "amd64", false},
	} {
		if got := helperPlatformMatches(tc.uname, tc.goos, tc.goarch); got != tc.want {
			t.Errorf("helperPlatformMatches(%q, %s/%s) = %v, want %v", tc.uname, tc.goos, tc.goarch, got, tc.want)
		}
	}
}

func TestExplain(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey(), Home: t.TempDir()})
	c := sshtest.Client(t, srv, signer)

	ch, err := New(Config{RemoteCmd: "echo nope >&2; exit 3; :"}).Start(sshtest.Ctx(t), c)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, ch)
	ch.Close()
	err = ch.Explain(errors.New("handshake"))
	if want := "handshake; on stderr the node said: nope (exit status 3)"; err.Error() != want {
		t.Errorf("Explain = %q, want %q", err, want)
	}
	var he *tui.HintError
	if !errors.As(err, &he) || !strings.Contains(he.Hint, "--remote-cmd") {
		t.Errorf("Explain = %#v, want a hint about --remote-cmd", err)
	}
}
