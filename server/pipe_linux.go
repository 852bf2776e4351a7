package server

import (
	"os"

	"golang.org/x/sys/unix"
)

// growPipe grows f, a pipe, to pipeSize. Best effort: not a pipe (a
// socketpair, a terminal) or over the limit in /proc/sys/fs/pipe-max-size,
// and it stays as it is.
func growPipe(f *os.File) { unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize) }
