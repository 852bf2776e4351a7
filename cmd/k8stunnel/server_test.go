package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
)

// helperPipes is the client's end of the helper's stdin and stdout, the
// pipes sshd would hold. Closing it leaves the helper's stdin open: that
// is the test's to close, so that the client noticing a broken stdout does
// not stop the helper by the stdin EOF path instead.
type helperPipes struct {
	r *os.File // the helper's stdout
	w *os.File // the helper's stdin
}

func (p helperPipes) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p helperPipes) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p helperPipes) Close() error                { return p.r.Close() }

// TestHelperResetsUploadsWhenStopped runs the real `k8stunnel server` with
// an upload in progress and stops it the ways sshd and an admin do: every
// target must see a reset, never the FIN that would tell a pod the upload
// was complete.
func TestHelperResetsUploadsWhenStopped(t *testing.T) {
	stop := func(sig syscall.Signal) func(*exec.Cmd, helperPipes, *net.TCPConn) {
		return func(cmd *exec.Cmd, _ helperPipes, _ *net.TCPConn) { cmd.Process.Signal(sig) }
	}
	for _, tt := range []struct {
		name string
		stop func(*exec.Cmd, helperPipes, *net.TCPConn)
	}{
		{"SIGTERM", stop(syscall.SIGTERM)},
		{"SIGHUP", stop(syscall.SIGHUP)}, // sshd, when the session goes away
		{"SIGINT", stop(syscall.SIGINT)},
		{"stdout broken", func(_ *exec.Cmd, p helperPipes, target *net.TCPConn) {
			// sshd gone while the pod answers: the helper's next write to
			// stdout fails with EPIPE, which by default kills a Go program
			// with SIGPIPE before it can reset anything.
			p.r.Close()
			target.Write([]byte("an answer"))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			inR, inW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			outR, outW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "server")
			cmd.Env = append(os.Environ(), realMainEnv+"=1")
			cmd.Stdin, cmd.Stdout = inR, outW
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			inR.Close()
			outW.Close()
			t.Cleanup(func() { inW.Close() })
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-exited
			})
			pipes := helperPipes{outR, inW}
			sess, err := mux.NewClient(pipes, mux.Hello{}, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatalf("handshake with the helper: %v", err)
			}
			t.Cleanup(func() { sess.Close() })
			go sess.Serve(context.Background(), func(_ mux.Request, st *mux.Stream) { st.Close() })

			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			st, err := sess.Dial(ln.Addr().(*net.TCPAddr).AddrPort())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			const part = "part of an upload"
			if _, err := io.WriteString(st, part); err != nil {
				t.Fatal(err)
			}
			ln.SetDeadline(time.Now().Add(10 * time.Second))
			target, err := ln.AcceptTCP()
			if err != nil {
				t.Fatalf("the helper did not connect to the target: %v", err)
			}
			t.Cleanup(func() { target.Close() })
			target.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(target, make([]byte, len(part))); err != nil {
				t.Fatalf("reading the upload: %v", err)
			}

			tt.stop(cmd, pipes, target)
			// A FIN here, or the kernel's once the helper is gone, would be
			// the bug.
			if _, err := io.ReadAll(target); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("target read %v, want a reset (ECONNRESET)", err)
			}
			inW.Close() // sshd going away
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Fatal("the helper did not exit")
			}
		})
	}
}
