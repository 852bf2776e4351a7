//go:build !unix

package sshdial

import (
	"os"
	"syscall"
)

// checkOwner cannot tell a file's owner here; the proxy mode, the only one
// that runs on such systems, has no sudo split to protect.
func (lu localUser) checkOwner(fi os.FileInfo) error { return nil }

// sysProcAttr: commands run as whoever we are; there is no sudo to undo.
func sysProcAttr(lu localUser) *syscall.SysProcAttr { return nil }
