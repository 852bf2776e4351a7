//go:build unix

package firewall

import (
	"os/signal"
	"syscall"
)

// ignoreJobSignals ignores what a terminal or a dying parent sends the
// helper: it must outlive them to remove its rules.
func ignoreJobSignals() {
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGTTOU)
}

func leaveProcessGroup() error { return syscall.Setpgid(0, 0) }
