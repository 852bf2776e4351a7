package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"regexp"

	"github.com/spf13/pflag"

	"github.com/k8stunnel/k8stunnel/tui"
)

const cmdSudoers = "sudoers"

// sudoersInstall is how to put the printed line in place: checked by visudo before sudo ever reads it, because a
// broken file in /etc/sudoers.d breaks sudo for the whole machine (sudo skips names with a dot, so the unchecked
// file is never read), and never through a shared directory such as /tmp, where another user could swap the file
// between the check and the install.
const sudoersInstall = "k8stunnel sudoers | sudo tee /etc/sudoers.d/k8stunnel.new >/dev/null && " +
	"sudo visudo -cf /etc/sudoers.d/k8stunnel.new && sudo mv /etc/sudoers.d/k8stunnel.new /etc/sudoers.d/k8stunnel"

func parseSudoers(args []string) (invocation, error) {
	inv := invocation{cmd: cmdSudoers}
	fs := pflag.NewFlagSet("k8stunnel sudoers", pflag.ContinueOnError)
	fs.StringVar(&inv.sudoersUser, "user", "", "the user the line is for")
	fs.SetOutput(io.Discard)
	const usage = "(usage: k8stunnel sudoers [--user NAME])"
	if err := fs.Parse(args); err != nil {
		return invocation{}, usagef("sudoers: %v %s", err, usage)
	}
	if fs.NArg() > 0 {
		return invocation{}, usagef("sudoers takes no arguments %s", usage)
	}
	return inv, nil
}

// runSudoers prints the sudoers line that lets a user run this executable's firewall part as root without a
// password: exactly the command the client runs through sudo (firewall.StartHelper: EXE firewall), nothing else.
// The firewall part only installs rules that redirect to the calling client's own sockets (firewall.Caller), so the
// line gives no shell and no way at other users' traffic, as long as only root can change the executable.
func runSudoers(name string, stdout, stderr io.Writer) error {
	exe, err := executable() // what the client passes to sudo, resolved the same way
	if err != nil {
		return fmt.Errorf("finding my own executable: %w", err)
	}
	if name == "" {
		if name, err = invokingUser(); err != nil {
			return err
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("looking up user %q: %w", name, err)
	}
	if u.Uid == "0" {
		return &tui.HintError{Err: errors.New("root needs no sudoers entry"),
			Hint: "run k8stunnel sudoers as the user who starts tunnels, or pass --user NAME"}
	}
	line, err := sudoersLine(name, exe)
	if err != nil {
		return err
	}
	// The walk up from the file checks the directories sudo really goes through only on a path without symlinks.
	real, err := filepath.EvalSymlinks(exe)
	if err != nil {
		return fmt.Errorf("finding my own executable: %w", err)
	}
	if err := onlyRootWrites(real, statOwner); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# %s may run the firewall part of k8stunnel (%s) as root without a password, nothing else.\n%s\n",
		name, exe, line)
	fmt.Fprintf(stderr, "k8stunnel: install it with: %s\n", sudoersInstall)
	return nil
}

// invokingUser is the user the line is for by default: who ran sudo when run through sudo, else whoever runs this.
func invokingUser() (string, error) {
	if name := os.Getenv("SUDO_USER"); name != "" && os.Geteuid() == 0 {
		return name, nil
	}
	u, err := user.Current()
	if err != nil {
		return "", fmt.Errorf("finding who runs k8stunnel: %w", err)
	}
	return u.Username, nil
}

// executable is os.Executable; tests point it at a file only root may change.
var executable = os.Executable

var (
	// sudoersName and sudoersPath accept no character sudoers gives a meaning to (',', ':', '=', '\', '#', '!',
	// spaces, ...), so the line needs no escaping and cannot be made to say more than it seems to.
	sudoersName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)
	sudoersPath = regexp.MustCompile(`^/[A-Za-z0-9_./+-]*$`)
	// sudoersAlias is how sudoers spells an alias, and ALL: a user with such a name would be read as every user, or as
	// whoever the alias lists.
	sudoersAlias = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
)

// sudoersLine is the rule for user to run exe's firewall part as root: an absolute path and its one exact argument,
// which sudo matches as the whole command line.
func sudoersLine(user, exe string) (string, error) {
	if !sudoersName.MatchString(user) || sudoersAlias.MatchString(user) {
		return "", fmt.Errorf("user name %q has characters a sudoers line would need to escape; write the line by hand", user)
	}
	if !filepath.IsAbs(exe) || filepath.Clean(exe) != exe || !sudoersPath.MatchString(exe) {
		return "", &tui.HintError{Err: fmt.Errorf("executable path %q has characters a sudoers line would need to escape", exe),
			Hint: "install k8stunnel as /usr/local/bin/k8stunnel: sudo install -m 0755 " + exe + " /usr/local/bin/k8stunnel"}
	}
	return user + " ALL=(root) NOPASSWD: " + exe + " firewall", nil
}

// owner is what onlyRootWrites needs to know about a file.
type owner struct {
	uid  uint32
	mode fs.FileMode
}

// onlyRootWrites checks that nobody but root can replace path: it and every directory above it are owned by root
// and not writable by group or others. Otherwise whoever can write there could swap the executable and run anything
// as root through the sudoers line. A world-writable directory with the sticky bit (/tmp) is refused too: there no
// one else may rename root's file, but the line outlives it, and once the file is gone (a reboot, a cleaner of /tmp)
// anyone may create one of that name.
func onlyRootWrites(path string, stat func(string) (owner, error)) error {
	for p := path; ; p = filepath.Dir(p) {
		o, err := stat(p)
		if err != nil {
			return fmt.Errorf("checking who may change %s: %w", path, err)
		}
		if o.uid != 0 || o.mode.Perm()&0o022 != 0 {
			return &tui.HintError{
				Err: fmt.Errorf("%s can be changed by others than root (owner uid %d, mode %v): a sudoers line for %s would let them run anything as root",
					p, o.uid, o.mode, path),
				Hint: "install k8stunnel where only root writes, then run that copy's k8stunnel sudoers: sudo install -m 0755 " +
					path + " /usr/local/bin/k8stunnel"}
		}
		if p == "/" {
			return nil
		}
	}
}
