package main

import (
	"context"
	"fmt"
)

// signalStop needs Unix signals; on Windows only the control socket stops a tunnel.
func signalStop(_ context.Context, pid int) error {
	return fmt.Errorf("no k8stunnel with pid %d that can be stopped (see k8stunnel status)", pid)
}
