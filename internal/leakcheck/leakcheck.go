// Package leakcheck finds goroutines a test left behind, as wireguard-go's
// goroutineLeakCheck does: a goroutine told to stop may need a moment to get
// there, so each check looks again for a while before it calls that a leak.
package leakcheck

import (
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Check fails t if goroutines started during t are still there when t's
// cleanups registered after this call have run. Call it first.
func Check(t testing.TB, within time.Duration) {
	t.Helper()
	before := make(map[uint64]bool)
	for _, g := range Stacks() {
		before[id(g)] = true
	}
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		left := wait(within, func(g string) bool { return !before[id(g)] && !strings.Contains(g, "leakcheck.") })
		if len(left) > 0 {
			t.Errorf("%d goroutines left when the test ended:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
	})
}

// None fails t if, after waiting up to within, a goroutine runs whose stack
// has one of frames in it. what names the point, e.g. "after Run returned".
func None(t testing.TB, within time.Duration, what string, frames ...string) {
	t.Helper()
	left := wait(within, func(g string) bool {
		for _, f := range frames {
			if strings.Contains(g, f) && !strings.Contains(g, "leakcheck.") {
				return true
			}
		}
		return false
	})
	if len(left) > 0 {
		t.Errorf("%d goroutines left %s:\n\n%s", len(left), what, strings.Join(left, "\n\n"))
	}
}

// wait returns the stacks leaked says are leaks, once there are none or
// within has passed.
func wait(within time.Duration, leaked func(string) bool) []string {
	var left []string
	for deadline := time.Now().Add(within); ; time.Sleep(5 * time.Millisecond) { // teardown, not readiness
		left = left[:0]
		for _, g := range Stacks() {
			if leaked(g) {
				left = append(left, g)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
	}
}

// Stacks returns the stack of every goroutine, this one first.
func Stacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// id reads N from a stack's first line, "goroutine N [state]:".
func id(stack string) uint64 {
	f := strings.Fields(stack)
	if len(f) < 2 || f[0] != "goroutine" {
		return 0
	}
	n, _ := strconv.ParseUint(f[1], 10, 64)
	return n
}
