//go:build !race

// The race detector makes sync.Pool drop buffers at random, which this
// allocation count would take for the fault it looks for.

package mux

import (
	"io"
	"runtime"
	"testing"
)

// TestBulkKeepsReceiveBuffer: a short read in the middle of a bulk transfer
// does not make the relay drop the stream's receive buffer, which yamux would
// then regrow by doubling for the next frames (several bytes allocated per
// byte moved). Allocation counts, not timing, tell: after the fix the
// transfer allocates a small fraction of what it moves.
func TestBulkKeepsReceiveBuffer(t *testing.T) {
	p := newRelayPath(t, pipeTransport)
	big := make([]byte, 128<<10)
	small := make([]byte, 100)
	got := make([]byte, len(big))
	send := func(b []byte) {
		if _, err := p.app.Write(b); err != nil {
			t.Fatal(err)
		}
		// Lockstep: the short write reaches the stream's reader alone.
		if _, err := io.ReadFull(p.target, got[:len(b)]); err != nil {
			t.Fatal(err)
		}
	}
	send(big) // warm up: buffers grown once
	const rounds = 100
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range rounds {
		send(big)
		send(small)
	}
	runtime.ReadMemStats(&after)
	moved := uint64(rounds * (len(big) + len(small)))
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > moved/2 {
		t.Errorf("relaying %d bytes allocated %d bytes; want under half of them", moved, alloc)
	}
}
