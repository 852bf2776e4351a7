//go:build unix

package main

import (
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"syscall"
)

const oNoFollow = syscall.O_NOFOLLOW

// detached makes --daemon's child the leader of a new session, away from
// the terminal.
func detached() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }

// dialSyslog connects to the local syslog daemon; tests replace it.
var dialSyslog = func() (io.Writer, error) { return syslog.New(syslog.LOG_INFO|syslog.LOG_DAEMON, "k8stunnel") }

// syslogLogger sends records to the local syslog daemon.
func syslogLogger(verbose int) (*slog.Logger, error) {
	w, err := dialSyslog()
	if err != nil {
		return nil, fmt.Errorf("connecting to syslog: %w", err)
	}
	return newLogger(w, verbose, dropTime), nil
}
