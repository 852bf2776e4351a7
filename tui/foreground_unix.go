//go:build unix

package tui

import "golang.org/x/sys/unix"

// isForeground reports whether we are the foreground job of terminal fd.
func isForeground(fd int) bool {
	pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	return err == nil && pgrp == unix.Getpgrp()
}
