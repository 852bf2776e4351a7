package client

import (
	"context"
	"io"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/server"
	"github.com/k8stunnel/k8stunnel/transport/transporttest"
)

// pipeHelper serves rwc, an in-memory channel, as sshd and the helper
// would: the helper on a pair of pipes, whose other ends sshd copies to and
// from the channel. Pipes have descriptors, so its helpers can join.
func pipeHelper(t *testing.T, cfg server.Config) func(ctx context.Context, rwc io.ReadWriteCloser) {
	return func(ctx context.Context, rwc io.ReadWriteCloser) {
		inR, inW, err := os.Pipe()
		if err != nil {
			t.Error(err)
			return
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			inR.Close()
			inW.Close()
			t.Error(err)
			return
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			io.Copy(inW, rwc)
			inW.Close()
		})
		wg.Go(func() {
			// EOF once every process holding the helper's stdout let go.
			io.Copy(rwc, outR)
			outR.Close()
			rwc.Close()
		})
		server.Serve(ctx, server.Pipes(inR, outW), cfg)
		rwc.Close()
		wg.Wait()
	}
}

// On a long link, the extra channels' helpers hand their channels to the
// first's: grow asks them to join, and the link knows which sessions share
// the first helper's process.
func TestEngineJoinsExtraChannels(t *testing.T) {
	tr := &transporttest.Transport{RTT: 50 * time.Millisecond,
		Serve: pipeHelper(t, server.Config{Program: "test server", AcceptJoins: true})}
	e := startEngine(t, Config{}, tr, echoTarget(t))
	// The first connect waits for the extra channels.
	ss := e.sessions()
	if len(ss) != 6 {
		t.Fatalf("%d sessions, want 6", len(ss))
	}
	if ss[0].Peer.JoinAt == "" || ss[0].Peer.Joined {
		t.Errorf("first session's answer %+v, want a JoinAt", ss[0].Peer)
	}
	for i, s := range ss[1:] {
		if !s.Peer.Joined {
			t.Errorf("session %d not joined", i+1)
		}
	}
	e.c.mu.Lock()
	joined := e.c.links.joined()
	e.c.mu.Unlock()
	if len(joined) != 6 {
		t.Errorf("link.joined() has %d sessions, want 6", len(joined))
	}
	for i := range 6 {
		echo(t, e.dial(t), strconv.Itoa(i))
	}
	e.shutdown(t)
}

// A helper that takes no joins answers without JoinAt: the extra channels'
// helpers then serve their own, and the link's joined sessions are the first.
func TestEngineWithoutJoins(t *testing.T) {
	tr := &transporttest.Transport{RTT: 50 * time.Millisecond,
		Serve: pipeHelper(t, server.Config{Program: "test server"})}
	e := startEngine(t, Config{}, tr, echoTarget(t))
	ss := e.sessions()
	if len(ss) != 6 {
		t.Fatalf("%d sessions, want 6", len(ss))
	}
	for i, s := range ss {
		if s.Peer.Joined || s.Peer.JoinAt != "" {
			t.Errorf("session %d answered %+v, want no join", i, s.Peer)
		}
	}
	e.c.mu.Lock()
	joined := e.c.links.joined()
	e.c.mu.Unlock()
	if len(joined) != 1 || joined[0] != ss[0] {
		t.Errorf("link.joined() = %d sessions, want the first alone", len(joined))
	}
	echo(t, e.dial(t), "alone")
	e.shutdown(t)
}

// More joined channels than a stripe has parts: each connection is striped
// over MaxStripeParts of them, from a different first channel each time.
func TestEngineStripesOverAtMostMaxParts(t *testing.T) {
	tr := &transporttest.Transport{Serve: pipeHelper(t, server.Config{Program: "test server", AcceptJoins: true})}
	e := startEngine(t, Config{Channels: mux.MaxStripeParts + 2}, tr, echoTarget(t))
	if n := len(e.sessions()); n != mux.MaxStripeParts+2 {
		t.Fatalf("%d sessions, want %d", n, mux.MaxStripeParts+2)
	}
	for i := range 3 {
		echo(t, e.dial(t), strconv.Itoa(i))
	}
	e.shutdown(t)
}

// A proxied connection (--socks, --http-proxy) to an address is striped
// over the joined channels too, and still echoes.
func TestEngineProxyDialStripes(t *testing.T) {
	tr := &transporttest.Transport{Serve: pipeHelper(t, server.Config{Program: "test server", AcceptJoins: true})}
	target := echoTarget(t)
	e := startEngine(t, Config{Channels: 3}, tr, target)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := e.c.DialContext(ctx, "tcp", target.String())
	if err != nil {
		t.Fatal(err)
	}
	if sc, ok := conn.(*proxyConn).tunnelConn.(*mux.Striped); !ok || sc.Parts() != 3 {
		t.Fatalf("proxied connection is a %T, want a stripe of 3 parts", conn.(*proxyConn).tunnelConn)
	}
	echo(t, conn, "striped")
	conn.Close()
	e.shutdown(t)
}
