package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSudoersLine(t *testing.T) {
	line, err := sudoersLine("alice", "/usr/local/bin/k8stunnel")
	if want := "alice ALL=(root) NOPASSWD: /usr/local/bin/k8stunnel firewall"; err != nil || line != want {
		t.Errorf("sudoersLine = %q, %v; want %q", line, err, want)
	}
	// Anything sudoers would read as more than a name or a path is refused, not escaped.
	for _, tc := range []struct{ user, exe string }{
		{"alice,bob", "/usr/local/bin/k8stunnel"},
		{"ALL", "/usr/local/bin/k8stunnel "},
		{"%wheel", "/usr/local/bin/k8stunnel"},
		{"#0", "/usr/local/bin/k8stunnel"},
		{"alice", "/opt/my tools/k8stunnel"},
		{"alice", "/opt/k8s:tunnel"},
		{"alice", "/opt/k8stunnel, /bin/sh"},
		{"alice", "/opt/k=8stunnel"},
		{"alice", "/opt/k8stunnel\\"},
		{"alice", "k8stunnel"},
		{"alice", "/opt/../bin/sh"},
		{"alice", "/opt/k8stunnel\n" + "alice ALL=(ALL) NOPASSWD: ALL"},
		// sudoers reads an upper-case name as an alias, ALL as every user.
		{"ALL", "/usr/local/bin/k8stunnel"},
		{"ADMINS", "/usr/local/bin/k8stunnel"},
		{"A_1", "/usr/local/bin/k8stunnel"},
	} {
		if line, err := sudoersLine(tc.user, tc.exe); err == nil {
			t.Errorf("sudoersLine(%q, %q) = %q, want an error", tc.user, tc.exe, line)
		}
	}
}

func TestOnlyRootWrites(t *testing.T) {
	rootDir := owner{0, fs.ModeDir | 0o755}
	tree := func(over map[string]owner) func(string) (owner, error) {
		return func(p string) (owner, error) {
			if o, ok := over[p]; ok {
				return o, nil
			}
			if p == "/opt/k8stunnel" {
				return owner{0, 0o755}, nil
			}
			return rootDir, nil
		}
	}
	for _, tc := range []struct {
		name    string
		over    map[string]owner
		wantBad string // the path the error names, "" for no error
	}{
		{"all root", nil, ""},
		// Root's file there cannot be swapped, but once it is gone anyone may create one of its name.
		{"sticky world-writable dir", map[string]owner{"/opt": {0, fs.ModeDir | fs.ModeSticky | 0o777}}, "/opt"},
		{"file of a user", map[string]owner{"/opt/k8stunnel": {1000, 0o755}}, "/opt/k8stunnel"},
		{"group-writable file", map[string]owner{"/opt/k8stunnel": {0, 0o775}}, "/opt/k8stunnel"},
		{"sticky file is still the file", map[string]owner{"/opt/k8stunnel": {0, fs.ModeSticky | 0o777}}, "/opt/k8stunnel"},
		{"dir of a user", map[string]owner{"/opt": {1000, fs.ModeDir | 0o755}}, "/opt"},
		{"world-writable dir", map[string]owner{"/opt": {0, fs.ModeDir | 0o777}}, "/opt"},
		{"world-writable root", map[string]owner{"/": {0, fs.ModeDir | 0o777}}, "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := onlyRootWrites("/opt/k8stunnel", tree(tc.over))
			switch {
			case tc.wantBad == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tc.wantBad != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantBad+" can be changed")):
				t.Errorf("error %v, want one naming %s", err, tc.wantBad)
			}
		})
	}
	// The real file system: a dir anyone may write into, whoever runs the test.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "k8stunnel")
	if err := os.WriteFile(exe, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := onlyRootWrites(exe, statOwner); err == nil {
		t.Errorf("onlyRootWrites(%s) passed; its dir is mode 0777", exe)
	}
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := onlyRootWrites(sh, statOwner); err != nil {
		t.Errorf("onlyRootWrites(%s): %v", sh, err)
	}
}

// TestSudoersCommand runs `k8stunnel sudoers`: for an executable only root may change (the shell's, as root) it
// prints the line for the user named; for one in a directory others may write into (the test binary's own as
// another user; as root, a sticky world-writable one such as /tmp) it refuses. Usage errors exit 2.
func TestSudoersCommand(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if os.Geteuid() == 0 {
		sh, err := filepath.EvalSymlinks("/bin/sh")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { executable = os.Executable })
		executable = func() (string, error) { return sh, nil }
		code := run(t.Context(), []string{"sudoers", "--user", "nobody"}, &stdout, &stderr)
		want := "# nobody may run the firewall part of k8stunnel (" + sh + ") as root without a password, nothing else.\n" +
			"nobody ALL=(root) NOPASSWD: " + sh + " firewall\n"
		if code != 0 || stdout.String() != want || !strings.Contains(stderr.String(), "sudo visudo -cf") {
			t.Errorf("sudoers --user nobody: exit %d, stdout:\n%s\nstderr %q; want exit 0, stdout:\n%s", code, &stdout, &stderr, want)
		}

		// Root's own file in a sticky world-writable directory: the line would outlive the file.
		dir := filepath.Join(t.TempDir(), "sticky")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777|fs.ModeSticky); err != nil {
			t.Fatal(err)
		}
		exe = filepath.Join(dir, "k8stunnel")
		if err := os.WriteFile(exe, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		executable = func() (string, error) { return exe, nil }
	}
	stdout.Reset()
	stderr.Reset()
	code := run(t.Context(), []string{"sudoers", "--user", "nobody"}, &stdout, &stderr)
	if code != 1 || stdout.Len() != 0 || !strings.Contains(stderr.String(), "a sudoers line for "+exe+" would let them run anything as root") {
		t.Errorf("sudoers for %s: exit %d, stdout %q, stderr %q; want exit 1 saying it is not safe", exe, code, &stdout, &stderr)
	}
	for _, args := range [][]string{{"sudoers", "x"}, {"sudoers", "--bogus"}} {
		stderr.Reset()
		if code := run(t.Context(), args, &stdout, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2; stderr %q", args, code, &stderr)
		}
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"sudoers", "--user", "root"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "root needs no sudoers entry") {
		t.Errorf("sudoers --user root: exit %d, stderr %q", code, &stderr)
	}
}
