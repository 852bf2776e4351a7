//go:build linux

package main

// The small programs the benchmark runs inside the lab's namespaces. They are subcommands of the bench binary itself
// (`bench echo|delay|rate|hold`), started through `ip netns exec`, so each holds its own descriptors: the limit here
// is 20 000 per process and cannot be raised, and 10 000 held connections need one process per side.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// readyLine is what a long-running tool prints once it listens.
const readyLine = "ready"

// tools are the subcommands; main dispatches to them when os.Args[1] names one.
var tools = map[string]func(args []string) error{
	"echo":  toolEcho,
	"delay": toolDelay,
	"rate":  toolRate,
	"hold":  toolHold,
	"rr":    toolRR,
}

// toolEcho echoes every connection on each listen address until killed.
func toolEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	listen := fs.String("listen", "", "comma-separated addresses to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, addr := range strings.Split(*listen, ",") {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					continue // EMFILE under load: the client sees a timeout, which is the figure
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 512)
					for {
						n, err := c.Read(buf)
						if n > 0 {
							if _, err := c.Write(buf[:n]); err != nil {
								return
							}
						}
						if err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	fmt.Println(readyLine)
	select {}
}

// toolDelay is the 50 ms RTT path: a TCP relay that holds every byte for -delay in each direction before passing
// it on. It reads as fast as the sender sends and queues with a timestamp, so the delay does not cap throughput by
// itself; what a round trip costs shows up only where a protocol waits for an answer (SSH window adjustments, TCP
// acknowledgements at the ends). The queue is bounded, so a stalled receiver stalls the sender.
func toolDelay(args []string) error {
	fs := flag.NewFlagSet("delay", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on")
	to := fs.String("to", "", "address to relay to")
	delay := fs.Duration("delay", 25*time.Millisecond, "one-way delay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println(readyLine)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			d, err := net.Dial("tcp", *to)
			if err != nil {
				c.Close()
				return
			}
			done := make(chan struct{})
			go func() {
				delayed(d.(*net.TCPConn), c.(*net.TCPConn), *delay)
				close(done)
			}()
			delayed(c.(*net.TCPConn), d.(*net.TCPConn), *delay)
			<-done
			c.Close()
			d.Close()
		}()
	}
}

type chunk struct {
	b   []byte
	due time.Time
}

// delayBytes bounds what one direction holds, by bytes and not by reads: a bound of 2048 reads capped the relay
// near 1 Gbit/s once reads got small (2048 × ~1.5 KiB is about what 1 Gbit/s has in flight over 25 ms).
const delayBytes = 64 << 20

// byteBudget is how many bytes a direction may still queue.
type byteBudget struct {
	mu   sync.Mutex
	cond *sync.Cond
	used int
	dead bool
}

