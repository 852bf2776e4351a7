//go:build race

package mux

// raceEnabled: the race detector's instrumentation makes every stack frame
// larger, so stack sizes measured under it mean nothing.
const raceEnabled = true
