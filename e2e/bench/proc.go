//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/e2e"
)

// proc is a long-running program inside one of the lab's namespaces, in its own process group so that stopping it
// stops its children too (sshuttle's ssh and firewall processes).
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *watchBuffer
	done chan struct{}
	err  error
}

// startProc runs name in ns. Its stdout and stderr are collected together.
func startProc(ns *e2e.Netns, name string, args ...string) (*proc, error) {
	p := &proc{name: name, out: &watchBuffer{}, done: make(chan struct{})}
	p.cmd = ns.Command(context.Background(), name, args...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.WaitDelay = 2 * time.Second
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the program's process id: `ip netns exec` execs it in place.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// waitOutput waits until the program has printed substr.
func (p *proc) waitOutput(substr string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		changed := p.out.changed() // before the check, so no write slips between
		if strings.Contains(p.out.String(), substr) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before printing %q; output:\n%s", p.name, p.err, substr, tail(p.out.String()))
		case <-deadline:
			return fmt.Errorf("%s did not print %q within %v; output:\n%s", p.name, substr, timeout, tail(p.out.String()))
		case <-changed:
		}
	}
}

// alive reports whether the program still runs.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the group and, if it lingers, SIGKILL.
func (p *proc) stop() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	// Children that left the group's leader behind (a forked firewall helper) go too.
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// runOutput runs a program in ns to completion within timeout and returns its stdout.
func runOutput(ns *e2e.Netns, timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := ns.Command(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return out, fmt.Errorf("%s: timed out after %v", name, timeout)
	}
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", name, err, tail(stderr.String()))
	}
	return out, nil
}

// rssKiB reads a process's resident set size.
func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, errors.New("no VmRSS")
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	lines := strings.Split(s, "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// watchBuffer collects output and wakes waiters on every write.
type watchBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	wake chan struct{}
}

func (b *watchBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() < 1<<20 { // a chatty process must not eat memory
		b.buf.Write(p)
	}
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
	return len(p), nil
}

func (b *watchBuffer) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wake == nil {
		b.wake = make(chan struct{})
	}
	return b.wake
}

func (b *watchBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var _ io.Writer = (*watchBuffer)(nil)
