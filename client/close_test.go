package client

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/k8stunnel/k8stunnel/firewall"
	"github.com/k8stunnel/k8stunnel/transport/transporttest"
)

// A Client made but never run must not keep its port.
func TestClientCloseWithoutRun(t *testing.T) {
	c, err := New(Config{
		Transport: &transporttest.Transport{},
		// A port of its own per test process; the client moves lower when taken.
		Listen:        []string{"127.0.0.1:" + strconv.Itoa(20000+os.Getpid()%10000)},
		Include:       []firewall.Target{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}},
		StartFirewall: func(context.Context) (Firewall, error) { return &fakeFirewall{}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.listeners[0].Addr().String()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port still held after Close: %v", err)
	}
	ln.Close()
	if err := c.Run(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Run after Close = %v; want net.ErrClosed", err)
	}
}
