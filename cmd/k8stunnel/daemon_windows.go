package main

import (
	"errors"
	"log/slog"
	"syscall"
)

// Windows has no O_NOFOLLOW: a --log-file that is a symbolic link is
// followed there.
const oNoFollow = 0

func detached() *syscall.SysProcAttr { return nil }

// syslogLogger fails: there is no syslog on Windows.
func syslogLogger(int) (*slog.Logger, error) {
	return nil, errors.New("--syslog needs a Unix syslog; use --log-file on Windows")
}
