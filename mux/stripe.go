package mux

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// kindStripe opens one part of a striped connection: a TCP connection
// whose bytes travel over several sessions (SSH channels) at once, because
// one SSH channel moves at most its window per round trip (2 MiB, ~335
// Mbit/s at 50 ms) and a long link needs more than that for one transfer.
//
// The stripe is positional: byte p of either direction travels on part
// (p / StripeChunk) % parts, so nothing is added to the bytes and the
// receiver knows which part holds the next ones. Part 0 carries the
// destination and gets the dial status, as a kindConnect stream does; the
// others name the stripe and their index. Every part of a stripe must reach
// the same helper process (see Hello.Joined), which pairs them by the
// stripe's ID, dials once every part is in and relays.
const kindStripe streamKind = 6

// StripeChunk is how many bytes of a striped connection go to one part
// before the next part's turn. Small enough that a few chunks of every part
// are in flight inside one SSH window; large enough that a bulk write
// (bigBuf) rarely spans two parts.
const StripeChunk = 256 << 10

// MaxStripeParts bounds the parts of one stripe: the most channels a link
// gets (client.maxAutoChannels).
const MaxStripeParts = 8

// IsStripe reports a request of kindStripe; StripePart says which part.
func (r Request) IsStripe() bool { return r.kind == kindStripe }

// StripePart is the index of a kindStripe request's part; 0 carries Dst.
func (r Request) StripePart() int { return int(r.part) }

// appendStripe encodes the body of a kindStripe request:
// id(8, big endian) part(1) parts(1), then for part 0 Dst as
// addrlen(1: 4 or 16) addr port(2, big endian).
func appendStripe(b []byte, r Request) ([]byte, error) {
	if r.parts < 2 || r.parts > MaxStripeParts || r.part >= r.parts {
		return nil, fmt.Errorf("encoding part %d of %d: %w", r.part, r.parts, ErrBadStripe)
	}
	b = binary.BigEndian.AppendUint64(b, r.stripe)
	b = append(b, r.part, r.parts)
	if r.part != 0 {
		return b, nil
	}
	return appendAddrPort(b, r.Dst)
}

// readStripe decodes what appendStripe wrote into r.
func readStripe(rd io.Reader, r *Request) error {
	var buf [10]byte
	if _, err := io.ReadFull(rd, buf[:]); err != nil {
		return noEOF(err)
	}
	r.stripe = binary.BigEndian.Uint64(buf[:8])
	r.part, r.parts = buf[8], buf[9]
	if r.parts < 2 || r.parts > MaxStripeParts || r.part >= r.parts {
		return fmt.Errorf("%w: part %d of %d", ErrBadStripe, r.part, r.parts)
	}
	if r.part != 0 {
		return nil
	}
	var err error
	r.Dst, err = readAddrPort(rd)
	return err
}

// stripeIDs numbers a client's stripes; the helper pairs parts by it.
var stripeIDs atomic.Uint64

func init() { stripeIDs.Store(rand.Uint64()) }

// DialStriped opens a connection to dst striped over sessions, one part on
// each, in that order: part 0, which the status comes on and which carries
// the first StripeChunk bytes, goes on sessions[0]. Every session must be
// served by one helper process that takes stripes (Peer.Stripes, and the
// same process: see Hello.Joined). As with Dial, the status is read by the
// first Read or WaitDial.
func DialStriped(sessions []*Session, dst netip.AddrPort) (*Striped, error) {
	if len(sessions) < 2 || len(sessions) > MaxStripeParts {
		return nil, fmt.Errorf("striping over %d sessions: %w", len(sessions), ErrBadStripe)
	}
	req := Request{kind: kindStripe, stripe: stripeIDs.Add(1), parts: uint8(len(sessions)), Dst: dst}
	sc := &Striped{parts: make([]*Stream, 0, len(sessions))}
	for i, s := range sessions {
		req.part = uint8(i)
		st, err := s.open(req, streamAddr{dst: dst}, i == 0)
		if err != nil {
			sc.Abort()
			sc.Close()
			return nil, fmt.Errorf("opening part %d of a stripe to %v: %w", i, dst, err)
		}
		sc.parts = append(sc.parts, st)
	}
	return sc, nil
}

// Striped is one connection over several streams (see kindStripe): a
// net.Conn and a Conn for Relay. Close, Abort, CloseWrite and the deadlines
// act on every part.
type Striped struct {
	parts []*Stream
	// rpos and wpos are the offsets of the next byte read and written,
	// under rmu and wmu: concurrent Reads (or Writes) take turns, each
	// whole, as net.Conn allows them.
	rmu, wmu   sync.Mutex
	rpos, wpos int64
}

// part is the part that carries byte pos, and how many bytes from pos on
// go there before the next part's turn.
func (c *Striped) part(pos int64) (*Stream, int) {
	return c.parts[(pos/StripeChunk)%int64(len(c.parts))], int(StripeChunk - pos%StripeChunk)
}

func (c *Striped) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	st, room := c.part(c.rpos)
	if len(b) > room {
		b = b[:room]
	}
	n, err := st.Read(b)
	c.rpos += int64(n)
	// An EOF on the part that holds the next byte is the connection's end:
	// the peer writes every byte before it ends any part.
	return n, err
}

