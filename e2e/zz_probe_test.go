package e2e

import (
	"context"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
	"net"
	"io"
	"fmt"
)

func TestProbeHostKey(t *testing.T) {
	lab := newLab(t)
	empty := lab.Dir + "/empty_known_hosts"
	os.WriteFile(empty, nil, 0o600)
	args := []string{"-r", "root@" + NodeAddr, "-i", lab.Identity, "--known-hosts", empty, "-F", "/dev/null", ServiceCIDR}
	c, _ := lab.StartClient(args...)
	err := c.Wait(20 * time.Second)
	t.Logf("unknown host: err=%v\n%s", err, c.Stderr())
	os.WriteFile(empty, []byte(NodeAddr+" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHf9zCvUPMhN+mBu3UxNDYJ1BEGLuzyEqhUHXl84nVPs\n"), 0o600)
	c, _ = lab.StartClient(args...)
	err = c.Wait(20 * time.Second)
	t.Logf("changed host key: err=%v\n%s", err, c.Stderr())
	c, _ = lab.StartClient("-r", "root@"+NodeAddr, "--known-hosts", lab.KnownHosts, "-F", "/dev/null", ServiceCIDR)
	err = c.Wait(20 * time.Second)
	t.Logf("no key: err=%v\n%s", err, c.Stderr())
	out, _ := lab.Laptop.Output(context.Background(), "iptables-save")
	t.Logf("rules after failures:\n%s", NormalizeIptablesSave(out))
}

func TestProbeExclude(t *testing.T) {
	lab := newLab(t)
	c, _ := lab.StartClient(append([]string{"-x", "10.96.0.10"}, lab.ClientArgs(ServiceCIDR, PodCIDR)...)...)
	if err := c.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Log(iptablesSave(t, lab))
	out, _ := lab.Laptop.Output(context.Background(), "ss", "-ltnp")
	t.Log(out)
	c.Stop(syscall.SIGTERM)
}

func TestProbeReconnect(t *testing.T) {
	lab := newLab(t)
	c := startClient(t, lab)
	h, _ := lab.NodeHelperPids()
	t.Logf("killing helpers %v", h)
	for _, p := range h {
		syscall.Kill(p, syscall.SIGKILL)
	}
	start := time.Now()
	for time.Since(start) < 20*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := lab.Laptop.Output(ctx, "curl", "-sS", "--max-time", "1", "http://"+ServiceIP+"/")
		cancel()
		if err == nil {
			t.Logf("works again after %v", time.Since(start))
			break
		}
		t.Logf("%v: %v", time.Since(start), err)
		time.Sleep(300 * time.Millisecond)
	}
	// Now kill sshd listener+sessions? just the session's sshd processes
	t.Logf("stderr:\n%s", c.Stderr())
	c.Stop(syscall.SIGTERM)
}

func TestProbeMany(t *testing.T) {
	lab := newLab(t)
	c := startClient(t, lab)
	addr := servePod(t, lab, echoAfterEOF(t))
	fds := func() int { e, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", c.Pid())); return len(e) }
	t.Logf("fds at start %d", fds())
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := 0
	start := time.Now()
	conns := make([]net.Conn, 0, 800)
	for i := 0; i < 800; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cn, err := lab.Laptop.Dial(ctx, "tcp", addr)
		cancel()
		if err != nil { t.Log(err); errs++; continue }
		conns = append(conns, cn)
	}
	t.Logf("800 open, fds %d", fds())
	for i, cn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cn.Close()
			cn.SetDeadline(time.Now().Add(30 * time.Second))
			p := []byte(fmt.Sprintf("hello %d", i))
			cn.Write(p)
			cn.(*net.TCPConn).CloseWrite()
			b, err := io.ReadAll(cn)
			if err != nil || string(b) != string(p) {
				mu.Lock(); errs++; mu.Unlock()
				if errs < 5 { t.Logf("conn %d: %q %v", i, b, err) }
			}
		}()
	}
	wg.Wait()
	t.Logf("800 concurrent echoes: %d errors in %v; fds %d", errs, time.Since(start), fds())
	for i := 0; i < 1000; i++ {
		checkEcho(t, lab, addr, []byte("x"))
	}
	time.Sleep(time.Second)
	t.Logf("after 1000 sequential: fds %d", fds())
	c.Stop(syscall.SIGTERM)
}

func TestProbeStopDuringTransfer(t *testing.T) {
	lab := newLab(t)
	c := startClient(t, lab)
	addr := servePod(t, lab, func(cn net.Conn) { io.Copy(cn, io.LimitReader(stream(1), 1<<40)) })
	cn := dialLaptop(t, lab, addr)
	go io.Copy(io.Discard, cn)
	idle := dialLaptop(t, lab, podHTTPAddr())
	_ = idle
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	err := c.Stop(syscall.SIGTERM)
	t.Logf("stop with a busy and an idle connection: %v after %v\n%s", err, time.Since(start), c.Stderr())
}
