package main

import (
	"context"
	"io"

	"github.com/k8stunnel/k8stunnel/firewall"
)

// runFirewall is the privileged part: it applies rules on request and
// removes them all when its parent goes away (stdin closes). It must not
// share the parent's fate on Ctrl-C or a hangup, which reach the whole
// process group: the parent handles those and then closes our stdin.
func runFirewall(stderr io.Writer) error {
	log := newLogger(stderr, 0)
	return firewall.ServeHelperProcess(context.Background(), firewall.New(nil, log), log)
}
