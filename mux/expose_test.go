package mux

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func TestExposeRequestCodec(t *testing.T) {
	req := Request{kind: kindExpose, Entry: 2, Src: netip.MustParseAddrPort("10.244.1.10:40000")}
	b, err := appendRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{1, 4, 2, 4, 10, 244, 1, 10, 0x9c, 0x40}; !bytes.Equal(b, want) {
		t.Fatalf("encoded % x, want % x", b, want)
	}
	got, err := readRequest(bytes.NewReader(b))
	if err != nil || got != req || !got.IsExpose() {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, req)
	}
	if _, err := appendRequest(nil, Request{kind: kindExpose, Entry: MaxExposes, Src: req.Src}); !errors.Is(err, ErrBadExpose) {
		t.Fatalf("entry past MaxExposes encoded: %v", err)
	}
	for _, in := range [][]byte{
		{1, 4, MaxExposes, 4, 10, 0, 0, 1, 0, 80},
		{1, 4, 0, 5, 10, 0, 0, 1, 0, 80},
		{1, 4, 0, 4, 10, 0},
	} {
		if _, err := readRequest(bytes.NewReader(in)); err == nil {
			t.Errorf("% x decoded", in)
		}
	}
}

func FuzzReadExpose(f *testing.F) {
	f.Add([]byte{0, 4, 10, 244, 1, 10, 0x9c, 0x40})
	f.Add(append([]byte{63, 16}, netip.MustParseAddr("fd00::1").AsSlice()...))
	f.Fuzz(func(t *testing.T, in []byte) {
		var r Request
		if err := readExpose(bytes.NewReader(in), &r); err != nil {
			return
		}
		r.kind = kindExpose
		out, err := appendRequest(nil, r)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		again, err := readRequest(bytes.NewReader(out))
		r.Src = netip.AddrPortFrom(r.Src.Addr().Unmap(), r.Src.Port())
		if err != nil || again != r {
			t.Fatalf("round trip: % x -> %+v -> % x -> %+v, %v", in, r, out, again, err)
		}
	})
}

// exposePair joins a client serving n exposes with handle and a helper that
// opens streams to it.
func exposePair(t *testing.T, n int, handle func(Request, *Stream)) (helper *Session) {
	t.Helper()
	client, helper, _ := pipeSessions(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		client.ServeExposes(ctx, n, handle)
	}()
	t.Cleanup(func() {
		cancel()
		client.Close()
		helper.Close()
		<-served
	})
	return helper
}

// TestServeExposesRefusesWhatWasNotAsked: the client takes kind-4 streams
// for its own entries only; for another entry, or a connect the helper has
// no business asking for, the helper reads "refused" and the handler never runs.
func TestServeExposesRefusesWhatWasNotAsked(t *testing.T) {
	handled := make(chan Request, 1)
	helper := exposePair(t, 2, func(r Request, st *Stream) {
		handled <- r
		st.WriteStatus(StatusOK)
		st.Close()
	})
	src := netip.MustParseAddrPort("10.244.1.10:40000")
	wait := func(st *Stream) error {
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		defer st.Close()
		return st.WaitDial()
	}
	st, err := helper.DialExpose(1, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(st); err != nil {
		t.Fatalf("entry 1 of 2: %v", err)
	}
	if r := <-handled; r.Entry != 1 || r.Src != src || !r.IsExpose() {
		t.Fatalf("handled %+v", r)
	}
	refused := func(what string, st *Stream, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var de *DialError
		if err := wait(st); !errors.As(err, &de) || de.Status != StatusRefused {
			t.Fatalf("%s: got %v, want refused", what, err)
		}
	}
	st, err = helper.DialExpose(2, src)
	refused("entry 2 of 2", st, err)
	st, err = helper.Dial(netip.MustParseAddrPort("127.0.0.1:22"))
	refused("a connect", st, err)
	select {
	case r := <-handled:
		t.Fatalf("handler ran for %+v", r)
	default:
	}
}

func TestDialStatus(t *testing.T) {
	tests := []struct {
		err  error
		want Status
	}{
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, StatusRefused},
		{&net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, StatusUnreachable},
		{context.DeadlineExceeded, StatusTimeout},
		{&net.DNSError{IsNotFound: true}, StatusNoName},
		{io.ErrUnexpectedEOF, StatusFailed},
	}
	for _, tt := range tests {
		if got := DialStatus(tt.err); got != tt.want {
			t.Errorf("DialStatus(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
