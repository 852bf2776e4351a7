package mux

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
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

// echoPatterns are small writes of the sizes and shapes that can be taken
// for a yamux header: every 1-, 11-, 12- and 13-byte class of type byte,
// filler and length field, with PostgreSQL's 12-byte "BEGIN;"-sized message
// from the stall report among them.
func echoPatterns() [][]byte {
	pats := [][]byte{{0x78, 0x00, 0x79, 0x79, 0x79, 0x79, 0x79, 0x79, 0x00, 0x00, 0x00, 0x01}}
	for _, size := range []int{1, 11, 12, 13} {
		for _, typ := range []byte{0, 1, 2, 3, 0x79} {
			for _, fill := range []byte{0x00, 0x78, 0xff} {
				for _, length := range []uint32{0, 1, 12, 0xffffffff} {
					p := bytes.Repeat([]byte{fill}, size)
					if size > 1 {
						p[1] = typ
					}
					if size >= yamuxHeaderLen {
						binary.BigEndian.PutUint32(p[8:], length)
					} else if length != 0 {
						continue // no length field to vary
					}
					pats = append(pats, p)
				}
			}
		}
	}
	return pats
}

// TestSmallWritesArrive sends each pattern alone through a session pair and
// waits for its echo: the application's write crosses the client's batcher,
// the target's echo the helper's. Nothing else is sent meanwhile, so a write
// the batcher holds back stalls and fails the test.
func TestSmallWritesArrive(t *testing.T) {
	h := newHarness(t, target(t, func(c *net.TCPConn) {
		defer c.Close()
		io.Copy(c, c)
	}))
	c := h.dial(t)
	got := make([]byte, 64)
	for _, p := range echoPatterns() {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(c, got[:len(p)]); err != nil {
			t.Fatalf("% x: no echo: %v", p, err)
		}
		if !bytes.Equal(got[:len(p)], p) {
			t.Fatalf("sent % x, echoed % x", p, got[:len(p)])
		}
	}
}

// TestSmallWritesArriveFromHelper is the same with the helper's side
// speaking first: each pattern is written by the target and must reach the
// application with nothing sent the other way.
func TestSmallWritesArriveFromHelper(t *testing.T) {
	pats := echoPatterns()
	next := make(chan struct{})
	h := newHarness(t, target(t, func(c *net.TCPConn) {
		defer c.Close()
		for _, p := range pats {
			if _, err := c.Write(p); err != nil {
				return
			}
			<-next
		}
	}))
	c := h.dial(t)
	got := make([]byte, 64)
	for _, p := range pats {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(c, got[:len(p)]); err != nil {
			t.Fatalf("% x from the helper's side: %v", p, err)
		}
		if !bytes.Equal(got[:len(p)], p) {
			t.Fatalf("target wrote % x, application read % x", p, got[:len(p)])
		}
		next <- struct{}{}
	}
}

// waitingRecorder is a recorder that can wait for a byte count.
type waitingRecorder struct {
	mu   sync.Mutex
	cond *sync.Cond
	buf  bytes.Buffer
}

func newWaitingRecorder() *waitingRecorder {
	r := &waitingRecorder{}
	r.cond = sync.NewCond(&r.mu)
	return r
}

func (r *waitingRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf.Write(p)
	r.cond.Broadcast()
	return len(p), nil
}

func (r *waitingRecorder) Close() error { return nil }

// waitLen waits until n bytes were written or the timeout passes, and
// returns what was written.
func (r *waitingRecorder) waitLen(n int, timeout time.Duration) []byte {
	t := time.AfterFunc(timeout, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer t.Stop()
	deadline := time.Now().Add(timeout)
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.buf.Len() < n && time.Now().Before(deadline) {
		r.cond.Wait()
	}
	return append([]byte(nil), r.buf.Bytes()...)
}

// FuzzFrameWriter writes frames as yamux's send loop does, with random
// types, flags, lengths and bodies, the bodies split into random writes,
// and after every frame checks that all of it went out with no further
// write to push it.
func FuzzFrameWriter(f *testing.F) {
	// A data frame whose 12-byte body, written at once, looks like a header.
	f.Add([]byte{0, 0, 1, 12, 0x78, 0x00, 0x79, 0x79, 0x79, 0x79, 0x79, 0x79, 0x00, 0x00, 0x00, 0x01, 20})
	f.Add([]byte{1, 0, 2, 0, 0, 40, 3})
	f.Add(bytes.Repeat([]byte{0, 11, 5}, 30))
	f.Add([]byte{0, 0xff, 0xff, 9, 9, 9})
	f.Fuzz(func(t *testing.T, data []byte) {
		rec := newWaitingRecorder()
		w := frameWriter(rec)
		defer w.Close()
		take := func() byte {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return b
		}
		var want []byte
		put := func(p []byte) {
			if _, err := w.Write(p); err != nil {
				t.Fatal(err)
			}
			want = append(want, p...)
		}
		for len(data) > 0 {
			hdr := make([]byte, yamuxHeaderLen)
			hdr[0] = 0
			hdr[1] = take() % 4
			hdr[3] = take()
			hdr[7] = take()
			var body []byte
			switch n := int(take()); {
			case hdr[1] != yamuxTypeData:
				binary.BigEndian.PutUint32(hdr[8:], uint32(n)<<(take()%32))
			case n == 0xff:
				body = make([]byte, directWrite+int(take())) // a bulk body
			default:
				body = make([]byte, n)
			}
			for i := range body {
				body[i] = take()
			}
			if hdr[1] == yamuxTypeData {
				binary.BigEndian.PutUint32(hdr[8:], uint32(len(body)))
			}
			put(hdr)
			for len(body) > 0 {
				n := min(len(body), 1+int(take()))
				put(body[:n])
				body = body[n:]
			}
			if got := rec.waitLen(len(want), 2*time.Second); !bytes.Equal(got, want) {
				t.Fatalf("after a frame of type %d: %d of %d bytes went out, or not in order", hdr[1], len(got), len(want))
			}
		}
	})
}
