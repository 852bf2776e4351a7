package client

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/dnsproxy"
	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/mux/muxtest"
	"github.com/k8stunnel/k8stunnel/tui"
)

func TestDNSWithFacts(t *testing.T) {
	f := &mux.Facts{DNS: []string{"bogus", "10.43.0.10"}, ClusterDomain: "k3s.local", NodeDNS: []string{"192.168.1.1", "::1"}}
	got, _ := dnsWithFacts(dnsproxy.Config{}, f)
	if got.ClusterDNS != netip.MustParseAddr("10.43.0.10") || got.ClusterDomain != "k3s.local" ||
		!slices.Equal(got.NodeDNS, []netip.Addr{netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("::1")}) {
		t.Errorf("dnsWithFacts filled %+v", got)
	}
	given := dnsproxy.Config{ClusterDNS: netip.MustParseAddr("10.96.0.53"), ClusterDomain: "cluster.local",
		NodeDNS: []netip.Addr{netip.MustParseAddr("10.200.0.1")}}
	if got, _ := dnsWithFacts(given, f); got.ClusterDNS != given.ClusterDNS || got.ClusterDomain != given.ClusterDomain ||
		!slices.Equal(got.NodeDNS, given.NodeDNS) {
		t.Errorf("dnsWithFacts overrode what the user gave: %+v", got)
	}
	if got, _ := dnsWithFacts(given, nil); got.ClusterDNS != given.ClusterDNS {
		t.Errorf("dnsWithFacts(nil) changed the config: %+v", got)
	}
}

// The CLI prints the hint of a HintError only: dnsproxy's hint must reach it.
func TestStartDNSHint(t *testing.T) {
	c := &Client{cfg: Config{DNS: &dnsproxy.Config{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}}}}
	p, err := c.startDNS(nil, &fakeFirewall{})
	if err == nil {
		p.Close()
		t.Fatal("no error without a cluster DNS IP")
	}
	var he *tui.HintError
	if !errors.As(err, &he) || he.Hint == "" || !errors.Is(err, dnsproxy.ErrNoClusterDNS) {
		t.Errorf("err %v (%T), want a HintError with a hint wrapping ErrNoClusterDNS", err, err)
	}
	if plain := errors.New("x"); withHint(plain) != plain {
		t.Error("withHint changed an error without a hint")
	}
}

// muxPair is a client session whose helper accepts every stream and then
// goes quiet, until the test ends.
func muxPair(t *testing.T) *mux.Session {
	t.Helper()
	cs, ss := muxtest.Pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	go ss.Serve(ctx, func(_ mux.Request, st *mux.Stream) {
		st.WriteStatus(mux.StatusOK)
		<-release
		st.Close()
	})
	t.Cleanup(func() { cancel(); close(release); cs.Close(); ss.Close() })
	return cs
}

// The DNS proxy gives a stream up with a deadline: it must end a blocked Read.
func TestDNSStreamDeadline(t *testing.T) {
	sess := muxPair(t)
	dst := netip.MustParseAddrPort("10.96.0.10:53")
	for _, tt := range []struct {
		name  string
		delay time.Duration
	}{{"past", -time.Second}, {"future", 50 * time.Millisecond}} {
		t.Run(tt.name, func(t *testing.T) {
			st, err := sess.Dial(dst)
			if err != nil {
				t.Fatal(err)
			}
			c := st
			defer c.Close()
			if got := c.RemoteAddr().String(); got != dst.String() {
				t.Errorf("RemoteAddr %s, want %s", got, dst)
			}
			read := make(chan error, 1)
			go func() {
				_, err := c.Read(make([]byte, 1))
				read <- err
			}()
			c.SetReadDeadline(time.Now().Add(tt.delay))
			select {
			case err := <-read:
				if err == nil {
					t.Error("Read returned no error after the deadline")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Read still blocked 5s after the deadline")
			}
		})
	}
}
