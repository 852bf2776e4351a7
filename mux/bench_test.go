package mux

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Benchmarks of the data path: an application's TCP connection, the relay, a mux session pair, the relay on the
// helper's side and a target TCP connection, over three transports:
//
//	pipe: net.Pipe, no kernel and no crypto: what the mux and relay cost by themselves;
//	tcp:  a loopback TCP connection;
//	ssh:  an SSH channel (golang.org/x/crypto/ssh both ends, aes128-gcm) over loopback TCP, as in production
//	      except that the node side is OpenSSH plus a pipe there.
//
// go test -run XXX -bench . -cpuprofile cpu.out ./mux/ shows where a byte's time goes.

type transport func(testing.TB) (client, server io.ReadWriteCloser)

var transports = []struct {
	name string
	make transport
}{
	{"pipe", pipeTransport},
	{"tcp", tcpTransport},
	{"ssh", sshTransport},
}

func pipeTransport(testing.TB) (io.ReadWriteCloser, io.ReadWriteCloser) {
	a, b := net.Pipe()
	return a, b
}

func tcpTransport(tb testing.TB) (io.ReadWriteCloser, io.ReadWriteCloser) {
	tb.Helper()
	a, b := tcpPair(tb)
	return a, b
}

func tcpPair(tb testing.TB) (*net.TCPConn, *net.TCPConn) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		accepted <- c
	}()
	a, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// sshTransport is one SSH session channel between an x/crypto client and server over loopback TCP.
func sshTransport(tb testing.TB) (io.ReadWriteCloser, io.ReadWriteCloser) {
	tb.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	scfg := &ssh.ServerConfig{NoClientAuth: true}
	scfg.AddHostKey(signer)
	ccfg := &ssh.ClientConfig{User: "bench", HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Config: ssh.Config{Ciphers: []string{"aes128-gcm@openssh.com"}}}
	a, b := tcpPair(tb)

	type result struct {
		ch  ssh.Channel
		err error
	}
	srv := make(chan result, 1)
	go func() {
		_, chans, reqs, err := ssh.NewServerConn(b, scfg)
		if err != nil {
			srv <- result{err: err}
			return
		}
		go ssh.DiscardRequests(reqs)
		nc := <-chans
		ch, creqs, err := nc.Accept()
		go ssh.DiscardRequests(creqs)
		srv <- result{ch, err}
	}()
	conn, chans, reqs, err := ssh.NewClientConn(a, "bench", ccfg)
	if err != nil {
		tb.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	go func() {
		for nc := range chans {
			nc.Reject(ssh.Prohibited, "")
		}
	}()
	ch, creqs, err := conn.OpenChannel("session", nil)
	if err != nil {
		tb.Fatal(err)
	}
	go ssh.DiscardRequests(creqs)
	r := <-srv
	if r.err != nil {
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { conn.Close() })
	return ch, r.ch
}

// newSessionPair is a client and a server session over tr, closed when tb
// ends, and a context that ends then too.
func newSessionPair(tb testing.TB, tr transport) (context.Context, *Session, *Session) {
	tb.Helper()
	log := slog.New(slog.DiscardHandler)
	cconn, sconn := tr(tb)
	srvc := make(chan *Session, 1)
	go func() {
		s, err := NewServer(sconn, func(Hello) Hello { return Hello{} }, log)
		if err != nil {
			tb.Error(err)
		}
		srvc <- s
	}()
	client, err := NewClient(cconn, Hello{}, log)
	if err != nil {
		tb.Fatal(err)
	}
	server := <-srvc
	if server == nil {
		tb.FailNow()
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(func() { cancel(); client.Close(); server.Close() })
	return ctx, client, server
}

// relayPath is an application connection relayed through a session pair to a target connection.
type relayPath struct {
	app, target *net.TCPConn
}

func newRelayPath(tb testing.TB, tr transport) relayPath {
	tb.Helper()
	ctx, client, server := newSessionPair(tb, tr)

	app, local := tcpPair(tb)
	remote, target := tcpPair(tb)
	go server.Serve(ctx, func(_ Request, st *Stream) {
		st.WriteStatus(StatusOK)
		Relay(NetConn(remote), st)
	})
	st, err := client.Dial(netip.MustParseAddrPort("192.0.2.1:80"))
	if err != nil {
		tb.Fatal(err)
	}
	go Relay(NetConn(local), st)
	return relayPath{app: app, target: target}
}

// newEchoPaths is n application connections relayed through one session pair to an echo server, as the client and
// the helper relay them in production: app ⇄ relay ⇄ client session ⇄ helper session ⇄ relay ⇄ echo.
func newEchoPaths(tb testing.TB, tr transport, n int) []*net.TCPConn {
	tb.Helper()
	ctx, client, server := newSessionPair(tb, tr)

	echo, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, onlyReader{c})
			}()
		}
	}()
	go server.Serve(ctx, func(_ Request, st *Stream) {
		st.WriteStatus(StatusOK)
		c, err := net.Dial("tcp", echo.Addr().String())
		if err != nil {
			st.Abort()
			return
		}
		Relay(NetConn(c), st)
	})
	apps := make([]*net.TCPConn, n)
	for i := range apps {
		app, local := tcpPair(tb)
		st, err := client.Dial(netip.MustParseAddrPort("192.0.2.1:80"))
		if err != nil {
			tb.Fatal(err)
		}
		go Relay(NetConn(local), st)
		apps[i] = app
	}
	return apps
}

