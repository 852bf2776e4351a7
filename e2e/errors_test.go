//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestUserErrors runs k8stunnel into every mistake a user can make and every node that cannot serve it. Each must
// end in one clear line (a hint line may follow), a non-zero exit, bounded time, no process left behind, and the
// laptop's rules exactly as they were.
func TestUserErrors(t *testing.T) {
	lab := newLab(t)
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	// "unknown host" must not ask the machine's resolver: every lookup from the laptop goes to 127.0.0.1 there.
	undoDNS, err := IsolateDNS(lab.Laptop)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := undoDNS(); err != nil {
			t.Errorf("removing the laptop's resolv.conf: %v", err)
		}
	})
	stopDNS, err := ServeNXDomain(lab.Laptop)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopDNS)
	pub, removePub, err := PublicCopy(binary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(removePub)

	dir := t.TempDir()
	_, strangerPub, err := writeKey(filepath.Join(dir, "stranger_host_key"), "stranger-host")
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, _, err := writeKey(filepath.Join(dir, "id_wrong"), "wrong-client")
	if err != nil {
		t.Fatal(err)
	}
	emptyKnownHosts := filepath.Join(dir, "known_hosts_empty")
	changedKnownHosts := filepath.Join(dir, "known_hosts_changed")
	if err := os.WriteFile(emptyKnownHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Another ed25519 key, the type the node serves, listed for the node's address: a changed key, not a missing one.
	if err := os.WriteFile(changedKnownHosts, []byte(NodeAddr+" "+string(ssh.MarshalAuthorizedKey(strangerPub))), 0o600); err != nil {
		t.Fatal(err)
	}

	cidrs := []string{ServiceCIDR, PodCIDR}
	// args are the flags that reach the lab's node with the lab's key, then extra, then cidrs.
	args := func(remote, key, knownHosts string, extra ...string) []string {
		a := []string{"-r", remote, "-i", key, "--known-hosts", knownHosts, "-F", "/dev/null"}
		return append(append(a, extra...), cidrs...)
	}
	base := func(remote string, extra ...string) []string {
		return args(remote, lab.Identity, lab.KnownHosts, extra...)
	}
	cases := []struct {
		name string
		args []string
		// env replaces variables of the environment k8stunnel runs with.
		env []string
		// asNobody runs k8stunnel as the user nobody, from a copy of the binary that user can read.
		asNobody bool
		// want is a piece of the error line, wantHint of the hint line.
		want, wantHint string
		// usage errors exit 2, the rest 1.
		wantCode int
		within   time.Duration
	}{
		{name: "bad CIDR", args: []string{"-r", "root@" + NodeAddr, ServiceCIDR, "10.96.0.0/33"},
			want: "10.96.0.0/33", wantCode: 2, within: 5 * time.Second},
		{name: "missing -r", args: cidrs, want: "-r", wantCode: 2, within: 5 * time.Second},
		{name: "unknown host", args: base("root@no-such-node.invalid"),
			want: "no-such-node.invalid", wantCode: 1, within: 10 * time.Second},
		{name: "refused SSH port", args: base("root@" + NodeAddr + ":2"),
			want: "refused", wantCode: 1, within: 5 * time.Second},
		{name: "wrong key", args: args("root@"+NodeAddr, wrongKey, lab.KnownHosts),
			want: "authenticat", wantCode: 1, within: 10 * time.Second},
		{name: "unknown host key", args: args("root@"+NodeAddr, lab.Identity, emptyKnownHosts),
			want: "unknown host key", wantCode: 1, within: 10 * time.Second},
		{name: "changed host key", args: args("root@"+NodeAddr, lab.Identity, changedKnownHosts),
			want: "host key changed", wantCode: 1, within: 10 * time.Second},
		{name: "no iptables binary", args: base("root@" + NodeAddr), env: []string{"PATH=/nonexistent"},
			want: "iptables", wantCode: 1, within: 30 * time.Second},
		{name: "helper cannot run on the node", args: base("root@"+NodeAddr, "--remote-cmd", "/nonexistent/k8stunnel server"),
			want: "helper", wantCode: 1, within: 30 * time.Second},
		{name: "helper sends garbage", args: base("root@"+NodeAddr, "--remote-cmd", "head -c 100000 /dev/urandom"),
			want: "helper", wantCode: 1, within: 30 * time.Second},
		{name: "not root and no sudo", args: base("root@" + NodeAddr), asNobody: true, env: []string{"PATH=/nonexistent"},
			want: "root", wantHint: "k8stunnel sudoers", wantCode: 1, within: 10 * time.Second},
		{name: "not root and sudo says no", args: base("root@" + NodeAddr), asNobody: true,
			want: "root", wantHint: "k8stunnel sudoers", wantCode: 1, within: 10 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := iptablesSave(t, lab)
			argv := append([]string{binary}, tc.args...)
			env := os.Environ()
			if tc.asNobody {
				home, removeHome, err := UserHome(65534, 65534, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer removeHome()
				argv = AsUser("nobody", "nogroup", append([]string{pub}, tc.args...)...)
				env = UserEnv("nobody", home, "/usr/local/bin:/usr/bin:/bin")
			}
			env = withEnv(env, tc.env...)

			ctx, cancel := context.WithTimeout(context.Background(), tc.within+10*time.Second)
			defer cancel()
			cmd := lab.Laptop.Command(ctx, argv[0], argv[1:]...)
			cmd.Env = env
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.WaitDelay = 2 * time.Second
			start := time.Now()
			err := cmd.Run()
			elapsed := time.Since(start)
			t.Logf("exit after %v: %v\nstderr:\n%s", elapsed.Round(time.Millisecond), err, stderr.String())

			if ctx.Err() != nil || elapsed > tc.within {
				t.Errorf("took %v, want at most %v", elapsed.Round(time.Millisecond), tc.within)
			}
			var exit *exec.ExitError
			switch {
			case err == nil:
				t.Errorf("exit status 0, want %d", tc.wantCode)
			case !errors.As(err, &exit):
				t.Errorf("running k8stunnel: %v", err)
			case exit.ExitCode() != tc.wantCode:
				t.Errorf("%v, want exit status %d", err, tc.wantCode)
			}
			if s := stderr.String(); strings.Contains(s, "panic:") || strings.Contains(s, "goroutine ") {
				t.Errorf("k8stunnel crashed")
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout has %q, want nothing", stdout.String())
			}
			checkOneErrorLine(t, stderr.String(), tc.want)
			if hint := "\nk8stunnel: hint: "; tc.wantHint != "" && !strings.Contains(stderr.String(), hint) {
				t.Errorf("no hint line, want one saying %q", tc.wantHint)
			} else if _, line, _ := strings.Cut(stderr.String(), hint); !strings.Contains(line, tc.wantHint) {
				t.Errorf("the hint %q does not mention %q", line, tc.wantHint)
			}

			if after := iptablesSave(t, lab); after != before {
				t.Errorf("the laptop's rules changed\nbefore:\n%s\nafter:\n%s", before, after)
			}
			expectNoProcs(t, lab.Laptop, 2*time.Second)
		})
	}
}

// checkOneErrorLine wants stderr to say what went wrong in exactly one line: `k8stunnel: error: ...` (or a usage
// line, `k8stunnel: ...`), optionally followed by `k8stunnel: hint: ...`. Before it only k8stunnel's own progress
// lines may come (level=INFO, such as "uploading k8stunnel to the node"): no warning, no other program's words, no
// line from the node, since whatever explains the failure belongs in the error line. want must be in the error line.
func checkOneErrorLine(t *testing.T, stderr, want string) {
	t.Helper()
	var lines []string
	for _, line := range strings.Split(strings.TrimRight(stderr, "\n"), "\n") {
		if strings.Contains(line, " level=INFO ") && !strings.Contains(line, " from=node") {
			continue
		}
		lines = append(lines, line)
	}
	if len(lines) > 0 && strings.HasPrefix(lines[len(lines)-1], "k8stunnel: hint: ") {
		lines = lines[:len(lines)-1]
	}
	if len(lines) != 1 {
		t.Errorf("stderr has %d lines besides progress and the hint, want exactly one error line:\n%s", len(lines), stderr)
	}
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "k8stunnel: ") || strings.HasPrefix(last, "k8stunnel: hint: ") {
		t.Errorf("the last line %q is not a k8stunnel error line", last)
	}
	if !strings.Contains(last, want) {
		t.Errorf("the error line %q does not mention %q", last, want)
	}
	if !isPrintable(stderr) {
		t.Errorf("stderr carries control characters or invalid UTF-8: %q", stderr)
	}
}

func isPrintable(s string) bool {
	for _, r := range s {
		if r == '\uFFFD' || (r < ' ' && r != '\n' && r != '\t') || r == 0x7f {
			return false
		}
	}
	return true
}

// withEnv returns env with each KEY=value of set replacing the variable of that name.
func withEnv(env []string, set ...string) []string {
	out := make([]string, 0, len(env)+len(set))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == "SSH_AUTH_SOCK" {
			continue
		}
		replaced := false
		for _, s := range set {
			if sk, _, _ := strings.Cut(s, "="); sk == k {
				replaced = true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return append(out, set...)
}

// expectNoProcs waits for ns to have no live process left.
func expectNoProcs(t *testing.T, ns *Netns, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		procs, err := Procs(ns)
		if err != nil {
			t.Fatal(err)
		}
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left in %s after %v: %v", ns.Name, within, procs)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
