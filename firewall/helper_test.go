package firewall

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperConn drives ServeHelper over pipes, as the parent process would.
type helperConn struct {
	t      *testing.T
	in     *io.PipeWriter
	out    *bufio.Reader
	served chan error
}

func serveTestHelper(t *testing.T, ctx context.Context, fw *Firewall, log *slog.Logger) *helperConn {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &helperConn{t: t, in: inW, out: bufio.NewReader(outR), served: make(chan error, 1)}
	go func() {
		err := ServeHelper(ctx, inR, outW, fw, log)
		outW.CloseWithError(io.EOF)
		c.served <- err
	}()
	t.Cleanup(func() { inW.Close() })
	return c
}

// do sends one request line and returns the reply.
func (c *helperConn) do(line string) helperReply {
	c.t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		c.t.Fatalf("writing request: %v", err)
	}
	b, err := c.out.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("reading reply to %s: %v", line, err)
	}
	var r helperReply
	if err := json.Unmarshal(b, &r); err != nil {
		c.t.Fatalf("decoding reply %q: %v", b, err)
	}
	return r
}

func (c *helperConn) wait() error {
	c.t.Helper()
	select {
	case err := <-c.served:
		return err
	case <-time.After(10 * time.Second):
		c.t.Fatal("ServeHelper did not return")
		return nil
	}
}

func installLine(t testing.TB, spec Spec) string {
	b, err := json.Marshal(helperRequest{Op: opInstall, Spec: &spec})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestServeHelper(t *testing.T) {
	fake := &Fake{}
	c := serveTestHelper(t, context.Background(), New(fake, testLogger(t)), testLogger(t))

	if r := c.do(`{"op":"ping"}`); !r.OK {
		t.Fatalf("ping: %+v", r)
	}
	if r := c.do(installLine(t, mixedSpec(t))); !r.OK {
		t.Fatalf("install: %+v", r)
	}
	if got := fake.Dump(); got != mixedDump {
		t.Fatalf("after install:\n%s\nwant\n%s", got, mixedDump)
	}
	if r := c.do(`{"op":"remove"}`); !r.OK {
		t.Fatalf("remove: %+v", r)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("after remove:\n%s", got)
	}
	for _, bad := range []string{`{"op":"fly"}`, `not json`, `{"op":"install"}`, `{"op":"install","spec":{"port":1}}`} {
		if r := c.do(bad); r.OK || r.Error == "" {
			t.Errorf("%s: got %+v, want an error", bad, r)
		}
	}
	// EOF, as when the parent dies, removes what is installed.
	if r := c.do(installLine(t, mixedSpec(t))); !r.OK {
		t.Fatalf("install: %+v", r)
	}
	c.in.Close()
	if err := c.wait(); err != nil {
		t.Fatalf("ServeHelper: %v", err)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("after EOF:\n%s", got)
	}
}

func TestServeHelperContextEnd(t *testing.T) {
	fake := &Fake{}
	ctx, cancel := context.WithCancel(context.Background())
	c := serveTestHelper(t, ctx, New(fake, testLogger(t)), testLogger(t))
	if r := c.do(installLine(t, mixedSpec(t))); !r.OK {
		t.Fatalf("install: %+v", r)
	}
	cancel()
	if err := c.wait(); err != nil {
		t.Fatalf("ServeHelper: %v", err)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("after cancel:\n%s", got)
	}
}

// TestServeHelperRetriesRemoval: an iptables run killed by a signal meant for
// the whole process group fails the removal; it is retried, not given up.
func TestServeHelperRetriesRemoval(t *testing.T) {
	fake := &Fake{}
	ctx, cancel := context.WithCancel(context.Background())
	c := serveTestHelper(t, ctx, New(fake, testLogger(t)), testLogger(t))
	if r := c.do(installLine(t, mixedSpec(t))); !r.OK {
		t.Fatalf("install: %+v", r)
	}
	failures := 3
	fake.Fail = func(op string, _ Family, _, _ string) error {
		if op == "-D" && failures > 0 {
			failures--
			return errors.New("iptables: signal: terminated")
		}
		return nil
	}
	cancel()
	if err := c.wait(); err != nil {
		t.Fatalf("ServeHelper: %v", err)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("after cancel with %d failed removals, left:\n%s", 3, got)
	}
}

// messages is a slog handler that passes each record's message to a channel.
type messages chan string

func (m messages) Enabled(context.Context, slog.Level) bool { return true }
func (m messages) Handle(_ context.Context, r slog.Record) error {
	select {
	case m <- r.Message:
	default: // a test that stopped listening must not block the helper
	}
	return nil
}
func (m messages) WithAttrs([]slog.Attr) slog.Handler { return m }
func (m messages) WithGroup(string) slog.Handler      { return m }

// waitMessage waits for msg to be logged.
func waitMessage(t *testing.T, logged messages, msg string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-logged:
			if got == msg {
				return
			}
		case <-timeout:
			t.Fatalf("%q was not logged", msg)
		}
	}
}

