// Package logtest gives tests the records a logger was handed.
package logtest

import (
	"context"
	"log/slog"
)

// Records is a slog.Handler that hands every record to the test over the
// channel, dropping what does not fit: a test that stopped listening must
// not block the code under test.
type Records chan slog.Record

func (h Records) Enabled(context.Context, slog.Level) bool { return true }

func (h Records) Handle(_ context.Context, r slog.Record) error {
	select {
	case h <- r.Clone():
	default:
	}
	return nil
}

func (h Records) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h Records) WithGroup(string) slog.Handler      { return h }
