package sshdial

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// localUser is the person the SSH work is done for. Under sudo that is the
// one who ran sudo, not root: their ssh_config, keys, known_hosts and agent,
// as `ssh` run by them would use.
type localUser struct {
	name, home string
	uid, gid   int
	sudo       bool   // started through sudo: files we create are given to the user
	agent      string // SSH_AUTH_SOCK, "" when unset (sudo drops it by default)
}

// Seams for tests: they run as root and fake the sudo invoker.
var (
	geteuid    = os.Geteuid
	lookupUser = user.LookupId
)

// currentLocal finds the local user: SUDO_UID when root runs us through sudo,
// else the process's own user with $HOME.
func currentLocal() (localUser, error) {
	lu := localUser{agent: os.Getenv("SSH_AUTH_SOCK"), uid: os.Getuid(), gid: os.Getgid()}
	if id := os.Getenv("SUDO_UID"); id != "" && id != "0" && geteuid() == 0 {
		u, err := lookupUser(id)
		if err != nil {
			return lu, fmt.Errorf("finding the user who ran sudo (SUDO_UID %s): %w", id, err)
		}
		lu.name, lu.home, lu.sudo = u.Username, u.HomeDir, true
		lu.uid, _ = strconv.Atoi(u.Uid)
		lu.gid, _ = strconv.Atoi(u.Gid)
		return lu, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return lu, fmt.Errorf("finding home directory: %w", err)
	}
	lu.home = home
	lu.name = os.Getenv("USER")
	if u, err := user.Current(); err == nil {
		lu.name = u.Username
	}
	return lu, nil
}

// sshDir is ~/.ssh of the local user, for messages.
func (lu localUser) sshDir() string { return filepath.Join(lu.home, ".ssh") }

// give hands a file or directory we created to the local user, so root does
// not end up owning their ~/.ssh/known_hosts.
func (lu localUser) give(path string) error {
	if !lu.sudo {
		return nil
	}
	return os.Lchown(path, lu.uid, lu.gid)
}

// errNotOwned is a file in the user's ~/.ssh that someone else owns; ssh
// refuses such a config, and a key or known_hosts planted by another user is
// worse.
var errNotOwned = errors.New("owned by neither the user nor root")
