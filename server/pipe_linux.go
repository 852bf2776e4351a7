package server

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// growPipe grows f, a pipe, to pipeSize. Best effort: not a pipe (a
// socketpair, a terminal) or over the limit in /proc/sys/fs/pipe-max-size,
// and it stays as it is.
func growPipe(f *os.File) { unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize) }

// pollable returns, when f is a pipe, a non-blocking descriptor for it that
// the runtime polls, else f. sshd's pipes are blocking, and closing one does
// not wake a Read blocked in it: the session would wait for the client to
// end before it could close, however it ended on our side.
//
// The pipe is opened anew through /proc, so O_NONBLOCK is on a file
// description of our own: private says so, and only then may rawio use it.
// On a dup, whoever shares the description (anything that calls os.Stdin.Fd)
// could make it blocking again under a raw read, which would then stop the
// helper's one thread. Without /proc it is a dup: still polled, through
// ordinary reads and writes. Not a terminal either way: O_NONBLOCK would stay
// on it after we exit, for the shell that shares it.
func pollable(f *os.File, flag int) (_ *os.File, private bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return f, false
	}
	fd := -1
	rc.Control(func(orig uintptr) {
		var st unix.Stat_t
		if unix.Fstat(int(orig), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			return
		}
		fd, err = unix.Open(fmt.Sprintf("/proc/self/fd/%d", orig), flag|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			private = true
			return
		}
		if fd, err = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0); err != nil {
			fd = -1
		}
	})
	if fd < 0 {
		return f, false
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return f, false
	}
	return os.NewFile(uintptr(fd), f.Name()), private
}
