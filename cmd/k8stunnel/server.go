package main

import (
	"context"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/k8stunnel/k8stunnel/mux"
	"github.com/k8stunnel/k8stunnel/server"
)

// runServer is the helper on the node: mux on stdin/stdout, logs on stderr.
func runServer(ctx context.Context, args []string, stderr io.Writer) error {
	fs := pflag.NewFlagSet("k8stunnel server", pflag.ContinueOnError)
	verbose := fs.CountP("verbose", "v", "log every connection")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return usagef("server: %v", err)
	}
	// Each line becomes one record in the client's log, which has its own time.
	log := newLogger(stderr, *verbose, dropTime)
	return server.Serve(ctx, stdio{}, server.Config{
		Program:  "k8stunnel " + version,
		Log:      log,
		Discover: func() *mux.Facts { return server.Discover("/") },
	})
}

// stdio is the session channel as the helper sees it.
type stdio struct{}

func (stdio) Read(b []byte) (int, error)  { return os.Stdin.Read(b) }
func (stdio) Write(b []byte) (int, error) { return os.Stdout.Write(b) }
func (stdio) Close() error {
	os.Stdin.Close()
	return os.Stdout.Close()
}
