package mux

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// kindUDP carries one UDP flow, Src to Dst. The client opens it for the
// flow's first datagram; the helper answers with a status once its socket
// toward Dst is ready, and from then on both ends send datagrams as frames,
// each length(2, big endian) payload: a datagram is never split across
// frames nor merged with another. Only the client opens it, and only to a
// helper whose hello has UDP.
const kindUDP streamKind = 5

// MaxDatagram is the largest payload relayed: the largest an IPv4 UDP
// datagram can carry. A larger one (an IPv6 datagram near 64 KiB) is dropped
// and counted as oversize.
const MaxDatagram = 65507

// maxQueued bounds the frames one flow holds for the stream while the
// stream is slower than the socket (the SSH link stalls for a moment, the
// relay is not scheduled): past it datagrams are dropped, as a full socket
// buffer would, rather than block or grow. 2 MiB is 160 ms at 100 Mbit/s.
// maxQueuedAll bounds the same over every flow that shares a
// DatagramStats, so 16k flows cannot hold 32 GiB.
const (
	maxQueued    = 2 << 20
	maxQueuedAll = 64 << 20
)

// IsUDP reports a request of kindUDP: Src and Dst are set.
func (r Request) IsUDP() bool { return r.kind == kindUDP }

// appendUDP encodes the body of a kindUDP request: src then dst, each as
// addrlen(1: 4 or 16) addr port(2, big endian).
func appendUDP(b []byte, r Request) ([]byte, error) {
	b, err := appendAddrPort(b, r.Src)
	if err != nil {
		return nil, err
	}
	return appendAddrPort(b, r.Dst)
}

// readUDP decodes what appendUDP wrote into r.
func readUDP(rd io.Reader, r *Request) (err error) {
	if r.Src, err = readAddrPort(rd); err != nil {
		return err
	}
	r.Dst, err = readAddrPort(rd)
	return err
}

// DialUDP opens a stream for the UDP flow src to dst. As with Dial, the
// helper's status is read by the stream's first Read or WaitDial; datagrams
// go with RelayDatagrams.
func (s *Session) DialUDP(src, dst netip.AddrPort) (*Stream, error) {
	if !s.Peer.UDP {
		return nil, ErrNoUDP
	}
	return s.open(Request{kind: kindUDP, Src: src, Dst: dst}, streamAddr{dst: dst}, true)
}

// DatagramStats counts what RelayDatagrams dropped; one is shared by many
// flows.
type DatagramStats struct {
	// Dropped counts datagrams dropped because the stream fell behind by
	// more than the flow's queue.
	Dropped atomic.Int64
	// Oversize counts datagrams too large to relay.
	Oversize atomic.Int64
	// Sent counts payload bytes from the socket to the stream, Received the
	// other way.
	Sent, Received atomic.Int64
	// queued is what every flow holds for its stream, for maxQueuedAll.
	queued atomic.Int64
}

// RelayDatagrams relays between pc, a connected UDP socket, and st, a
// kindUDP stream, until either ends or, with idle above zero, no datagram
// passed either way for that long. It closes both before it returns, and
// returns nil for an idle expiry or a clean end.
//
// Reading the socket never waits on the stream: what the stream cannot take
// at once is queued, up to maxQueued bytes, and dropped past that.
func RelayDatagrams(pc net.Conn, st *Stream, idle time.Duration, stats *DatagramStats) error {
	return NewDatagramRelay(pc, st, idle, stats).Run()
}

// DatagramRelay is RelayDatagrams in parts, for the client: datagrams of
// the flow that reached it before pc existed go in with Send.
type DatagramRelay struct {
	pc    net.Conn
	st    *Stream
	stats *DatagramStats
	idle  time.Duration
	last  atomic.Int64 // unix nanoseconds of the last datagram either way

	mu      sync.Mutex
	pending []byte // frames waiting for the stream
	ended   bool   // Run has returned: nothing is queued any more
	wake    chan struct{}

	once sync.Once
	done chan struct{}
	err  error // the first failure; set under once
}

