//go:build linux

package rawio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func TestReadWrite(t *testing.T) {
	a, b := tcpPair(t)
	ra, ok := New(a)
	if !ok {
		t.Fatal("no raw I/O on Linux")
	}
	rb, _ := New(b)
	// More than the socket buffers hold: Write must wait for the reader.
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18)
	errc := make(chan error, 1)
	go func() {
		_, err := ra.Write(want)
		a.CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(want))
	}
	if n, err := rb.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the end: %d, %v; want 0, EOF", n, err)
	}
}

func TestWritev(t *testing.T) {
	a, b := tcpPair(t)
	ra, _ := New(a)
	var bufs [][]byte
	var want []byte
	// More buffers than one writev takes, some empty, and more bytes
	// than the socket holds, so it goes on after partial writes.
	for i := range 3 * maxIov {
		p := bytes.Repeat([]byte{byte(i)}, i*97%5000)
		bufs = append(bufs, p)
		want = append(want, p...)
	}
	done := make(chan []byte)
	go func() {
		got, _ := io.ReadAll(b)
		done <- got
	}()
	n, err := ra.Writev(bufs)
	if err != nil || n != int64(len(want)) {
		t.Fatalf("Writev: %d, %v; want %d, nil", n, err, len(want))
	}
	a.CloseWrite()
	if got := <-done; !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the %d written in order", len(got), len(want))
	}
}

func TestDeadlineAndClose(t *testing.T) {
	a, _ := tcpPair(t)
	ra, _ := New(a)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := ra.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	a.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, err := ra.Read(make([]byte, 1))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read when closed: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a parked Read")
	}
}

func TestWriteToResetPeer(t *testing.T) {
	a, b := tcpPair(t)
	ra, _ := New(a)
	b.SetLinger(0)
	b.Close()
	var err error
	for range 100 {
		if _, err = ra.Write(make([]byte, 1024)); err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a reset connection went on succeeding")
	}
}

func TestPipe(t *testing.T) {
	r, w, err := os.Pipe() // pollable: os.Pipe makes them non-blocking
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rr, ok1 := New(r)
	rw, ok2 := New(w)
	if !ok1 || !ok2 {
		t.Fatal("no raw I/O on a pipe")
	}
	go func() {
		rw.Write([]byte("hello"))
		w.Close()
	}()
	got, err := io.ReadAll(rr)
	if err != nil || string(got) != "hello" {
		t.Fatalf("pipe read %q, %v", got, err)
	}
}

// TestIdleRoundTripSleepsOnce is why the package exists: a process that is
// idle between messages, as a tunnel is, should sleep once per message, in
// the poller. Through ordinary system calls each wake-up also woke the
// runtime's sysmon thread, which then slept in 20 µs steps, and the runtime
// handed the P to another thread: about four sleeps per message.
func TestIdleRoundTripSleepsOnce(t *testing.T) {
	if os.Getenv("RAWIO_ECHO") != "" {
		return
	}
	const trips = 2000
	for _, mode := range []string{"raw"} {
		a, b := tcpPair(t)
		f, err := b.File()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestEchoChild$")
		cmd.Env = append(os.Environ(), "RAWIO_ECHO="+mode, "GOMAXPROCS=1")
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		b.Close()
		buf := make([]byte, 64)
		roundTrip := func() {
			if _, err := a.Write(buf); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(a, buf); err != nil {
				t.Fatal(err)
			}
		}
		for range 100 { // warm up
			roundTrip()
		}
		before := sleeps(t, cmd.Process.Pid)
		for range trips {
			roundTrip()
			// Long enough for the child to go idle, as it does between
			// two requests of an application.
			time.Sleep(100 * time.Microsecond)
		}
		perTrip := float64(sleeps(t, cmd.Process.Pid)-before) / trips
		a.Close()
		cmd.Wait()
		t.Logf("%s: %.2f sleeps per round trip", mode, perTrip)
		if perTrip > 1.6 {
			t.Errorf("%s: %.2f sleeps per round trip, want at most 1.6", mode, perTrip)
		}
	}
}

// TestEchoChild echoes fd 3 through rawio when TestIdleRoundTripSleepsOnce
// runs it.
func TestEchoChild(t *testing.T) {
	if os.Getenv("RAWIO_ECHO") == "" {
		t.Skip("run by TestIdleRoundTripSleepsOnce")
	}
	c, err := net.FileConn(os.NewFile(3, "echo"))
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := New(c.(*net.TCPConn))
	runtime.GC()
	buf := make([]byte, 64)
	for {
		n, err := rc.Read(buf)
		if err != nil {
			return
		}
		if _, err := rc.Write(buf[:n]); err != nil {
			return
		}
	}
}

// sleeps sums the voluntary context switches of all of pid's threads.
func sleeps(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/status")
		if err != nil {
			continue // the thread ended
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				total += n
			}
		}
	}
	return total
}

// TestBlockingRefused: a raw read of a blocking descriptor would stop the
// thread, and with it the process's one P, until data came.
func TestBlockingRefused(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	r.Fd() // puts it in blocking mode
	if _, ok := New(r); ok {
		t.Fatal("New took a blocking descriptor")
	}
	if f := File(r); f != io.ReadWriteCloser(r) {
		t.Fatal("File wrapped a blocking descriptor")
	}
}

// TestEmptyDatagram: an empty write on a datagram socket is an empty
// datagram, which UDP applications use (TestUDPFlows found it missing).
func TestEmptyDatagram(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, _ := New(c)
	for _, p := range []string{"", "x"} {
		if n, err := rc.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q): %d, %v", p, n, err)
		}
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 10)
	for _, want := range []string{"", "x"} {
		n, _, err := srv.ReadFromUDP(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("received %q, %v; want %q", buf[:n], err, want)
		}
	}
}

// countingPool hands out 1 KiB buffers and counts those not given back.
type countingPool struct{ gets, out atomic.Int64 }

func (p *countingPool) Get() any {
	p.gets.Add(1)
	p.out.Add(1)
	b := make([]byte, 1024)
	return &b
}

func (p *countingPool) Put(any) { p.out.Add(-1) }

// TestReadPooledHoldsNoBufferWhileWaiting: a reader parked on an empty
// socket has given its buffer back; once data comes it returns it in one.
func TestReadPooledHoldsNoBufferWhileWaiting(t *testing.T) {
	a, b := tcpPair(t)
	rb, _ := New(b)
	var pool countingPool
	type result struct {
		buf *[]byte
		n   int
		err error
	}
	res := make(chan result, 1)
	read := func() {
		buf, n, err := rb.ReadPooled(&pool)
		res <- result{buf, n, err}
	}
	go read()
	deadline := time.Now().Add(5 * time.Second)
	for pool.gets.Load() == 0 || pool.out.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("waiting reader: %d buffers taken, %d held; want some taken, none held", pool.gets.Load(), pool.out.Load())
		}
		time.Sleep(time.Millisecond)
	}
	a.Write([]byte("hello"))
	r := <-res
	if r.err != nil || string((*r.buf)[:r.n]) != "hello" {
		t.Fatalf("got %q, %v", (*r.buf)[:r.n], r.err)
	}
	if n := pool.out.Load(); n != 1 {
		t.Fatalf("%d buffers held after a read, want 1 (the caller's)", n)
	}
	pool.Put(r.buf)
	a.CloseWrite()
	go read()
	if r := <-res; r.buf != nil || r.err != io.EOF {
		t.Fatalf("at the end: %v, %v; want no buffer and EOF", r.buf, r.err)
	}
	if n := pool.out.Load(); n != 0 {
		t.Fatalf("%d buffers held after EOF, want 0", n)
	}
}
