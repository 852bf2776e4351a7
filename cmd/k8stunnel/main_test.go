package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/tui"
)

// fakeDaemonEnv tells the test binary, started again by daemonize, how to
// play the detached child: "ready", "fail" or "silent".
const fakeDaemonEnv = "K8STUNNEL_TEST_DAEMON"

// realMainEnv makes the test binary, started again, run main itself with
// its arguments: the real command, signals and all.
const realMainEnv = "K8STUNNEL_TEST_MAIN"

var errNoFirewall = errors.New("tests start no firewall helper")

func TestMain(m *testing.M) {
	if os.Getenv(realMainEnv) != "" {
		main()
	}
	if os.Getenv(daemonEnv) != "" {
		os.Exit(fakeDaemonChild())
	}
	startFirewall = func(context.Context, firewall.HelperConfig) (client.Firewall, error) {
		return nil, errNoFirewall
	}
	os.Exit(m.Run())
}

// fakeDaemonChild reports on fd 3 as a real child would, without a tunnel.
func fakeDaemonChild() int {
	report := os.NewFile(3, "daemon-report")
	switch os.Getenv(fakeDaemonEnv) {
	case "ready":
		fmt.Fprintln(report, "ready")
		return 0
	case "fail":
		fmt.Fprintln(report, "connecting to node1:22: boom")
		fmt.Fprintln(report, "check the host name")
		return 1
	}
	return 1
}

