package mux

import (
	"encoding/binary"
	"io"
	"sync"
)

// yamux frame header: version(1) type(1) flags(2) stream(4) length(4).
const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0
)

// frameWriter batches what yamux writes into as few SSH channel writes as
// it can. Every write to an SSH channel is at least one SSH packet: one MAC,
// one syscall here, one wakeup of sshd and of the helper on the node. yamux's
// send loop writes each frame as a header and then, for a data frame, its
// body, and sends window updates, opens and closes of many streams as
// separate tiny frames.
//
// Small writes append to a buffer and a flusher goroutine sends whatever has
// gathered in one write, so nothing waits when the link is idle, and while a
// write is in flight the next frames pile up behind it to go together. A data
// header waits for its body, and only a header waits: the batcher follows
// the frames in the byte stream (header, then exactly length bytes of body),
// so it knows which bytes are a header and never guesses from their values.
// A large body goes out at once with what is pending. The buffer is bounded;
// past maxPending, Write waits, the same backpressure yamux's send loop met
// before.
func frameWriter(w io.WriteCloser) io.WriteCloser {
	b := &batcher{w: w, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

const (
	// maxPending bounds what a session buffers before its writes wait.
	maxPending = 1 << 20
	// directWrite is the size from which a write goes out at once, from the
	// caller, instead of through the flusher.
	directWrite = 16 << 10
)

type batcher struct {
	w    io.WriteCloser
	kick chan struct{} // never closed: Write may send on it at any time
	stop chan struct{} // closed by Close

	wmu sync.Mutex // held while writing to w: keeps writes in append order

	mu     sync.Mutex
	cond   *sync.Cond // signalled when buf was taken or err set
	frames frameScanner
	buf    []byte
	spare  []byte
	err    error
	closed bool
}

func (b *batcher) Write(p []byte) (int, error) {
	if len(p) >= directWrite {
		return b.writeThrough(p)
	}
	b.mu.Lock()
	for b.err == nil && len(b.buf) > 0 && len(b.buf)+len(p) > maxPending {
		b.cond.Wait()
	}
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	b.buf = append(b.buf, p...)
	b.frames.scan(p)
	wait := b.frames.awaitingBody()
	b.mu.Unlock()
	if wait {
		return len(p), nil // the body comes next, in yamux's next write
	}
	select {
	case b.kick <- struct{}{}:
	default: // already awake or about to be
	}
	return len(p), nil
}

// writeThrough sends a large body at once from the caller, together with
// whatever is pending (its header at least). Handing bulk data to the
// flusher measured slower: a goroutine switch per frame, and on the node's
// single P a thread handoff whenever the flusher blocks in its write.
func (b *batcher) writeThrough(p []byte) (int, error) {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	b.frames.scan(p)
	out := append(b.buf, p...)
	b.buf, b.spare = b.spare[:0], nil
	b.cond.Broadcast()
	b.mu.Unlock()
	_, err := b.w.Write(out)
	b.done(out, err)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// done recycles a written buffer and records a write error.
func (b *batcher) done(out []byte, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil && b.err == nil {
		b.err = err
	}
	if cap(out) <= 2*maxPending {
		b.spare = out[:0]
	}
	b.cond.Broadcast()
}

func (b *batcher) flush() {
	for {
		select {
		case <-b.kick:
		case <-b.stop:
			return
		}
		for {
			b.wmu.Lock()
			b.mu.Lock()
			out := b.buf
			b.buf, b.spare = b.spare[:0], nil
			b.cond.Broadcast()
			b.mu.Unlock()
			if len(out) == 0 {
				b.wmu.Unlock()
				break
			}
			_, err := b.w.Write(out)
			b.done(out, err)
			b.wmu.Unlock()
			if err != nil {
				// Nobody waits for this write's result: yamux would learn
				// of the error only from its next write, and with nothing
				// more to send the session would live on, its streams
				// stuck. A transport that cannot be written is dead;
				// closing it ends the session's reads, and so the session.
				b.w.Close()
				return
			}
		}
	}
}

// Close ends the session's writes; what is still buffered is dropped, as a
// closing yamux session drops its queue.
func (b *batcher) Close() error {
	b.mu.Lock()
	if b.err == nil {
		b.err = io.ErrClosedPipe
	}
	first := !b.closed
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	if first {
		close(b.stop)
	}
	return b.w.Close()
}

// frameScanner follows yamux's frame sequence through the bytes written to
// a session, however they are split into writes: a 12-byte header, then, for
// a data frame, as many bytes of body as its length field says.
type frameScanner struct {
	hdr  [yamuxHeaderLen]byte
	nhdr int    // header bytes seen of the current frame
	body uint32 // body bytes of the current frame still to come
	full bool   // the current frame's header is complete and none of its body has come
}

func (f *frameScanner) scan(p []byte) {
	for len(p) > 0 {
		if f.body > 0 {
			n := uint32(min(len(p), int(min(f.body, 1<<30))))
			f.body -= n
			p = p[n:]
			f.full = false
			continue
		}
		n := copy(f.hdr[f.nhdr:], p)
		f.nhdr += n
		p = p[n:]
		if f.nhdr == yamuxHeaderLen {
			f.nhdr = 0
			if f.hdr[1] == yamuxTypeData {
				f.body = binary.BigEndian.Uint32(f.hdr[8:])
			}
			f.full = f.body > 0
		}
	}
}

// awaitingBody reports whether what was scanned ends exactly after a data
// header whose body has not begun: the one point worth waiting for the next
// write, which yamux makes at once.
func (f *frameScanner) awaitingBody() bool { return f.full }
