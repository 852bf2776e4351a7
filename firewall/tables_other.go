//go:build !linux

package firewall

import "fmt"

// NewTables fails: iptables is Linux's.
func NewTables(fam Family) (Tables, error) {
	return nil, fmt.Errorf("%w: %s: %w", ErrFamilyUnavailable, fam.Command(), ErrNeedsLinux)
}