// runArgs calls run as main would, with a context that is already done.
func runArgs(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// The messages and statuses are the ones the binary printed before parsing
// and wiring were split.
func TestRunUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "unknown flag: --bogus (see k8stunnel --help)"},
		{[]string{"-q"}, "unknown shorthand flag: 'q' in -q (see k8stunnel --help)"},
		{[]string{"--help", "-r", "x", "--bogus"}, "unknown flag: --bogus (see k8stunnel --help)"},
		{[]string{"-r"}, "flag needs an argument: 'r' in -r (see k8stunnel --help)"},
		{[]string{"--channels=abc"}, `invalid argument "abc" for "--channels" flag: must be an integer (see k8stunnel --help)`},
		{nil, "missing -r/--remote: which node should the tunnel go to? (see k8stunnel --help)"},
		{[]string{"10.0.0.0/8"}, "missing -r/--remote: which node should the tunnel go to? (see k8stunnel --help)"},
		{[]string{"version"}, "missing -r/--remote: which node should the tunnel go to? (see k8stunnel --help)"},
		{[]string{"-r", "node1"}, "no CIDR given: name the cluster's service and pod CIDRs, e.g. 10.96.0.0/12 10.244.0.0/16, or let -N find them on the node; or serve a proxy, which needs no root: --socks 1080"},
		{[]string{"-r", "node1", "--socks", "example.com:1080"}, `bad proxy address "example.com:1080": want PORT or IP:PORT, e.g. 1080 or 127.0.0.1:1080`},
		{[]string{"-r", "node1", "--http-proxy", "99999"}, `bad proxy address "99999": want PORT or IP:PORT, e.g. 1080 or 127.0.0.1:1080`},
		{[]string{"-r", "node1", "--socks", "1080", "--dns"}, "--dns, --listen and --gateway need CIDRs to forward (the proxies resolve cluster names by themselves)"},
		{[]string{"-r", "node1", "--socks", "1080", "--dns-all", "10.0.0.0/8"}, "--dns-all needs --dns"},
		{[]string{"-r", "node1", "--socks", "1080", "--cluster-dns", "x"}, `bad --cluster-dns "x": want the cluster DNS service IP, e.g. 10.96.0.10`},
		{[]string{"-r", "node1", "bad"}, `bad CIDR "bad": ParseAddr("bad"): unable to parse IP`},
		{[]string{"-r", "node1", "10.0.0.0/33"}, `bad CIDR "10.0.0.0/33": netip.ParsePrefix("10.0.0.0/33"): prefix length out of range`},
		{[]string{"-r", "node1", "10.0.0.0/8:99999"}, `bad CIDR "10.0.0.0/8:99999": bad port "99999": want 1-65535`},
		{[]string{"-r", "node1", "10.0.0.0/8,bad"}, `bad CIDR "bad": ParseAddr("bad"): unable to parse IP`},
		{[]string{"-r", "node1", "-x", "1.2.3", "10.0.0.0/8"}, `bad CIDR "1.2.3": ParseAddr("1.2.3"): IPv4 address too short`},
		{[]string{"-r", "node1", "-N", "-x", "nope"}, `bad CIDR "nope": ParseAddr("nope"): unable to parse IP`},
		{[]string{"-r", "node1", "--dns-all", "10.0.0.0/8"}, "--dns-all, --cluster-dns, --cluster-domain and --dns-search need --dns (or, but for --dns-all, --socks or --http-proxy)"},
		{[]string{"-r", "node1", "--cluster-dns", "1.2.3.4", "10.0.0.0/8"}, "--dns-all, --cluster-dns, --cluster-domain and --dns-search need --dns (or, but for --dns-all, --socks or --http-proxy)"},
		{[]string{"-r", "node1", "--cluster-domain", "k8s.local", "10.0.0.0/8"}, "--dns-all, --cluster-dns, --cluster-domain and --dns-search need --dns (or, but for --dns-all, --socks or --http-proxy)"},
		{[]string{"-r", "node1", "--dns-search", "default", "10.0.0.0/8"}, "--dns-all, --cluster-dns, --cluster-domain and --dns-search need --dns (or, but for --dns-all, --socks or --http-proxy)"},
		{[]string{"-r", "node1", "--dns", "--cluster-dns", "x", "10.0.0.0/8"}, `bad --cluster-dns "x": want the cluster DNS service IP, e.g. 10.96.0.10`},
		{[]string{"-r", "node1", "--channels", "0", "10.0.0.0/8"}, "--channels must be between 1 and 64"},
		{[]string{"-r", "node1", "--channels", "65", "10.0.0.0/8"}, "--channels must be between 1 and 64"},
		{[]string{"-r", "node1", "--log-file", "/tmp/x", "--syslog", "10.0.0.0/8"}, "--log-file and --syslog: pick one"},
		{[]string{"cleanup", "x"}, "cleanup takes no arguments"},
		{[]string{"firewall", "x"}, "firewall takes no arguments"},
		{[]string{"-r", "node1", "-l", "12345x", "10.0.0.0/8"}, `bad -l/--listen "12345x": want PORT, IP:PORT or [IPv6]:PORT`},
		{[]string{"-r", "node1", "-l", "99999", "10.0.0.0/8"}, `bad -l/--listen "99999": want PORT, IP:PORT or [IPv6]:PORT`},
		{[]string{"-r", "node1", "--disable-ipv6", "-l", "[::1]:5000", "10.0.0.0/8"}, "-l/--listen [::1]:5000 is IPv6, and --disable-ipv6 is set"},
		{[]string{"-r", "node1", "--disable-ipv6", "10.0.0.0/8", "fd00::/8"}, "fd00::/8 is IPv6, and --disable-ipv6 is set"},
		{[]string{"-r", "node1", "--method", "bogus", "10.0.0.0/8"}, `bad --method "bogus": k8stunnel always uses iptables nat (auto, nat)`},
		{[]string{"-r", "node1", "--helper", "x", "--remote-cmd", "y", "10.0.0.0/8"}, "--helper and --remote-cmd: pick one (--helper uploads a build, --remote-cmd runs one already on the node)"},
		{[]string{"-r", "node1", "-e", "ssh -i 'key", "10.0.0.0/8"}, `bad -e/--ssh-cmd "ssh -i 'key": want a command such as 'ssh -o BatchMode=yes'`},
		{[]string{"-r", "node1", "--ssh-cmd", " ", "10.0.0.0/8"}, `bad -e/--ssh-cmd " ": want a command such as 'ssh -o BatchMode=yes'`},
		{[]string{"-r", "node1", "-e", "ssh", "-i", "key", "10.0.0.0/8"}, "-e runs the command for SSH: give --identity's setting to the command (e.g. -e 'ssh -i KEY'), not to k8stunnel"},
		{[]string{"-r", "node1", "-e", "ssh", "--known-hosts", "kh", "10.0.0.0/8"}, "-e runs the command for SSH: give --known-hosts's setting to the command (e.g. -e 'ssh -i KEY'), not to k8stunnel"},
		{[]string{"-r", "node1", "-e", "ssh", "--channels", "2", "10.0.0.0/8"}, "-e carries one channel: each more would be another login; drop --channels"},
		{[]string{"server", "--bogus"}, "server: unknown flag: --bogus"},
		{[]string{"server", "extra", "-r"}, "server: unknown shorthand flag: 'r' in -r"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runArgs(t, tc.args...)
			if code != 2 || stdout != "" || stderr != "k8stunnel: "+tc.want+"\n" {
				t.Errorf("run(%q) = %d, stdout %q, stderr %q; want 2, \"\", %q", tc.args, code, stdout, stderr, "k8stunnel: "+tc.want+"\n")
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	want, err := os.ReadFile("testdata/help.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"--version", "--help"}, {"--help", "not-a-cidr"}} {
		code, stdout, stderr := runArgs(t, args...)
		if code != 0 || stdout != string(want) || stderr != "" {
			t.Errorf("run(%q) = %d, stderr %q, stdout:\n%s\nwant 0, no stderr, stdout testdata/help.txt", args, code, stderr, stdout)
		}
	}
}

func TestRunVersion(t *testing.T) {
	code, stdout, stderr := runArgs(t, "--version", "-r", "node1")
	if want := "k8stunnel " + version + "\n"; code != 0 || stdout != want || stderr != "" {
		t.Errorf("run(--version) = %d, %q, %q; want 0, %q, no stderr", code, stdout, stderr, want)
	}
}

// A listen address the engine cannot bind fails before any firewall or SSH.
func TestRunBadListen(t *testing.T) {
	code, stdout, stderr := runArgs(t, "-r", "node1", "-l", "192.0.2.1:5000", "10.0.0.0/8")
	if want := "k8stunnel: error: listening on 192.0.2.1:5000: listen tcp4 192.0.2.1:5000: bind: cannot assign requested address\n"; code != 1 || stdout != "" || stderr != want {
		t.Errorf("run = %d, %q, %q; want 1, \"\", %q", code, stdout, stderr, want)
	}
}

func TestRunLogFile(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(dir, "k8stunnel.log")
	code, _, stderr := runArgs(t, "-r", "node1", "-l", "192.0.2.1:5000", "--log-file", logFile, "10.0.0.0/8")
	if want := "k8stunnel: error: listening on 192.0.2.1:5000: listen tcp4 192.0.2.1:5000: bind: cannot assign requested address\n"; code != 1 || stderr != want {
		t.Errorf("run = %d, %q; want 1, %q", code, stderr, want)
	}
	if _, err := os.Stat(logFile); err != nil {
		t.Errorf("log file not created: %v", err)
	}

	missing := filepath.Join(dir, "missing", "k8stunnel.log")
	code, _, stderr = runArgs(t, "-r", "node1", "--log-file", missing, "10.0.0.0/8")
	if want := "k8stunnel: error: opening log file: open " + missing + ": no such file or directory\n"; code != 1 || stderr != want {
		t.Errorf("run = %d, %q; want 1, %q", code, stderr, want)
	}
}

// --daemon starts this binary again; TestMain makes that child a fake that
// reports as the real one would.
func TestRunDaemon(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "daemon.log")
	for _, tc := range []struct {
		child string
		args  []string
		code  int
		want  string // stderr, with %s for logFile
	}{
		{"fail", nil, 1, "k8stunnel: error: connecting to node1:22: boom\nk8stunnel: hint: check the host name\n"},
		{"silent", nil, 1, "k8stunnel: error: the daemon exited before the tunnel came up\n"},
		{"silent", []string{"--log-file", logFile}, 1, "k8stunnel: error: the daemon exited before the tunnel came up; see %s\n"},
		{"ready", nil, 0, "k8stunnel: running in the background, pid "},
	} {
		t.Run(tc.child, func(t *testing.T) {
			t.Setenv(fakeDaemonEnv, tc.child)
			args := append([]string{"--daemon", "-r", "node1", "10.0.0.0/8"}, tc.args...)
			code, stdout, stderr := runArgs(t, args...)
			want := strings.ReplaceAll(tc.want, "%s", logFile)
			ok := stderr == want
			if tc.child == "ready" {
				ok = strings.HasPrefix(stderr, want) && strings.HasSuffix(stderr, "\n")
			}
			if code != tc.code || stdout != "" || !ok {
				t.Errorf("run(%q) = %d, %q, %q; want %d, \"\", %q", args, code, stdout, stderr, tc.code, want)
			}
		})
	}
}

