package sshdial

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
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

// credential runs a command as the local user; nil when we already are them.
func (lu localUser) credential() *syscall.Credential {
	if !lu.sudo {
		return nil
	}
	return &syscall.Credential{Uid: uint32(lu.uid), Gid: uint32(lu.gid), NoSetGroups: false, Groups: lu.groups()}
}

func (lu localUser) groups() []uint32 {
	u, err := lookupUser(strconv.Itoa(lu.uid))
	if err != nil {
		return []uint32{uint32(lu.gid)}
	}
	ids, err := u.GroupIds()
	if err != nil {
		return []uint32{uint32(lu.gid)}
	}
	var out []uint32
	for _, s := range ids {
		if n, err := strconv.Atoi(s); err == nil {
			out = append(out, uint32(n))
		}
	}
	return out
}

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

// checkOwner refuses files owned by another user than the local one or root.
func (lu localUser) checkOwner(fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 || int(st.Uid) == lu.uid {
		return nil
	}
	return fmt.Errorf("%w %s (uid %d)", errNotOwned, lu.name, st.Uid)
}

// sysProcAttr makes a command run as the local user.
func sysProcAttr(lu localUser) *syscall.SysProcAttr {
	if c := lu.credential(); c != nil {
		return &syscall.SysProcAttr{Credential: c}
	}
	return nil
}
