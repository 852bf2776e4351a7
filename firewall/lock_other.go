//go:build !linux

package firewall

// lockFile has nothing to serialise where there are no rules to install.
func lockFile(string, func()) (func(), error) { return func() {}, nil }
