package server

import (
	"os"

	"golang.org/x/sys/unix"
)

// growPipe grows f, a pipe, to pipeSize. Best effort: not a pipe (a
// socketpair, a terminal) or over the limit in /proc/sys/fs/pipe-max-size,
// and it stays as it is.
func growPipe(f *os.File) { unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize) }

// pollable returns, when f is a pipe, a non-blocking duplicate of it that
// the runtime polls, else f. sshd's pipes are blocking, and closing one does
// not wake a Read blocked in it: the session would wait for the client to
// end before it could close, however it ended on our side.
func pollable(f *os.File) *os.File {
	rc, err := f.SyscallConn()
	if err != nil {
		return f
	}
	dup := -1
	rc.Control(func(fd uintptr) {
		var st unix.Stat_t
		if unix.Fstat(int(fd), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
			// Not a terminal: O_NONBLOCK would stay on it after we exit,
			// for the shell that shares it.
			dup, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}
	})
	if dup < 0 {
		return f
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return f
	}
	return os.NewFile(uintptr(dup), f.Name())
}
