//go:build !linux

package server

import "os"

// growPipe does nothing: only Linux can resize a pipe, and the helper runs
// on Linux nodes anyway.
func growPipe(*os.File) {}

// pollable returns f: the helper runs on Linux nodes.
func pollable(f *os.File, flag int) (*os.File, bool) { return f, false }
