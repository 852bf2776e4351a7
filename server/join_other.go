//go:build !linux

package server

import (
	"context"
	"errors"
	"log/slog"
)

// errNoJoins: joins pass descriptors over a Linux abstract unix socket,
// and the helper runs on Linux nodes anyway.
var errNoJoins = errors.New("joins are for Linux")

type joinListener struct{}

func listenJoins(context.Context, *slog.Logger, func(context.Context, Channel) error) (*joinListener, error) {
	return nil, errNoJoins
}

func (*joinListener) at() string { return "" }
func (*joinListener) close()     {}

func handOver(context.Context, Channel, string) (bool, error) { return false, errNoJoins }