func TestReport(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		want string
	}{
		{nil, 0, ""},
		{usagef("bad %s", "thing"), 2, "k8stunnel: bad thing\n"},
		{fmt.Errorf("wrapped: %w", usagef("bad")), 2, "k8stunnel: wrapped: bad\n"},
		{errors.New("removing k8stunnel rules: nope"), 1, "k8stunnel: error: removing k8stunnel rules: nope\n"},
		{&tui.HintError{Err: errors.New("unknown host key"), Hint: "add it with ssh-keyscan"}, 1,
			"k8stunnel: error: unknown host key\nk8stunnel: hint: add it with ssh-keyscan\n"},
		{fmt.Errorf("connecting: %w", &tui.HintError{Err: errors.New("denied"), Hint: "try -i"}), 1,
			"k8stunnel: error: connecting: denied\nk8stunnel: hint: try -i\n"},
		{&tui.HintError{Err: errors.New("no hint")}, 1, "k8stunnel: error: no hint\n"},
		// What the node said never reaches the terminal raw: no title, clipboard or extra lines.
		{fmt.Errorf("helper refused the session: %s", "\x1b]0;owned\x07\nfake line"), 1,
			`k8stunnel: error: helper refused the session: \x1b]0;owned\a\nfake line` + "\n"},
		{&tui.HintError{Err: errors.New("x"), Hint: "\x1b[2Jcleared"}, 1, "k8stunnel: error: x\nk8stunnel: hint: \\x1b[2Jcleared\n"},
	} {
		var buf bytes.Buffer
		if code := report(tc.err, &buf); code != tc.code || buf.String() != tc.want {
			t.Errorf("report(%v) = %d, %q; want %d, %q", tc.err, code, buf.String(), tc.code, tc.want)
		}
	}
}

func TestDropTime(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(&buf, 0, dropTime)
	log.Debug("hidden")
	log.Info("shown", "k", "v")
	if got, want := buf.String(), "level=INFO msg=shown k=v\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	buf.Reset()
	newLogger(&buf, 1).Debug("conn")
	if !strings.Contains(buf.String(), "time=") || !strings.Contains(buf.String(), "level=DEBUG msg=conn") {
		t.Errorf("-v logger wrote %q, want a timed debug record", buf.String())
	}
}

// An sshuttle flag that does not apply says so in one line, and the run goes on.
func TestRunSshuttleNotes(t *testing.T) {
	code, _, stderr := runArgs(t, "-r", "node1", "--no-latency-control", "-l", "192.0.2.1:5000", "10.0.0.0/8")
	want := "k8stunnel: --no-latency-control ignored: k8stunnel has per-connection flow control, nothing to turn off\n" +
		"k8stunnel: error: listening on 192.0.2.1:5000: listen tcp4 192.0.2.1:5000: bind: cannot assign requested address\n"
	if code != 1 || stderr != want {
		t.Errorf("run = %d, %q; want 1, %q", code, stderr, want)
	}
}