// BenchmarkPingPong is request/response on warm connections: each op is one 64-byte message sent and its echo
// read back, on one connection, and spread over 50 connections that each do the same.
func BenchmarkPingPong(b *testing.B) {
	for _, tr := range transports {
		for _, conns := range []int{1, 50} {
			b.Run(fmt.Sprintf("%s/conns=%d", tr.name, conns), func(b *testing.B) {
				apps := newEchoPaths(b, tr.make, conns)
				// One warm-up round trip each: the streams are open and their relays running.
				for _, c := range apps {
					if err := pingPong(c, make([]byte, 64)); err != nil {
						b.Fatal(err)
					}
				}
				var next atomic.Int64
				errc := make(chan error, conns)
				b.ResetTimer()
				for _, c := range apps {
					go func() {
						buf := make([]byte, 64)
						for next.Add(1) <= int64(b.N) {
							if err := pingPong(c, buf); err != nil {
								errc <- err
								return
							}
						}
						errc <- nil
					}()
				}
				for range apps {
					if err := <-errc; err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rt/s")
			})
		}
	}
}

func pingPong(c net.Conn, buf []byte) error {
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf)
	return err
}

const benchChunk = 128 << 10 // iperf3's default write size

func BenchmarkRelay(b *testing.B) {
	for _, tr := range transports {
		for _, dir := range []string{"upload", "download"} {
			b.Run(tr.name+"/"+dir, func(b *testing.B) {
				p := newRelayPath(b, tr.make)
				src, dst := p.app, p.target
				if dir == "download" {
					src, dst = p.target, p.app
				}
				b.SetBytes(benchChunk)
				done := make(chan error, 1)
				go func() {
					_, err := io.CopyN(io.Discard, onlyReader{dst}, int64(b.N)*benchChunk)
					done <- err
				}()
				buf := make([]byte, benchChunk)
				b.ResetTimer()
				for range b.N {
					if _, err := src.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// onlyReader hides WriterTo/ReaderFrom so the copy uses plain reads, as the relay does.
type onlyReader struct{ io.Reader }

// BenchmarkConnect is one short connection per op: connect, a 32-byte echo, close.
func BenchmarkConnect(b *testing.B) {
	for _, tr := range transports {
		b.Run(tr.name, func(b *testing.B) {
			log := slog.New(slog.DiscardHandler)
			cconn, sconn := tr.make(b)
			srvc := make(chan *Session, 1)
			go func() {
				s, _ := NewServer(sconn, func(Hello) Hello { return Hello{} }, log)
				srvc <- s
			}()
			client, err := NewClient(cconn, Hello{}, log)
			if err != nil {
				b.Fatal(err)
			}
			server := <-srvc
			ctx, cancel := context.WithCancel(context.Background())
			b.Cleanup(func() { cancel(); client.Close(); server.Close() })
			go server.Serve(ctx, func(_ Request, st *Stream) {
				st.WriteStatus(StatusOK)
				defer st.Close()
				buf := make([]byte, 32)
				if _, err := io.ReadFull(st, buf); err != nil {
					return
				}
				st.Write(buf)
			})
			msg := make([]byte, 32)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				st, err := client.Dial(netip.MustParseAddrPort("192.0.2.1:80"))
				if err != nil {
					b.Fatal(err)
				}
				st.Write(msg)
				if _, err := io.ReadFull(st, msg); err != nil {
					b.Fatal(err)
				}
				st.Close()
			}
		})
	}
}
