package main

import (
	"context"
	"io"
	"runtime"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/server"
)

// runServer is the helper on the node: mux on stdin/stdout, logs on stderr.
func runServer(ctx context.Context, verbose int, stderr io.Writer) error {
	// Each line becomes one record in the client's log, which has its own time.
	log := newLogger(stderr, verbose, dropTime)
	// One P: the helper only moves bytes between sockets and a pipe, and on a
	// small node a second P mostly spins looking for work and wakes threads.
	// Each --channels helper is its own process, so channels still spread.
	runtime.GOMAXPROCS(1)
	return server.Serve(ctx, server.Stdio(), server.Config{
		Program:  "k8stunnel " + version,
		Log:      log,
		Discover: func() *mux.Facts { return server.Discover("/") },
	})
}
