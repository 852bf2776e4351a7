package mux

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"testing/iotest"
	"time"
)

// chunkReader hands out what r holds in reads of the sizes given, round robin.
type chunkReader struct {
	r     io.Reader
	sizes []byte
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	n := 1 + int(c.sizes[c.i%len(c.sizes)])
	c.i++
	return c.r.Read(p[:min(len(p), n)])
}

// FuzzPingFilter builds a frame stream from the input, reads it through the
// filter in odd-sized reads into odd-sized buffers, and wants exactly the
// frames back minus the ping requests.
func FuzzPingFilter(f *testing.F) {
	f.Add([]byte{2, 1, 0, 0, 5, 0, 2, 2, 0, 1, 0, 11})
	f.Add([]byte{0, 0, 12, 2, 1, 7, 1, 0, 0, 3, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		sizes := data
		var in, want bytes.Buffer
		for len(data) >= 3 {
			typ, flags, n := data[0]%4, uint16(data[1]%4), int(data[2])
			data = data[3:]
			hdr := make([]byte, yamuxHeaderLen)
			hdr[1] = typ
			binary.BigEndian.PutUint16(hdr[2:], flags)
			var body []byte
			if typ == yamuxTypeData {
				body = bytes.Repeat([]byte{byte(n)}, n)
			}
			binary.BigEndian.PutUint32(hdr[8:], uint32(n))
			in.Write(hdr)
			in.Write(body)
			if !(typ == yamuxTypePing && flags&yamuxFlagSYN != 0) {
				want.Write(hdr)
				want.Write(body)
			}
		}
		pf := &pingFilter{r: &chunkReader{r: bytes.NewReader(in.Bytes()), sizes: sizes}}
		got, err := io.ReadAll(&chunkReader{r: pf, sizes: sizes[len(sizes)/2:]})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("filtered %d bytes into %d, want %d", in.Len(), len(got), want.Len())
		}
	})
}

func TestPingFilterReader(t *testing.T) {
	var in bytes.Buffer
	hdr := make([]byte, yamuxHeaderLen)
	hdr[1] = yamuxTypeData
	binary.BigEndian.PutUint32(hdr[8:], 3)
	in.Write(hdr)
	in.WriteString("abc")
	if err := iotest.TestReader(&pingFilter{r: bytes.NewReader(in.Bytes())}, in.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// A helper flooding yamux pings must not make the client start a goroutine
// (and hold a buffer) per ping.
func TestPingFloodIsDropped(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	errc := make(chan error, 1)
	go func() {
		_, _, err := readHello(bufio.NewReader(b))
		if err == nil {
			err = writeHello(b, Hello{version: protocolVersion})
		}
		errc <- err
	}()
	sess, err := NewClient(a, Hello{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	const pings = 5000
	ping := make([]byte, yamuxHeaderLen)
	ping[0], ping[1] = 0, yamuxTypePing
	binary.BigEndian.PutUint16(ping[2:], yamuxFlagSYN)
	flood := bytes.Repeat(ping, pings)
	// Nobody reads b: a pong yamux tried to send would block its goroutine.
	b.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := b.Write(flood); err != nil {
		t.Fatalf("writing %d pings: %v", pings, err)
	}
	if n := runtime.NumGoroutine() - before; n > 50 {
		t.Fatalf("%d goroutines more after %d pings, want none per ping", n, pings)
	}
	select {
	case <-sess.Done():
		t.Fatal("the session died of the pings")
	default:
	}
}