func (b *byteBudget) take(n int) {
	b.mu.Lock()
	for b.used > 0 && b.used+n > delayBytes && !b.dead {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

func (b *byteBudget) give(n int) {
	b.mu.Lock()
	b.used -= n
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *byteBudget) kill() {
	b.mu.Lock()
	b.dead = true
	b.cond.Broadcast()
	b.mu.Unlock()
}

func delayed(dst, src *net.TCPConn, delay time.Duration) {
	q := make(chan chunk, 1<<16)
	budget := &byteBudget{}
	budget.cond = sync.NewCond(&budget.mu)
	go func() {
		defer close(q)
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				budget.take(n)
				q <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		if wait := time.Until(c.due); wait > 0 {
			time.Sleep(wait)
		}
		_, err := dst.Write(c.b)
		budget.give(len(c.b))
		if err != nil {
			budget.kill()
			src.Close()
			for range q {
			}
			return
		}
	}
	dst.CloseWrite()
}

// rateResult is what `bench rate` prints.
type rateResult struct {
	Conns  int     `json:"conns"`
	Errors int     `json:"errors"`
	Rate   float64 `json:"rate"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
	Err    string  `json:"first_error,omitempty"`
}

// toolRate runs -c clients for -d, each doing connect, 32-byte echo, close in a loop, and prints a rateResult.
func toolRate(args []string) error {
	fs := flag.NewFlagSet("rate", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server address")
	clients := fs.Int("c", 16, "parallel clients")
	dur := fs.Duration("d", 5*time.Second, "how long to run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var (
		mu       sync.Mutex
		lat      []time.Duration
		errs     int
		firstErr string
		wg       sync.WaitGroup
	)
	msg := []byte("0123456789abcdef0123456789abcdef")
	start := time.Now()
	end := start.Add(*dur)
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			buf := make([]byte, len(msg))
			for time.Now().Before(end) {
				t0 := time.Now()
				err := echoOnce(*addr, msg, buf)
				if err != nil {
					mu.Lock()
					errs++
					if firstErr == "" {
						firstErr = err.Error()
					}
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	r := rateResult{Conns: len(lat), Errors: errs, Rate: float64(len(lat)) / elapsed.Seconds(), Err: firstErr}
	if len(lat) > 0 {
		r.P50ms = ms(lat[len(lat)/2])
		r.P99ms = ms(lat[len(lat)*99/100])
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// rrResult is what `bench rr` prints: request/response round trips on warm connections.
type rrResult struct {
	Clients int     `json:"clients"`
	Trips   int     `json:"trips"`
	Rate    float64 `json:"rate"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	Err     string  `json:"first_error,omitempty"`
}

// toolRR opens -c connections, sends one message on each to warm it up, then for -d each client sends -size bytes
// and reads the echo back, again and again: what a developer's requests on a kept-alive connection feel.
func toolRR(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server address")
	clients := fs.Int("c", 1, "parallel clients, one connection each")
	dur := fs.Duration("d", 4*time.Second, "how long to run")
	size := fs.Int("size", 64, "message size in bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conns := make([]net.Conn, *clients)
	msg := make([]byte, *size)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	for i := range conns {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
			return err
		}
		conns[i] = c
	}
	var (
		mu       sync.Mutex
		lat      []time.Duration
		firstErr string
		wg       sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(*dur)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 1<<16)
			buf := make([]byte, len(msg))
			c.SetDeadline(end.Add(5 * time.Second))
			var err error
			for t0 := time.Now(); t0.Before(end); t0 = time.Now() {
				if _, err = c.Write(msg); err == nil {
					_, err = io.ReadFull(c, buf)
				}
				if err == nil && string(buf) != string(msg) {
					err = errors.New("echo differs")
				}
				if err != nil {
					break
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			if err != nil && firstErr == "" {
				firstErr = err.Error()
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	r := rrResult{Clients: *clients, Trips: len(lat), Rate: float64(len(lat)) / elapsed.Seconds(), Err: firstErr}
	if len(lat) > 0 {
		r.P50ms = ms(lat[len(lat)/2])
		r.P99ms = ms(lat[len(lat)*99/100])
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func echoOnce(addr string, msg, buf []byte) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != string(msg) {
		return errors.New("echo differs")
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// holdStep is what `bench hold` prints after each step.
type holdStep struct {
	Target  int     `json:"target"`
	Open    int     `json:"open"`
	Echoing int     `json:"echoing"`
	Seconds float64 `json:"seconds"`
	Err     string  `json:"first_error,omitempty"`
}

// toolHold opens connections up to each of -steps in turn and keeps them all open. After each step it checks that
// every held connection still echoes, prints a holdStep and waits for a line on stdin (the driver reads the
// client's memory meanwhile). It stops stepping at the first step that falls short.
func toolHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server address")
	stepsFlag := fs.String("steps", "1000,2000,5000,10000", "connection counts to reach")
	stepTimeout := fs.Duration("step-timeout", 30*time.Second, "time allowed to open and check one step")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var steps []int
	for _, s := range strings.Split(*stepsFlag, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		steps = append(steps, n)
	}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	var held []net.Conn
	msg := []byte("0123456789abcdef0123456789abcdef")
	for _, target := range steps {
		start := time.Now()
		deadline := start.Add(*stepTimeout)
		var firstErr atomic.Value
		var failed atomic.Int64
		// Open the missing connections with 64 dialers. Past 50 failures the step is over: a tunnel that died
		// (sshuttle past its select() limit) would otherwise cost a dial timeout per remaining connection.
		need := target - len(held)
		conns := make(chan net.Conn, need)
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(need) && failed.Load() < 50 && time.Now().Before(deadline) {
					c, err := net.DialTimeout("tcp", *addr, 3*time.Second)
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					conns <- c
				}
			}()
		}
		wg.Wait()
		close(conns)
		for c := range conns {
			held = append(held, c)
		}
		// Every held connection must still echo, not just the new ones.
		var echoing atomic.Int64
		work := make(chan net.Conn)
		for range 128 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, len(msg))
				for c := range work {
					c.SetDeadline(deadline.Add(5 * time.Second))
					_, err := c.Write(msg)
					if err == nil {
						_, err = io.ReadFull(c, buf)
					}
					if err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					echoing.Add(1)
				}
			}()
		}
		for _, c := range held {
			work <- c
		}
		close(work)
		wg.Wait()
		st := holdStep{Target: target, Open: len(held), Echoing: int(echoing.Load()), Seconds: time.Since(start).Seconds()}
		if e, ok := firstErr.Load().(string); ok {
			st.Err = e
		}
		if err := out.Encode(st); err != nil {
			return err
		}
		if st.Echoing < target {
			break
		}
		if !in.Scan() {
			break
		}
	}
	// Hold until the driver is done reading memory.
	in.Scan()
	for _, c := range held {
		c.Close()
	}
	return nil
}
