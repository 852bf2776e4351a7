//go:build unix

package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// signalStop is stop for an instance without a control socket: SIGTERM, but
// only to a k8stunnel of the caller's own (any, for root), then a wait for it
// to be gone.
func signalStop(ctx context.Context, pid int) error {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	var st syscall.Stat_t
	if err == nil {
		err = syscall.Stat("/proc/"+strconv.Itoa(pid), &st)
	}
	if err != nil || !strings.HasPrefix(baseName(exe), "k8stunnel") {
		return fmt.Errorf("no k8stunnel with pid %d (see k8stunnel status)", pid)
	}
	if uid := os.Getuid(); uid != 0 && int(st.Uid) != uid {
		return fmt.Errorf("k8stunnel %d belongs to uid %d, not you", pid, st.Uid)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping k8stunnel %d: %w", pid, err)
	}
	for !gone(pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopping k8stunnel %d: still running after %w", pid, context.Cause(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// gone says pid has exited (a zombie has).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || strings.HasPrefix(s[i:], ") Z")
}
