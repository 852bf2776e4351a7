//go:build unix

package sshdial

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

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
