package mux

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
	"time"
)

// recorder is the SSH channel as frameWriter sees it.
type recorder struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes++
	return r.buf.Write(p)
}

func (r *recorder) Close() error { return nil }

func (r *recorder) snapshot() ([]byte, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.buf.Bytes()...), r.writes
}

// TestFrameWriterKeepsOrder mixes what yamux's send loop writes: data headers
// followed by small and large bodies, and header-only frames. Whatever the
// flusher and the direct path make of them, the bytes must come out in the
// order they went in, and small frames should share writes.
func TestFrameWriterKeepsOrder(t *testing.T) {
	rec := &recorder{}
	w := frameWriter(rec)
	defer w.Close()
	var want bytes.Buffer
	put := func(p []byte) {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
		want.Write(p)
	}
	hdr := func(typ byte, length int) []byte {
		h := make([]byte, yamuxHeaderLen)
		h[1] = typ
		binary.BigEndian.PutUint32(h[8:], uint32(length))
		return h
	}
	for i := range 2000 {
		size := 1 + i%97
		if i%50 == 0 {
			size = directWrite + i // a bulk body: written through
		}
		body := bytes.Repeat([]byte{byte(i)}, size)
		put(hdr(yamuxTypeData, size))
		put(body)
		put(hdr(1, 0)) // a window update: header only
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, writes := rec.snapshot()
		if len(got) == want.Len() {
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatal("bytes came out in another order than they went in")
			}
			if writes >= 3*2000 {
				t.Errorf("%d writes for %d frames: small frames were not batched", writes, 2*2000)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes written after 5s", len(got), want.Len())
		}
		time.Sleep(time.Millisecond)
	}
}