// NewDatagramRelay prepares RelayDatagrams; nothing moves until Run.
func NewDatagramRelay(pc net.Conn, st *Stream, idle time.Duration, stats *DatagramStats) *DatagramRelay {
	r := &DatagramRelay{pc: pc, st: st, stats: stats, idle: idle, wake: make(chan struct{}, 1), done: make(chan struct{})}
	r.touch()
	return r
}

// Run relays until the flow ends, as RelayDatagrams.
func (r *DatagramRelay) Run() error {
	var wg sync.WaitGroup
	wg.Go(r.fromSocket)
	wg.Go(r.toStream)
	wg.Go(r.fromStream)
	if r.idle > 0 {
		// A timer, not a goroutine: 16k quiet flows would each park one.
		var t *time.Timer
		var mu sync.Mutex
		mu.Lock()
		t = time.AfterFunc(r.idle, func() {
			mu.Lock()
			defer mu.Unlock()
			if quiet := time.Since(time.Unix(0, r.last.Load())); quiet < r.idle {
				t.Reset(r.idle - quiet)
				return
			}
			r.stop(nil)
		})
		mu.Unlock()
		defer t.Stop()
	}
	wg.Wait()
	r.mu.Lock()
	r.stats.queued.Add(-int64(len(r.pending)))
	r.pending, r.ended = nil, true
	r.mu.Unlock()
	return r.err
}

// Send queues b, one datagram, for the stream as if it was read from the
// socket; it is dropped when the queue is full or the flow has ended.
func (r *DatagramRelay) Send(b []byte) {
	select {
	case <-r.done:
		r.stats.Dropped.Add(1)
		return
	default:
	}
	if len(b) > MaxDatagram {
		r.stats.Oversize.Add(1)
		return
	}
	r.touch()
	r.queue(b)
}

// Close ends the flow; Run then returns nil.
func (r *DatagramRelay) Close() { r.stop(nil) }

func (r *DatagramRelay) queue(b []byte) {
	size := 2 + len(b)
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		r.stats.Dropped.Add(1)
		return
	}
	if len(r.pending)+size > maxQueued || r.stats.queued.Add(int64(size)) > maxQueuedAll {
		if len(r.pending)+size <= maxQueued {
			r.stats.queued.Add(-int64(size))
		}
		r.mu.Unlock()
		r.stats.Dropped.Add(1)
		return
	}
	r.pending = binary.BigEndian.AppendUint16(r.pending, uint16(len(b)))
	r.pending = append(r.pending, b...)
	r.mu.Unlock()
	r.stats.Sent.Add(int64(len(b)))
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *DatagramRelay) touch() { r.last.Store(time.Now().UnixNano()) }

// stop ends the flow: err nil is a clean end.
func (r *DatagramRelay) stop(err error) {
	r.once.Do(func() {
		r.err = err
		close(r.done)
		r.pc.Close()
		if err != nil {
			r.st.Abort()
		}
		r.st.Close()
	})
}

func (r *DatagramRelay) fromSocket() {
	for {
		b, n, err := readDatagram(r.pc)
		switch {
		case err == nil:
		case errors.Is(err, syscall.ECONNREFUSED):
			// An ICMP port unreachable for an earlier datagram: UDP says
			// nothing to the sender either.
			continue
		case errors.Is(err, net.ErrClosed):
			r.stop(nil)
			return
		default:
			r.stop(err)
			return
		}
		if n > MaxDatagram {
			r.stats.Oversize.Add(1)
			putDatagramBuf(b)
			continue
		}
		r.touch()
		r.queue(b[:n])
		putDatagramBuf(b)
	}
}

// toStream writes what is queued, all of it in one Write: under load many
// datagrams travel in one mux frame.
func (r *DatagramRelay) toStream() {
	var spare []byte
	for {
		select {
		case <-r.wake:
		case <-r.done:
			return
		}
		out, ok := r.take(spare)
		if !ok {
			continue
		}
		_, err := r.st.Write(out)
		r.stats.queued.Add(-int64(len(out)))
		if err != nil {
			r.stop(streamEnd(err))
			return
		}
		// A burst's large buffer is not kept by a flow that goes quiet.
		spare = out
		if cap(spare) > 64<<10 {
			spare = nil
		}
	}
}

