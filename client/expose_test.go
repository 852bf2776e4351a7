package client

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/server"
	"github.com/k8stunnel/k8stunnel/transport/transporttest"
	"github.com/k8stunnel/k8stunnel/tui"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// exposedAt waits until Stats says where the helper listens for entry i,
// and a different place than old.
func exposedAt(t *testing.T, c *Client, i int, old string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s := c.Stats().Expose; len(s) > i && s[i].At != "" && s[i].At != old {
			return s[i].At
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no new address for -R entry %d (was %q)", i, old)
	return ""
}

// TestEngineExpose: a connection made to the helper's listener reaches the
// laptop-side target, and again on the listener of the next helper after
// the link was lost; Stats counts it.
func TestEngineExpose(t *testing.T) {
	target := echoTarget(t)
	tr := &transporttest.Transport{}
	x := Expose{Bind: loopback, Host: "127.0.0.1", HostPort: target.Port()}
	e := startEngine(t, Config{Expose: []Expose{x}}, tr, target)
	e.logs.wait(t, "pods reach "+x.Target()+" at "+e.c.Stats().Expose[0].At)
	at := exposedAt(t, e.c, 0, "")
	pod, err := net.Dial("tcp", at)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	echo(t, pod, "from a pod")
	if s := e.c.Stats().Expose[0]; s.Spec != "127.0.0.1:0:"+x.Target() || s.Connections != 1 {
		t.Errorf("stats %+v", s)
	}

	tr.Links()[0].Kill(errors.New("cable cut"))
	e.logs.wait(t, "tunnel restored")
	again := exposedAt(t, e.c, 0, at)
	// The lost helper closes its listener as its session ends.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", at)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("the lost helper's listener %s still accepts", at)
		}
	}
	pod2, err := net.Dial("tcp", again)
	if err != nil {
		t.Fatal(err)
	}
	defer pod2.Close()
	echo(t, pod2, "after the reconnect")
	e.shutdown(t)
}

// TestEngineExposeInUse: a node port that is taken fails the tunnel with a
// message that says which one and what to do.
func TestEngineExposeInUse(t *testing.T) {
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := uint16(taken.Addr().(*net.TCPAddr).Port)
	cfg := Config{Expose: []Expose{{Bind: loopback, Port: port, Host: "127.0.0.1", HostPort: 80}}}
	tr := &transporttest.Transport{Serve: func(ctx context.Context, rwc io.ReadWriteCloser) {
		server.Serve(ctx, server.Stream(rwc), server.Config{})
	}}
	cfg.Transport = tr
	cfg.Include = []firewall.Target{{Prefix: netip.MustParsePrefix("10.96.0.0/12")}}
	cfg.StartFirewall = func(context.Context) (Firewall, error) { return &fakeFirewall{}, nil }
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(t.Context())
	var he *tui.HintError
	if !errors.As(err, &he) || !strings.Contains(err.Error(), "node port "+strconv.Itoa(int(port))+" is in use on test@") || he.Hint != "pick another with -R" {
		t.Fatalf("Run = %v, want the port in use", err)
	}
	tr.Wait()
	checkNoEngineGoroutines(t)
}
