//go:build !unix

package cmdtransport

import "os/exec"

// runAsInvoker: there is no sudo here.
func runAsInvoker(*exec.Cmd) error { return nil }
