//go:build !linux

package firewall

import "context"

// MarkSocket needs Linux, like the firewall it serves.
func (h *Helper) MarkSocket(context.Context, int) error { return ErrNeedsLinux }

func serveMark(*markRequest) error { return ErrNeedsLinux }

// TransparentSocket needs Linux, like the firewall it serves.
func (h *Helper) TransparentSocket(context.Context, int) error { return ErrNeedsLinux }
