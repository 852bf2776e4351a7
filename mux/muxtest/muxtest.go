// Package muxtest joins a client and a helper mux.Session in memory, for the
// tests of packages that use sessions.
package muxtest

import (
	"log/slog"
	"net"
	"testing"

	"github.com/k8stunnel/k8stunnel/mux"
)

// Pair returns a client session and a helper session joined by net.Pipe,
// their handshake done. Both are closed when the test ends; the caller
// serves the helper's side.
func Pair(t testing.TB) (client, helper *mux.Session) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	cconn, sconn := net.Pipe()
	type result struct {
		s   *mux.Session
		err error
	}
	srvc := make(chan result, 1)
	go func() {
		s, err := mux.NewServer(sconn, func(mux.Hello) mux.Hello { return mux.Hello{} }, log)
		srvc <- result{s, err}
	}()
	client, err := mux.NewClient(cconn, mux.Hello{}, log)
	if err != nil {
		cconn.Close()
		<-srvc
		t.Fatalf("client handshake: %v", err)
	}
	r := <-srvc
	if r.err != nil {
		client.Close()
		t.Fatalf("helper handshake: %v", r.err)
	}
	t.Cleanup(func() {
		client.Close()
		r.s.Close()
	})
	return client, r.s
}
