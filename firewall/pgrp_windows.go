package firewall

// Windows has no process groups or job-control signals to escape; the
// firewall helper does not run there anyway (ErrNeedsLinux).
func ignoreJobSignals() {}

func leaveProcessGroup() error { return ErrNeedsLinux }