func TestServeHelperHeals(t *testing.T) {
	var fail sync.Mutex
	failing := false
	fake := &Fake{Fail: func(op string, fam Family, table, chain string) error {
		fail.Lock()
		defer fail.Unlock()
		if failing && op == "-N" {
			return errors.New("injected: xtables lock timeout")
		}
		return nil
	}}
	fw := New(fake, testLogger(t))
	fw.healEvery = 5 * time.Millisecond
	logged := make(messages, 100)
	c := serveTestHelper(t, context.Background(), fw, slog.New(logged))
	if r := c.do(installLine(t, mixedSpec(t))); !r.OK {
		t.Fatalf("install: %+v", r)
	}

	v4, _ := fake.Family(IPv4)
	if err := v4.Delete("nat", "OUTPUT", "-j", "K8STUNNEL-12300"); err != nil {
		t.Fatal(err)
	}
	waitMessage(t, logged, "firewall rules restored")
	if got := fake.Dump(); got != mixedDump {
		t.Fatalf("after healing a deleted jump:\n%s\nwant\n%s", got, mixedDump)
	}

	fake.Flush(IPv6, "nat") // iptables -t nat -F
	waitMessage(t, logged, "firewall rules restored")
	if got := fake.Dump(); got != mixedDump {
		t.Fatalf("after healing a flush:\n%s\nwant\n%s", got, mixedDump)
	}

	// A heal that cannot install is retried until it can.
	fail.Lock()
	failing = true
	fail.Unlock()
	fake.Flush(IPv4, "nat")
	waitMessage(t, logged, "checking firewall rules")
	fail.Lock()
	failing = false
	fail.Unlock()
	waitMessage(t, logged, "firewall rules restored")
	if got := fake.Dump(); got != mixedDump {
		t.Fatalf("after healing past a failure:\n%s\nwant\n%s", got, mixedDump)
	}

	// After remove, nothing comes back.
	if r := c.do(`{"op":"remove"}`); !r.OK {
		t.Fatalf("remove: %+v", r)
	}
	if err := v4.NewChain("nat", "K8STUNNEL-12300"); err != nil { // sentinel the healer must ignore
		t.Fatal(err)
	}
	c.in.Close()
	if err := c.wait(); err != nil {
		t.Fatalf("ServeHelper: %v", err)
	}
	if got, want := fake.Dump(), "iptables -t nat -N K8STUNNEL-12300\n"; got != want {
		t.Fatalf("the healer touched rules after remove:\n%s\nwant\n%s", got, want)
	}
}

func TestHelperArgv(t *testing.T) {
	for _, tt := range []struct {
		sudo, interactive bool
		want              string
	}{
		{false, false, "/k firewall"},
		{true, true, "sudo -- /k firewall"},
		{true, false, "sudo -n -- /k firewall"},
	} {
		if got := strings.Join(helperArgv("/k", []string{"firewall"}, tt.sudo, tt.interactive), " "); got != tt.want {
			t.Errorf("helperArgv(sudo=%v, interactive=%v) = %q, want %q", tt.sudo, tt.interactive, got, tt.want)
		}
	}
}

