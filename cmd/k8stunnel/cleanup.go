package main

import (
	"fmt"
	"io"

	"github.com/k8stunnel/k8stunnel/firewall"
)

// runCleanup removes every k8stunnel chain on this host, whichever port made
// it: for after a reboot-less crash, or a killed privileged helper.
func runCleanup(stderr io.Writer) error {
	log := newLogger(stderr, 0)
	n, err := firewall.Cleanup(nil, log)
	if err != nil {
		return fmt.Errorf("removing k8stunnel rules: %w", err)
	}
	fmt.Fprintf(stderr, "k8stunnel: removed %d chain(s)\n", n)
	return nil
}
