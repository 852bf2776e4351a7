//go:build linux

package e2e

// -R, the other direction: a pod reaches a server on the laptop's loopback.
//
//	 laptop ns                       node ns                                  pod ns
//	┌──────────────────────┐        ┌───────────────────────────────────┐     ┌────────────────────────┐
//	│ HTTP 127.0.0.1:P     │◄─dial──┤ k8stunnel server listens on       │◄────┤ curl 10.244.1.1:18080  │
//	│ k8stunnel -R 18080:  │ stream │  10.244.1.1:18080 (its address    │     │                        │
//	│   127.0.0.1:P        │ kind 4 │  toward the pod CIDR), :18081     │     │                        │
//	│ nothing on :1        │        │                                   │     │                        │
//	└──────────────────────┘        └───────────────────────────────────┘     └────────────────────────┘

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	exposedPort = 18080 // relayed to the laptop's page
	refusedPort = 18081 // relayed to a laptop port nobody listens on
)

func TestReverse(t *testing.T) {
	lab := newLab(t)
	ln, err := lab.Laptop.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	page := "hello from the laptop's loopback"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, page)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	laptop := ln.Addr().String()

	// The laptop namespace is the test's own: nothing listens on port 1 there.
	args := append([]string{"-v", "-R", strconv.Itoa(exposedPort) + ":" + laptop, "-R", strconv.Itoa(refusedPort) + ":127.0.0.1:1"},
		lab.ClientArgs(PodCIDR, ServiceCIDR)...)
	c := startClientArgs(t, lab, args...)
	t.Cleanup(func() { stopClient(t, c) })
	exposed := net.JoinHostPort(NodePodSideAddr, strconv.Itoa(exposedPort))
	waitLog(t, c, 0, "pods reach "+laptop+" at "+exposed, time.Second)
	url := "http://" + exposed + "/"

	podCurl := func(t *testing.T, url string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return lab.Pod.Output(ctx, "curl", "-sS", "--max-time", "10", url)
	}
	getPage := func(t *testing.T) {
		t.Helper()
		if out, err := podCurl(t, url); err != nil || !strings.Contains(out, page) {
			t.Fatalf("pod: curl %s = %q, %v; want the laptop's page", url, out, err)
		}
	}

	t.Run("a pod gets the laptop's page", getPage)

	t.Run("50 parallel requests", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for range 50 {
			wg.Go(func() {
				body, err := getFrom(lab.Pod, url)
				if err == nil && !strings.Contains(body, page) {
					err = fmt.Errorf("body %q", body)
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("a refused laptop port is a reset in the pod", func(t *testing.T) {
		// Not curl: when the reset comes within a millisecond, before curl has checked its connect, curl says
		// "Couldn't connect to server" (exit 7), as for a port nobody listens on. The kernel's errors tell them apart:
		// a reset is ECONNRESET, on the connect or on the first read; nothing listening would be ECONNREFUSED, and an
		// empty reply (a FIN) a clean EOF.
		refused := net.JoinHostPort(NodePodSideAddr, strconv.Itoa(refusedPort))
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		conn, err := lab.Pod.Dial(ctx, "tcp", refused)
		if err == nil {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err = conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err == nil {
				_, err = conn.Read(make([]byte, 1))
			}
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("pod: a connection to %s ended with %v; want a reset (ECONNRESET)", refused, err)
		}
	})

	t.Run("works again after a reconnect", func(t *testing.T) {
		sessions, err := SSHDSessionPids(lab)
		if err != nil || len(sessions) == 0 {
			t.Fatalf("no sshd session process on the node (%v)", err)
		}
		offset := len(c.Stderr())
		for _, pid := range sessions {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		waitLog(t, c, offset, "tunnel restored", 15*time.Second)
		getPage(t)
	})

	t.Run("a node port in use is one clear error", func(t *testing.T) {
		const taken = 18082
		ln, err := lab.Node.Listen("tcp", net.JoinHostPort(NodePodSideAddr, strconv.Itoa(taken)))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		other, err := lab.StartClient(append([]string{"-l", "127.0.0.1:12399", "-R", strconv.Itoa(taken) + ":" + laptop},
			lab.ClientArgs(PodCIDR)...)...)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-other.Exited():
		case <-time.After(20 * time.Second):
			other.Stop(syscall.SIGKILL)
			t.Fatalf("k8stunnel still running 20 s after the node refused its -R port:\n%s", other.Stderr())
		}
		var exit *exec.ExitError
		if err := other.ExitErr(); !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("exit: %v, want status 1", err)
		}
		want := fmt.Sprintf("node port %d is in use", taken)
		if !strings.Contains(other.Stderr(), want) || !strings.Contains(other.Stderr(), "hint: pick another with -R") {
			t.Errorf("stderr does not say %q with a hint:\n%s", want, other.Stderr())
		}
	})

	t.Run("nothing listens on the node after exit", func(t *testing.T) {
		stopClient(t, c)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out string
		for ctx.Err() == nil {
			out, err = lab.Node.Output(ctx, "ss", "-Hltn")
			if err == nil && !strings.Contains(out, ":"+strconv.Itoa(exposedPort)) && !strings.Contains(out, ":"+strconv.Itoa(refusedPort)) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("the node still listens after the client exited (%v):\n%s", err, out)
	})
}
