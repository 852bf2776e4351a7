package main

import (
	"context"
	"io"
	"os"

	"github.com/k8stunnel/k8stunnel/firewall"
)

// runFirewall is the privileged part: it applies rules on request and
// removes them all when its parent goes away (stdin closes).
func runFirewall(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) > 0 {
		return usagef("firewall takes no arguments")
	}
	log := newLogger(stderr, 0)
	return firewall.ServeHelper(ctx, os.Stdin, os.Stdout, firewall.New(nil, log), log)
}
