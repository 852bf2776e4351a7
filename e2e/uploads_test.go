//go:build linux

package e2e

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestUploadsResetWhenTunnelDies: hundreds of uploads to a pod are running when the tunnel dies. Every pod-side
// server must see a reset, never a clean EOF: an application that took FIN for the end of a transfer would commit a
// truncated upload.
func TestUploadsResetWhenTunnelDies(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill func(t *testing.T, lab *Lab, c *Client)
	}{
		{"sshd session killed", func(t *testing.T, lab *Lab, c *Client) {
			sessions, err := SSHDSessionPids(lab)
			if err != nil || len(sessions) == 0 {
				t.Fatalf("no sshd session process on the node (%v)", err)
			}
			for _, pid := range sessions {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}},
		{"client stopped with Ctrl-C", func(t *testing.T, lab *Lab, c *Client) {
			if err := c.Stop(syscall.SIGINT); err != nil {
				t.Errorf("stopping k8stunnel: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab := newLab(t)
			c := startQuietClient(t, lab)
			t.Cleanup(func() { c.Stop(syscall.SIGTERM) })
			uploadsResetWhen(t, lab, func() { tc.kill(t, lab, c) })
		})
	}
}

func uploadsResetWhen(t *testing.T, lab *Lab, kill func()) {
	const n = 200
	type ending struct {
		bytes int64
		err   error
	}
	started := make(chan struct{}, n)
	ended := make(chan ending, n)
	addr := servePod(t, lab, func(c net.Conn) {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			ended <- ending{0, err}
			return
		}
		started <- struct{}{}
		m, err := io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF // io.Copy reports a clean end as nil
		}
		ended <- ending{m + 1, err}
	})

	chunk := make([]byte, 4096)
	for range n {
		conn := dialLaptop(t, lab, addr)
		go func() {
			// Writes until the tunnel breaks; never closes, so the upload is never finished.
			for {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	for i := range n {
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d uploads reached the pod", i, n)
		}
	}

	kill()

	var eofs, resets, other int
	var total int64
	for i := range n {
		select {
		case e := <-ended:
			total += e.bytes
			switch {
			case errors.Is(e.err, syscall.ECONNRESET):
				resets++
			case errors.Is(e.err, io.EOF):
				eofs++
			default:
				other++
				t.Logf("an upload ended with %v", e.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d pod-side connections still open 30 s after the tunnel died", n-i, n)
		}
	}
	t.Logf("%d uploads (%d bytes in all): %d reset, %d clean EOF, %d other", n, total, resets, eofs, other)
	if eofs > 0 || other > 0 {
		t.Errorf("%d pod-side servers saw a clean EOF and %d another ending, want every one reset", eofs, other)
	}
}
