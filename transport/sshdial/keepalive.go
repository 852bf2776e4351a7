package sshdial

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/ssh"
)

// firstProbes is how many keepalives go out back to back when the link is new.
const firstProbes = 3

// Keepalive proves every interval that the node still answers, because a
// dead link (a node that reboots, a NAT that forgets us) otherwise shows up
// only when TCP gives up, many minutes later. x/crypto has no keepalive of its
// own and SendRequest has no timeout, so each request races a timer.
//
// On a missing answer or a failed request Keepalive returns the reason; the
// caller records it and then closes c, so the reason, not the closed
// connection it causes, is what gets reported. It returns nil when ctx is done.
// rtt, when set, is told each answer's round trip.
func Keepalive(ctx context.Context, c *ssh.Client, interval, timeout time.Duration, rtt func(time.Duration)) error {
	if interval <= 0 || timeout <= 0 {
		return errors.New("ssh keepalive: interval and timeout must be positive")
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	// The first go out at once, firstProbes of them back to back: the
	// client sizes the link's channels by the round trip while the helper
	// starts, and one answer can be late on a busy machine (46 ms on a LAN
	// once, which asked for six helpers). Each reports the least so far.
	var least time.Duration
	for n := 0; ; n++ {
		if n >= firstProbes {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}

		reply := make(chan error, 1)
		sent := time.Now()
		go func() {
			// OpenSSH answers with a failure reply: any answer proves liveness.
			_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		timer := time.NewTimer(timeout)
		select {
		case err := <-reply:
			timer.Stop()
			if err != nil {
				return fmt.Errorf("ssh keepalive: %w", err)
			}
			d := time.Since(sent)
			if n < firstProbes {
				if n == 0 || d < least {
					least = d
				}
				d = least
			}
			if rtt != nil {
				rtt(d)
			}
		case <-timer.C:
			return fmt.Errorf("ssh keepalive: %w in %s", ErrKeepaliveTimeout, timeout)
		case <-ctx.Done():
			timer.Stop()
			return nil
		}
	}
}
