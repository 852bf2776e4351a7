package firewall

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// lockFile takes an exclusive flock on path, creating it, and returns what
// releases it. It waits as long as another process holds it; waiting, when
// set, is called once before that wait. The lock goes with the descriptor, so
// a process that dies releases it.
func lockFile(path string, waiting func()) (unlock func(), err error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EROFS) {
		// A system without a writable /run: installing unserialised beats
		// not installing at all.
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", path, err)
	}
	err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		if waiting != nil {
			waiting()
		}
		for err = unix.EINTR; errors.Is(err, unix.EINTR); {
			err = unix.Flock(fd, unix.LOCK_EX)
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { unix.Close(fd) }, nil
}