// take returns what is queued, and puts spare, emptied, in its place for
// the datagrams that come while out is written. With nothing queued (the
// datagram that woke toStream went out with the previous write) it returns
// false and leaves both where they are: swapping then handed the queue the
// buffer toStream still kept as spare, so the next write's buffer was the
// queue itself, and datagrams read meanwhile were appended into the bytes
// being written (the race detector caught it, in TestDatagramRelayStalledPeer
// under load).
func (r *DatagramRelay) take(spare []byte) (out []byte, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) == 0 {
		return nil, false
	}
	out = r.pending
	r.pending = spare[:0]
	return out, true
}

// fromStream writes the stream's datagrams to the socket. It waits for a
// frame's length without a buffer, then takes one from the pool and reads
// whatever else has arrived into it: under load one Read brings many frames.
// The buffer goes back once it ends on a frame boundary.
func (r *DatagramRelay) fromStream() {
	var hdr [2]byte
	for {
		if _, err := io.ReadFull(r.st, hdr[:]); err != nil {
			r.stop(streamEnd(err))
			return
		}
		buf := getDatagramBuf()
		start, end := 0, copy(buf, hdr[:])
		for {
			for {
				payload, size, ok := nextFrame(buf[start:end])
				if !ok {
					break
				}
				if !r.deliver(payload) {
					putDatagramBuf(buf)
					r.stop(nil)
					return
				}
				start += size
			}
			if start == end {
				break
			}
			end = copy(buf, buf[start:end])
			start = 0
			m, err := r.st.Read(buf[end:])
			if err != nil {
				putDatagramBuf(buf)
				r.stop(streamEnd(noEOF(err)))
				return
			}
			end += m
		}
		putDatagramBuf(buf)
	}
}

// nextFrame splits the first whole frame off b: its payload and the bytes
// it takes. ok is false until b holds a whole frame.
func nextFrame(b []byte) (payload []byte, size int, ok bool) {
	if len(b) < 2 {
		return nil, 0, false
	}
	size = 2 + int(binary.BigEndian.Uint16(b))
	if len(b) < size {
		return nil, 0, false
	}
	return b[2:size], size, true
}

// deliver writes one datagram from the stream to the socket; false means
// the socket is gone.
func (r *DatagramRelay) deliver(b []byte) bool {
	r.touch()
	r.stats.Received.Add(int64(len(b)))
	_, err := r.pc.Write(b)
	switch {
	case err == nil, errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOBUFS):
		// Lost as UDP loses datagrams.
	case errors.Is(err, syscall.EMSGSIZE):
		r.stats.Oversize.Add(1)
	default:
		return false
	}
	return true
}

// streamEnd is nil for a stream that ended cleanly or was closed by stop.
func streamEnd(err error) error {
	if err == io.EOF || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Datagram buffers are pooled: a flow holds one only while datagrams
// pass, so thousands of quiet flows cost no 64 KiB each. One holds a whole
// frame of the largest length a frame can say.
var dgramPool = sync.Pool{New: func() any { b := make([]byte, 2+1<<16); return &b }}

func getDatagramBuf() []byte { return *(dgramPool.Get().(*[]byte)) }

func putDatagramBuf(b []byte) {
	b = b[:cap(b)]
	dgramPool.Put(&b)
}

// readDatagramPlain is readDatagram for a socket it cannot poll itself: it
// holds a buffer while it waits. A datagram that fills the buffer is taken
// as oversize.
func readDatagramPlain(pc net.Conn) ([]byte, int, error) {
	b := getDatagramBuf()
	n, err := pc.Read(b)
	if err != nil {
		putDatagramBuf(b)
		return nil, 0, err
	}
	return b, n, nil
}
