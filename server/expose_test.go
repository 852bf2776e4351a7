//go:build linux

package server

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
)

// exposedConn is a stream the helper opened for a pod's connection to an
// exposed port, as the client's handler gets it.
type exposedConn struct {
	req mux.Request
	st  *mux.Stream
}

func (p *pair) nextExposed(t *testing.T) exposedConn {
	t.Helper()
	select {
	case e := <-p.exposed:
		t.Cleanup(func() { e.st.Close() })
		return e
	case <-time.After(bound):
		t.Fatal("no stream for the exposed port")
	}
	return exposedConn{}
}

// exposedAddrs returns where the helper says it listens, failing on an error.
func exposedAddrs(t *testing.T, p *pair) []string {
	t.Helper()
	var addrs []string
	for i, e := range p.client.Peer.Exposed {
		if e.Error != "" {
			t.Fatalf("expose %d: %s", i, e.Error)
		}
		addrs = append(addrs, e.Addr)
	}
	return addrs
}

// TestExposeCarriesBack: a pod's connection to an exposed port reaches the
// client as a kind-4 stream naming the entry and the pod's address, and
// bytes and half-closes pass both ways once the client answers OK.
func TestExposeCarriesBack(t *testing.T) {
	p := newPair(t, Config{}, mux.Hello{Expose: []mux.Expose{{Bind: "127.0.0.1"}, {Bind: "127.0.0.1"}}})
	addrs := exposedAddrs(t, p)
	if len(addrs) != 2 || !strings.HasPrefix(addrs[1], "127.0.0.1:") {
		t.Fatalf("exposed %v", addrs)
	}
	pod, err := net.Dial("tcp", addrs[1])
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	e := p.nextExposed(t)
	if e.req.Entry != 1 || e.req.Src.String() != pod.LocalAddr().String() {
		t.Fatalf("request %+v for a pod at %v on entry 1", e.req, pod.LocalAddr())
	}
	if err := e.st.WriteStatus(mux.StatusOK); err != nil {
		t.Fatal(err)
	}
	pod.Write([]byte("ping"))
	pod.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(e.st)
	if err != nil || string(got) != "ping" {
		t.Fatalf("client read %q, %v", got, err)
	}
	e.st.Write([]byte("pong"))
	e.st.CloseWrite()
	pod.SetReadDeadline(time.Now().Add(bound))
	if got, err := io.ReadAll(pod); err != nil || string(got) != "pong" {
		t.Fatalf("pod read %q, %v", got, err)
	}
}

// TestExposeRefusedIsReset: when the client cannot reach its target, the
// pod's connection is reset, as a closed port would do it.
func TestExposeRefusedIsReset(t *testing.T) {
	p := newPair(t, Config{}, mux.Hello{Expose: []mux.Expose{{Bind: "127.0.0.1"}}})
	pod, err := net.Dial("tcp", exposedAddrs(t, p)[0])
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	p.nextExposed(t).st.WriteStatus(mux.StatusRefused)
	pod.SetReadDeadline(time.Now().Add(bound))
	if _, err := io.ReadAll(pod); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("pod read %v, want a reset", err)
	}
}

// TestExposeBind: without a bind address the helper listens on its own
// address toward the pod CIDR (what the node found, else what the client
// names), and says so when it knows none; a taken port is reported as such.
func TestExposeBind(t *testing.T) {
	pods := func() *mux.Facts { return &mux.Facts{PodCIDRs: []string{"127.0.0.0/8"}} }
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := uint16(taken.Addr().(*net.TCPAddr).Port)
	tests := []struct {
		name  string
		cfg   Config
		hello mux.Hello
		want  string // prefix of Addr, or of Error with "error: "
		inUse bool
	}{
		{"found on the node", Config{Discover: pods}, mux.Hello{}, "127.0.0.1:", false},
		{"named by the client", Config{}, mux.Hello{ExposeToward: "127.0.0.0/8"}, "127.0.0.1:", false},
		{"unknown", Config{}, mux.Hello{}, "error: no pod CIDR known", false},
		{"taken", Config{}, mux.Hello{Expose: []mux.Expose{{Bind: "127.0.0.1", Port: takenPort}}}, "error: ", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.hello.Expose == nil {
				tt.hello.Expose = []mux.Expose{{}}
			}
			p := newPair(t, tt.cfg, tt.hello)
			got := p.client.Peer.Exposed
			if len(got) != 1 {
				t.Fatalf("exposed %+v", got)
			}
			s := got[0].Addr
			if got[0].Error != "" {
				s = "error: " + got[0].Error
			}
			if !strings.HasPrefix(s, tt.want) || got[0].InUse != tt.inUse {
				t.Fatalf("got %+v, want %q (in use: %v)", got[0], tt.want, tt.inUse)
			}
		})
	}
}

// TestExposeEndsWithSession: the listeners close when the session ends.
func TestExposeEndsWithSession(t *testing.T) {
	p := newPair(t, Config{}, mux.Hello{Expose: []mux.Expose{{Bind: "127.0.0.1"}}})
	addr := exposedAddrs(t, p)[0]
	p.client.Close()
	p.wait(t)
	d := net.Dialer{}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if c, err := d.DialContext(ctx, "tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial after the session ended: %v, want refused", err)
	}
}
