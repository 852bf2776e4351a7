//go:build !linux

package dnsproxy

import (
	"errors"
	"syscall"
)

// The DNS proxy answers the queries the firewall captures, which only the
// Linux firewall does; elsewhere the client never starts it.
var errNeedsLinux = errors.New("the DNS proxy needs Linux; use --socks or --http-proxy")

func reserveTCPPort(uint16) (int, error) { return -1, errNeedsLinux }
func closeFD(int)                        {}
func reuseAddr(syscall.RawConn) error    { return errNeedsLinux }
