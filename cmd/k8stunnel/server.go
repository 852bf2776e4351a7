package main

import (
	"context"
	"io"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/server"
)

// runServer is the helper on the node: mux on stdin/stdout, logs on stderr.
func runServer(ctx context.Context, verbose int, stderr io.Writer) error {
	// Each line becomes one record in the client's log, which has its own time.
	log := newLogger(stderr, verbose, dropTime)
	// One P: the helper only moves bytes between sockets and a pipe, and on a
	// small node a second P mostly spins looking for work and wakes threads.
	// A link's extra channels (a long link's, or --channels N) are handed to
	// its first helper (AcceptJoins), so they share this one P: a connection
	// striped over several channels needs all of them in one process. A
	// helper whose join failed is still its own process.
	runtime.GOMAXPROCS(1)
	// When sshd goes away, a write to stdout fails with EPIPE, and a Go
	// program that leaves SIGPIPE alone dies of it on fd 1 at once, its
	// targets closed by the kernel with a FIN: a pod would take a truncated
	// upload for a complete one. Ignored, the write returns the error, the
	// session ends and Serve resets every unfinished target.
	signal.Ignore(syscall.SIGPIPE)
	return server.Serve(ctx, server.Stdio(), server.Config{
		Program:     "k8stunnel " + version,
		Log:         log,
		Discover:    func() *mux.Facts { return server.Discover("/") },
		AcceptJoins: true,
	})
}
