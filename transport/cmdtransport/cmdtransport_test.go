package cmdtransport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/transport/helper"
	"github.com/k8stunnel/k8stunnel/tui"
)

// The commands these tests run live in root-only temp dirs: under `sudo make
// test` they must not run as the user who ran sudo (runAsInvoker).
func TestMain(m *testing.M) {
	for _, k := range []string{"SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND", "SUDO_HOME"} {
		os.Unsetenv(k)
	}
	os.Exit(m.Run())
}

// lockedBuffer is a log destination goroutines may share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// node is a stand-in for `kubectl exec -i POD --`: it ignores the host and
// runs the line it is given with sh, in a home of its own.
type node struct {
	home, cmd string
	log       *lockedBuffer
}

func newNode(t *testing.T) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{home: filepath.Join(dir, "home"), log: &lockedBuffer{}}
	if err := os.Mkdir(n.home, 0o700); err != nil {
		t.Fatal(err)
	}
	n.cmd = writeScript(t, filepath.Join(dir, "exec-on-node"),
		`[ "$2" = -- ] || { echo "want HOST -- COMMAND, got $*" >&2; exit 9; }`+"\n"+
			`HOME=`+n.home+` exec sh -c "$3"`+"\n")
	return n
}

func (n *node) transport(t *testing.T, cfg helper.Config) *Transport {
	t.Helper()
	tr, err := New(Config{Command: n.cmd, Remote: "root@node1", Helper: cfg,
		Log: slog.New(slog.NewTextHandler(n.log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoHelper stands in for k8stunnel server: it echoes stdin.
func echoHelper(t *testing.T) string {
	return writeScript(t, filepath.Join(t.TempDir(), "k8stunnel"), "echo helper started >&2\nexec cat\n")
}

func echoes(t *testing.T, rw io.ReadWriter) {
	t.Helper()
	if _, err := rw.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(rw, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("read %q, %v; want the echo", buf, err)
	}
}

// One run of the command probes, uploads and starts the helper; the next
// finds it cached.
func TestConnectUploadsOnceThenUsesTheCache(t *testing.T) {
	n := newNode(t)
	exe := echoHelper(t)
	tr := n.transport(t, helper.Config{Exe: exe})
	for i := range 2 {
		l, err := tr.Connect(ctx(t))
		if err != nil {
			t.Fatalf("Connect %d: %v\n%s", i, err, n.log)
		}
		if l.Server().IsValid() || l.Remote() != "root@node1 via "+n.cmd {
			t.Errorf("Server %v, Remote %q; want none and root@node1 via the command", l.Server(), l.Remote())
		}
		ch, err := l.Open(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		ch.Started()
		echoes(t, ch)
		if _, err := l.Open(ctx(t)); err == nil {
			t.Error("a second Open on one run of the command worked")
		}
		l.Close()
		l.Close()
		select {
		case <-l.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the link is not done after Close")
		}
	}
	log := n.log.String()
	if c := strings.Count(log, "uploading k8stunnel to the node"); c != 1 {
		t.Errorf("%d uploads, want 1:\n%s", c, log)
	}
	if c := strings.Count(log, "the firewall exempts no address"); c != 1 {
		t.Errorf("said %d times that -e exempts nothing, want once:\n%s", c, log)
	}
	entries, _ := os.ReadDir(filepath.Join(n.home, ".cache", "k8stunnel"))
	if len(entries) != 1 || !strings.HasPrefix(entries[0].Name(), "k8stunnel-") {
		t.Errorf("the cache holds %v, want the helper alone", entries)
	}
}

// The link ends when the command does, and says so.
func TestLinkEndsWithTheCommand(t *testing.T) {
	n := newNode(t)
	helperExe := writeScript(t, filepath.Join(t.TempDir(), "k8stunnel"), "read line; exit 4\n")
	l, err := n.transport(t, helper.Config{Exe: helperExe}).Connect(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, _ := l.Open(ctx(t))
	ch.Started()
	ch.Write([]byte("bye\n"))
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the link is not done after the command exited")
	}
	if err := l.Err(); err == nil || !strings.Contains(err.Error(), "exit status 4") {
		t.Errorf("Err = %v, want the command's exit status 4", err)
	}
}

// A command that fails says what it said and how it exited.
func TestConnectExplainsAFailingCommand(t *testing.T) {
	fail := writeScript(t, filepath.Join(t.TempDir(), "ssh"), "echo 'ssh: connect to host node1 port 22: Connection refused' >&2; exit 255\n")
	tr, err := New(Config{Command: fail, Remote: "node1", Helper: helper.Config{Exe: echoHelper(t)}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tr.Connect(ctx(t))
	want := "through " + fail + ": probing the node: the command ended before the node answered; on stderr the node said: ssh: connect to host node1 port 22: Connection refused (exit status 255)"
	if err == nil || err.Error() != want {
		t.Errorf("Connect: %v\nwant %s", err, want)
	}
}

// The script's refusals come back as error and hint.
func TestConnectRefused(t *testing.T) {
	n := newNode(t)
	// A node with a shell but no sha256sum.
	bin := t.TempDir()
	if err := os.Symlink("/bin/sh", filepath.Join(bin, "sh")); err != nil {
		t.Fatal(err)
	}
	cmd := writeScript(t, filepath.Join(t.TempDir(), "exec-on-node"), `HOME=`+n.home+` PATH=`+bin+` exec /bin/sh -c "$3"`+"\n")
	tr, err := New(Config{Command: cmd, Remote: "node1", Helper: helper.Config{Exe: echoHelper(t)}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tr.Connect(ctx(t))
	var he *tui.HintError
	if !errors.As(err, &he) || !strings.HasSuffix(err.Error(), ": the node has no sha256sum to check the helper with") ||
		!strings.HasPrefix(he.Hint, "install coreutils or busybox on the node") {
		t.Errorf("Connect: %v (%#v); want the script's refusal and hint", err, he)
	}
}

// -r's port becomes -p PORT, as sshuttle passes it to ssh.
func TestArgv(t *testing.T) {
	for _, tc := range []struct {
		cmd, remote string
		want        []string
	}{
		{"ssh", "node1", []string{"ssh", "node1", "--"}},
		{"ssh -o 'BatchMode yes' -i \"my key\"", "root@node1:2222", []string{"ssh", "-o", "BatchMode yes", "-i", "my key", "-p", "2222", "root@node1", "--"}},
		{"ssh", "root@[fd00::1]:22", []string{"ssh", "-p", "22", "root@fd00::1", "--"}},
		{"ssh", "root@fd00::1", []string{"ssh", "root@fd00::1", "--"}},
	} {
		tr, err := New(Config{Command: tc.cmd, Remote: tc.remote})
		if err != nil || !reflect.DeepEqual(tr.argv, tc.want) {
			t.Errorf("New(%q, %q): argv %q, %v; want %q", tc.cmd, tc.remote, tr.argv, err, tc.want)
		}
	}
	for _, bad := range []Config{{Command: "", Remote: "n"}, {Command: "ssh 'x", Remote: "n"}, {Command: "ssh", Remote: "n:99999"}} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) worked", bad)
		}
	}
}

func TestSplitWords(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  ssh  -v ", []string{"ssh", "-v"}},
		{`ssh -o 'ProxyCommand ssh -W %h:%p jump'`, []string{"ssh", "-o", "ProxyCommand ssh -W %h:%p jump"}},
		{`a"b c"d`, []string{"ab cd"}},
		{`"a \"q\" \\ \$x \n"`, []string{`a "q" \ $x \n`}},
		{`a\ b \'c`, []string{"a b", "'c"}},
		{`''`, []string{""}},
	} {
		got, err := SplitWords(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitWords(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{`'x`, `"x`, `x\`} {
		if _, err := SplitWords(bad); err == nil {
			t.Errorf("SplitWords(%q) worked", bad)
		}
	}
}