func (c *Striped) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	done := 0
	for len(b) > 0 {
		st, room := c.part(c.wpos)
		n, err := st.Write(b[:min(len(b), room)])
		done += n
		c.wpos += int64(n)
		b = b[n:]
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// WaitDial is Stream.WaitDial: the status comes on part 0.
func (c *Striped) WaitDial() error { return c.parts[0].WaitDial() }

var _ net.Conn = (*Striped)(nil)

// LocalAddr and RemoteAddr are part 0's.
func (c *Striped) LocalAddr() net.Addr  { return c.parts[0].LocalAddr() }
func (c *Striped) RemoteAddr() net.Addr { return c.parts[0].RemoteAddr() }

// SetDeadline, SetReadDeadline and SetWriteDeadline set every part's: a
// Read or Write may wait on any of them.
func (c *Striped) SetDeadline(t time.Time) error {
	return c.each(func(st *Stream) error { return st.SetDeadline(t) })
}

func (c *Striped) SetReadDeadline(t time.Time) error {
	return c.each(func(st *Stream) error { return st.SetReadDeadline(t) })
}

func (c *Striped) SetWriteDeadline(t time.Time) error {
	return c.each(func(st *Stream) error { return st.SetWriteDeadline(t) })
}

// each runs f on every part and returns the first error.
func (c *Striped) each(f func(*Stream) error) error {
	var first error
	for _, st := range c.parts {
		if err := f(st); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Parts is how many streams the connection is striped over.
func (c *Striped) Parts() int { return len(c.parts) }

// Primary is part 0, the stream that names the connection in logs.
func (c *Striped) Primary() *Stream { return c.parts[0] }

// CloseWrite ends every part: a FIN on each, behind each's last byte.
func (c *Striped) CloseWrite() error { return c.each((*Stream).CloseWrite) }

func (c *Striped) Close() error {
	for _, st := range c.parts {
		st.Close()
	}
	return nil
}

// Abort resets every part, so the peer sees a failure on whichever it reads.
func (c *Striped) Abort() {
	for _, st := range c.parts {
		st.Abort()
	}
}

// Drop resets and closes every part but 0, which the caller answered with
// a failure status and closes itself.
func (c *Striped) Drop() {
	for _, st := range c.parts[1:] {
		st.Abort()
		st.Close()
	}
}

func (c *Striped) busy() {
	for _, st := range c.parts {
		st.busy()
	}
}

func (c *Striped) quiet() {
	for _, st := range c.parts {
		st.quiet()
	}
}

// maxPendingStripes bounds the stripes a helper holds parts of while it
// waits for the rest.
const maxPendingStripes = 256

// Stripes pairs the parts of striped connections (helper side). One
// Stripes serves every session of a helper process: a stripe's parts come
// on different sessions, in no set order.
type Stripes struct {
	mu sync.Mutex
	m  map[uint64]*stripeSet
	// wait replaces requestWait when set; tests shorten it.
	wait time.Duration
}

type stripeSet struct {
	parts  []*Stream
	have   int
	full   chan struct{} // closed once every part is in
	failed chan struct{} // closed when the wait ran out first
	timer  *time.Timer
}

// Add hands over st, a part other than 0 of the stripe req names; Stripes
// owns it from now on. It reports false when the part cannot be taken (a
// duplicate, a count that does not match, too many stripes pending); st is
// then closed.
func (t *Stripes) Add(req Request, st *Stream) bool {
	if _, ok := t.put(req, st); !ok {
		st.Abort()
		st.Close()
		return false
	}
	return true
}

// Gather waits for every other part of the stripe whose part 0 is st, for
// as long as a stream may take to send its header, and returns the
// connection. On an error st is the caller's still, and any parts that
// came are reset and closed.
func (t *Stripes) Gather(ctx context.Context, req Request, st *Stream) (*Striped, error) {
	if req.part != 0 {
		return nil, ErrBadStripe
	}
	set, ok := t.put(req, st)
	if !ok {
		return nil, fmt.Errorf("%w: stripe %d", ErrBadStripe, req.stripe)
	}
	select {
	case <-set.full:
		return &Striped{parts: set.parts}, nil
	case <-set.failed:
		return nil, ErrStripeIncomplete
	case <-ctx.Done():
		if !t.expire(req.stripe, set) {
			// Completed meanwhile: the parts are ours to drop.
			<-set.full
			for _, p := range set.parts[1:] {
				p.Abort()
				p.Close()
			}
		}
		return nil, ctx.Err()
	}
}

// put adds st as part req.part of its stripe.
func (t *Stripes) put(req Request, st *Stream) (*stripeSet, bool) {
	if !req.IsStripe() {
		return nil, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	set := t.m[req.stripe]
	if set == nil {
		if len(t.m) >= maxPendingStripes {
			return nil, false
		}
		if t.m == nil {
			t.m = make(map[uint64]*stripeSet)
		}
		set = &stripeSet{parts: make([]*Stream, req.parts), full: make(chan struct{}), failed: make(chan struct{})}
		wait := t.wait
		if wait == 0 {
			wait = requestWait
		}
		id := req.stripe
		set.timer = time.AfterFunc(wait, func() { t.expire(id, set) })
		t.m[id] = set
	}
	if len(set.parts) != int(req.parts) || set.parts[req.part] != nil {
		return nil, false
	}
	set.parts[req.part] = st
	if set.have++; set.have == len(set.parts) {
		delete(t.m, req.stripe)
		set.timer.Stop()
		close(set.full)
	}
	return set, true
}

// expire drops set, stripe id, unless it completed (then it reports
// false): its parts other than 0 are reset and closed, and part 0's Gather
// returns.
func (t *Stripes) expire(id uint64, set *stripeSet) bool {
	t.mu.Lock()
	if t.m[id] != set {
		t.mu.Unlock()
		return false
	}
	delete(t.m, id)
	t.mu.Unlock()
	close(set.failed)
	for _, st := range set.parts[1:] {
		if st != nil {
			st.Abort()
			st.Close()
		}
	}
	return true
}

// pending is how many stripes await parts.
func (t *Stripes) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