func TestChildEnv(t *testing.T) {
	env := []string{"PATH=/bin", "SUDO_UID=1000", "SUDO_USER=alice", "SUDO_GID=1000", "SUDO_COMMAND=/k", "HOME=/root"}
	if got, want := strings.Join(childEnv(env, false), " "), "PATH=/bin HOME=/root"; got != want {
		t.Errorf("childEnv without sudo = %q, want %q: a root client started by `sudo k8stunnel` is not SUDO_UID", got, want)
	}
	if got, want := strings.Join(childEnv(env, true), " "), strings.Join(env, " "); got != want {
		t.Errorf("childEnv through sudo = %q, want it unchanged %q", got, want)
	}
	if len(env) != 6 {
		t.Errorf("childEnv changed its argument: %q", env)
	}
}

// The tests below run this test binary as the helper process, with a Fake
// inside it instead of iptables, and read what it held at exit from its
// stderr.

const helperEnv = "K8STUNNEL_FIREWALL_TEST_HELPER"

func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return // only runs as the child of the tests below
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fake := &Fake{}
	err := ServeHelperProcess(context.Background(), New(fake, log), log)
	fmt.Fprintf(os.Stderr, "rules at exit:\n%s(end)\n", fake.Dump())
	if err != nil {
		log.Error("helper failed", "err", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// lockedBuffer collects the helper's stderr while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startTestHelper(t *testing.T) (*Helper, *lockedBuffer) {
	t.Setenv(helperEnv, "1")
	stderr := &lockedBuffer{}
	h, err := StartHelper(context.Background(), HelperConfig{
		Exe:    os.Args[0],
		Args:   []string{"-test.run=^TestHelperProcess$"},
		Log:    testLogger(t),
		Stderr: stderr,
	})
	if err != nil {
		t.Fatalf("StartHelper: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h, stderr
}

// heldSpec is mixedSpec redirecting to a port this process listens on, as
// the helper's Caller.Authorize wants.
func heldSpec(t *testing.T) Spec {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := mixedSpec(t)
	s.Port = uint16(ln.Addr().(*net.TCPAddr).Port)
	return s
}

func TestHelper(t *testing.T) {
	h, stderr := startTestHelper(t)
	held := heldSpec(t)
	if err := h.Install(context.Background(), held); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if err := h.Install(context.Background(), Spec{Port: held.Port, Include: targets(t, "fd00::/8")}); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	if err := h.Install(context.Background(), Spec{Port: 1}); err == nil {
		t.Fatal("Install of an empty spec succeeded")
	}
	// Ctrl-C and a hung-up terminal signal the whole process group; the
	// helper must outlive them so the parent can still clean up.
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGHUP} {
		if err := h.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		if err := h.Ping(context.Background()); err != nil {
			t.Fatalf("helper did not survive %v: %v", sig, err)
		}
	}
	if err := h.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := h.Install(context.Background(), held); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v\n%s", err, stderr)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if !strings.Contains(stderr.String(), "rules at exit:\n(end)\n") {
		t.Fatalf("helper left rules behind at exit:\n%s", stderr)
	}
	if n := strings.Count(stderr.String(), "firewall rules installed"); n != 3 {
		t.Fatalf("helper installed %d times, want 3:\n%s", n, stderr)
	}
	if err := h.Install(context.Background(), mixedSpec(t)); err == nil {
		t.Fatal("Install after Close succeeded")
	}
}

func TestHelperSIGTERM(t *testing.T) {
	h, stderr := startTestHelper(t)
	if err := h.Install(context.Background(), heldSpec(t)); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not exit on SIGTERM")
	}
	if err := h.Close(); err != nil {
		t.Fatalf("helper exit after SIGTERM: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr.String(), "rules at exit:\n(end)\n") {
		t.Fatalf("helper left rules behind after SIGTERM:\n%s", stderr)
	}
}

// TestHelperRefusesForeignPort: the root helper installs no rule that sends
// connections to a port its caller does not hold, such as another program's
// or one that nobody listens on yet.
func TestHelperRefusesForeignPort(t *testing.T) {
	h, stderr := startTestHelper(t)
	// A listener held by another process only: made here, handed to a child,
	// closed here.
	theirs, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	otherPort := uint16(theirs.Addr().(*net.TCPAddr).Port)
	f, err := theirs.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	other := exec.Command("sleep", "60")
	other.ExtraFiles = []*os.File{f}
	if err := other.Start(); err != nil {
		t.Fatalf("starting another listener: %v", err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	f.Close()
	theirs.Close()
	own := heldSpec(t).Port
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	for name, port := range map[string]uint16{"another process's port": otherPort, "a port nobody holds": nobody} {
		s := mixedSpec(t)
		s.Port = port
		err := h.Install(context.Background(), s)
		if err == nil || !strings.Contains(err.Error(), "not a socket of the calling k8stunnel") {
			t.Errorf("%s (%d): Install = %v, want it refused", name, port, err)
		}
	}
	s := mixedSpec(t)
	s.Port = own
	if err := h.Install(context.Background(), s); err != nil {
		t.Errorf("own port: %v", err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v\n%s", err, stderr)
	}
	if n := strings.Count(stderr.String(), "firewall rules installed"); n != 1 {
		t.Fatalf("helper installed %d times, want 1 (its caller's own port only):\n%s", n, stderr)
	}
}

func TestStartHelperFails(t *testing.T) {
	_, err := StartHelper(context.Background(), HelperConfig{Exe: "/bin/false", Args: []string{}, Log: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "exited before answering ping") {
		t.Fatalf("StartHelper(/bin/false) = %v; want an error saying it exited", err)
	}
	if errors.Is(err, ErrNeedRoot) {
		t.Errorf("error %v hints at sudo, which was not used", err)
	}
	_, err = StartHelper(context.Background(), HelperConfig{Exe: "/nonexistent/k8stunnel", Log: testLogger(t)})
	if err == nil {
		t.Fatal("StartHelper of a missing executable succeeded")
	}
}

func TestStartHelperContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// cat echoes the ping request, which is not a reply, so only ctx can end
	// the wait.
	_, err := StartHelper(ctx, HelperConfig{Exe: "/bin/cat", Args: []string{}, Log: testLogger(t)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("StartHelper with a cancelled ctx = %v; want context.Canceled", err)
	}
}

// startScriptHelper starts a shell script as the helper: a stand-in that
// speaks the protocol only as far as the script says.
func startScriptHelper(t *testing.T, script string, stderr io.Writer) *Helper {
	t.Helper()
	h, err := StartHelper(context.Background(), HelperConfig{Exe: "/bin/sh", Args: []string{"-c", script}, Log: testLogger(t), Stderr: stderr})
	if err != nil {
		t.Fatalf("StartHelper: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// onWrite calls f on the first non-empty write, which a script makes to say where it is.
type onWrite struct {
	once sync.Once
	f    func()
}

func (w *onWrite) Write(p []byte) (int, error) {
	if len(p) > 0 {
		w.once.Do(w.f)
	}
	return len(p), nil
}

const okLine = `echo '{"ok":true}'`

func TestHelperInstallHung(t *testing.T) {
	// Answers the ping, then reads requests and never answers them.
	h := startScriptHelper(t, "read -r l; "+okLine+"; exec cat >/dev/null", nil)
	const wait = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	deadline, _ := ctx.Deadline()
	err := h.Install(ctx, mixedSpec(t))
	if late := time.Since(deadline); late > 2*time.Second {
		t.Errorf("Install returned %v after its deadline", late)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Install to a hung helper = %v; want context.DeadlineExceeded", err)
	}
	if want := fmt.Sprintf("firewall helper (pid %d)", h.cmd.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the helper (%s)", err, want)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestHelperLateReplyDropped(t *testing.T) {
	// Holds its answer to the install until the next request arrives, then
	// answers both: the first answer is the install's, not the ping's.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The script says on stderr when it has the install request; that ends
	// the wait for its answer.
	h := startScriptHelper(t, "read -r l; "+okLine+"; read -r l; echo got install >&2; read -r l; "+
		`echo '{"error":"late install answer"}'; `+okLine+"; exec cat >/dev/null", &onWrite{f: cancel})
	if err := h.Install(ctx, mixedSpec(t)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Install abandoned by its ctx = %v; want context.Canceled", err)
	}
	if err := h.Ping(context.Background()); err != nil {
		t.Fatalf("Ping after an abandoned Install = %v; want the ping's own answer", err)
	}
}
