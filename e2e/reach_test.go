//go:build linux

package e2e

// Reaching nodes unlike the laptop and through other commands than k8stunnel's own SSH client.

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeUnameDir is a dir for Options.NodePath whose uname says the node is aarch64.
func fakeUnameDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\n[ \"$1\" = -sm ] && { echo Linux aarch64; exit; }\nexec /bin/uname \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "uname"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// helperBuilds puts k8stunnel in a dir of its own with a stand-in k8stunnel-linux-arm64 next to it: the amd64
// build with a comment appended, so that it runs here and its hash differs. It returns the k8stunnel to run and
// the name the node caches the stand-in under.
func helperBuilds(t *testing.T) (exe, armCached string) {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	dir := t.TempDir()
	exe = filepath.Join(dir, "k8stunnel")
	if err := copyFile(binary, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, "\n# stand-in for the arm64 build\n"...)
	if err := os.WriteFile(filepath.Join(dir, "k8stunnel-linux-arm64"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return exe, "k8stunnel-" + hex.EncodeToString(sum[:])[:16]
}

// TestOtherArchitecture: a node whose uname says aarch64 gets k8stunnel-linux-arm64 from next to the executable,
// and the tunnel works through it.
func TestOtherArchitecture(t *testing.T) {
	lab := newLabOpts(t, Options{NodePath: fakeUnameDir(t)})
	exe, armCached := helperBuilds(t)
	c, err := StartClientCmd(lab, nil, exe, append([]string{"-v"}, lab.ClientArgs(ServiceCIDR, PodCIDR)...)...)
	if err != nil {
		t.Fatal(err)
	}
	watchClient(t, c)
	if err := c.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	httpGet(t, lab, "http://"+ServiceIP+"/")
	if _, err := os.Stat(filepath.Join(lab.NodeHome, ".cache", "k8stunnel", armCached)); err != nil {
		t.Errorf("the node did not get the arm64 build: %v\n%s", err, c.Stderr())
	}
	if err := c.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("k8stunnel did not exit cleanly: %v", err)
	}

	// Without the build, the error says what the node runs and how to fix it.
	if err := os.Remove(filepath.Join(filepath.Dir(exe), "k8stunnel-linux-arm64")); err != nil {
		t.Fatal(err)
	}
	c, err = StartClientCmd(lab, nil, exe, lab.ClientArgs(ServiceCIDR)...)
	if err != nil {
		t.Fatal(err)
	}
	watchClient(t, c)
	c.Wait(StopTimeout)
	for _, want := range []string{"k8stunnel: error: the node runs Linux aarch64", "k8stunnel-linux-arm64", "hint: put a linux/arm64 build there (make dist builds them) or pass --helper FILE"} {
		if !strings.Contains(c.Stderr(), want) {
			t.Errorf("without the arm64 build, stderr lacks %q:\n%s", want, c.Stderr())
		}
	}
}

// TestSSHCmd: -e with OpenSSH's own ssh as the command, as sshuttle users run it.
func TestSSHCmd(t *testing.T) {
	lab := newLab(t)
	ssh := "ssh -F /dev/null -o BatchMode=yes -i " + lab.Identity + " -o UserKnownHostsFile=" + lab.KnownHosts
	c := startClientArgs(t, lab, "-v", "-r", "root@"+NodeAddr, "-e", ssh, ServiceCIDR, PodCIDR)
	checkCmdTunnel(t, lab, c, func() int { return strings.Count(lab.SSHDLog(), "Accepted publickey for root") })
}

// TestSSHCmdNotSSH: -e with a command that is not ssh at all and only gives a shell next to the cluster, as
// `kubectl exec -i POD --` does: this one ignores the host and runs the line it gets in the node's namespace.
func TestSSHCmdNotSSH(t *testing.T) {
	lab := newLab(t)
	standIn := filepath.Join(t.TempDir(), "exec-on-node")
	runs := filepath.Join(t.TempDir(), "runs")
	// The README's kexec wrapper, with `kubectl exec -i "$pod" --` swapped for entering the node's namespace.
	script := "#!/bin/sh\n# exec-on-node POD -- COMMAND\npod=$1; shift\n[ \"$1\" = -- ] || exit 2; shift\n" +
		"echo run >> " + runs + "\n" +
		"HOME=" + lab.NodeHome + " exec ip netns exec " + lab.Node.Name + " sh -c \"$*\"\n"
	if err := os.WriteFile(standIn, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	c := startClientArgs(t, lab, "-v", "-r", "my-pod", "-e", standIn, ServiceCIDR, PodCIDR)
	checkCmdTunnel(t, lab, c, func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "run\n")
	})
}

// checkCmdTunnel: the tunnel works, said that it exempts nothing for the node, comes back after its helper was
// killed (a new run of the command), and stops cleanly. runs counts the logins (runs of the command): one run
// probes, uploads and starts the helper, so the user authenticates once per link.
func checkCmdTunnel(t *testing.T, lab *Lab, c *Client, runs func() int) {
	t.Helper()
	httpGet(t, lab, "http://"+ServiceIP+"/")
	if n := runs(); n != 1 {
		t.Errorf("%d logins to start one link, want 1", n)
	}
	if want := "with -e the firewall exempts no address for the node"; !strings.Contains(c.Stderr(), want) {
		t.Errorf("stderr does not say %q:\n%s", want, c.Stderr())
	}
	helpers, err := lab.NodeHelperPids()
	if err != nil || len(helpers) == 0 {
		t.Fatalf("no k8stunnel helper found on the node (%v)", err)
	}
	for _, pid := range helpers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.Stderr(), `msg="tunnel restored"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect 10s after the helper was killed:\n%s", c.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	httpGet(t, lab, "http://"+ServiceIP+"/")
	if n := strings.Count(c.Stderr(), "uploading k8stunnel to the node"); n != 1 {
		t.Errorf("%d uploads, want 1 (the reconnect finds it cached)", n)
	}
	if n := runs(); n != 2 {
		t.Errorf("%d logins after one reconnect, want 2", n)
	}
	if err := c.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("k8stunnel did not exit cleanly: %v", err)
	}
	expectGone(t, lab)
}
