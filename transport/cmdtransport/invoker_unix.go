//go:build unix

package cmdtransport

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
)

// runAsInvoker makes cmd run as the user who ran `sudo k8stunnel`, when that is how we run: -e's command is that
// user's SSH (their ~/.ssh, agent, kubeconfig), as it would be without sudo, and as k8stunnel's own SSH client is.
func runAsInvoker(cmd *exec.Cmd) error {
	id := os.Getenv("SUDO_UID")
	if id == "" || id == "0" || os.Geteuid() != 0 {
		return nil
	}
	u, err := user.LookupId(id)
	if err != nil {
		return fmt.Errorf("finding the user who ran sudo (SUDO_UID %s): %w", id, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("the user who ran sudo has uid %q, gid %q", u.Uid, u.Gid)
	}
	groups := []uint32{uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		groups = groups[:0]
		for _, s := range ids {
			if n, err := strconv.ParseUint(s, 10, 32); err == nil {
				groups = append(groups, uint32(n))
			}
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}}
	// ssh finds its files by the passwd entry, kubectl and others by $HOME.
	cmd.Env = append(os.Environ(), "HOME="+u.HomeDir, "USER="+u.Username, "LOGNAME="+u.Username)
	return nil
}
