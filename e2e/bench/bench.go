//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/e2e"
)

const (
	iperfPort = 5201
	// delayPort is where the delay relay listens on the node, in front of sshd.
	delayPort = 2222
	// oneWayDelay makes a 50 ms round trip through the delay relay.
	oneWayDelay = 25 * time.Millisecond
)

// echoPort gives each mode its own echo port on the pod, so the TIME_WAIT entries one mode's connection-rate run
// leaves behind do not crowd the next mode's port space.
var echoPort = map[string]int{"direct": 7001, "openssh": 7002, "sshuttle": 7003, "k8stunnel": 7004}

var cidrs = []string{e2e.ServiceCIDR, e2e.PodCIDR}

type bench struct {
	cfg  config
	lab  *e2e.Lab
	self string
	res  *results
	// delayKnownHosts holds the node's host key under [NodeAddr]:delayPort, the name a client looks up there.
	delayKnownHosts string
}

// prepare starts the pod's servers and the delay relay and tunes the namespaces for many short connections.
func (b *bench) prepare() error {
	for _, ns := range []*e2e.Netns{b.lab.Laptop, b.lab.Node} {
		// Many short connections: reuse TIME_WAIT ports for new outgoing ones, and use a wide port range that
		// stays clear of the listeners (12300, 15201, 17001-17004).
		if _, err := runOutput(ns, 10*time.Second, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
			"net.ipv4.ip_local_port_range=20000 65000"); err != nil {
			return err
		}
	}
	var ports []string
	for _, p := range echoPort {
		ports = append(ports, net.JoinHostPort(e2e.PodAddr, strconv.Itoa(p)))
	}
	echo, err := startProc(b.lab.Pod, b.self, "echo", "-listen", strings.Join(ports, ","))
	if err != nil {
		return err
	}
	if err := echo.waitOutput(readyLine, 10*time.Second); err != nil {
		return err
	}
	if err := b.startUDPEcho(); err != nil {
		return err
	}
	relay, err := startProc(b.lab.Node, b.self, "delay", "-listen", net.JoinHostPort(e2e.NodeAddr, strconv.Itoa(delayPort)),
		"-to", "127.0.0.1:22", "-delay", oneWayDelay.String())
	if err != nil {
		return err
	}
	if err := relay.waitOutput(readyLine, 10*time.Second); err != nil {
		return err
	}
	kh, err := os.ReadFile(b.lab.KnownHosts)
	if err != nil {
		return err
	}
	b.delayKnownHosts = b.lab.Dir + "/known_hosts_delay"
	alias := fmt.Sprintf("[%s]:%d ", e2e.NodeAddr, delayPort)
	return os.WriteFile(b.delayKnownHosts, []byte(strings.Replace(string(kh), e2e.NodeAddr+" ", alias, 1)), 0o600)
}

func (b *bench) runAll() {
	for _, m := range modes {
		if !b.cfg.mode(m) || !(b.cfg.section("bulk") || b.cfg.section("rate") || b.cfg.section("rr") || b.cfg.section("hold") || (b.cfg.section("udp") && udpMode(m))) {
			continue
		}
		logf("%s: starting (load %s)", m, loadAvg())
		t, err := b.start(m, false, 0)
		if err != nil {
			b.res.fail(m, "setup", err)
			continue
		}
		b.measure(m, t)
		t.stop()
	}
	b.moreRounds()
	if !b.cfg.section("rtt") {
		return
	}
	for _, m := range rttModes(b.cfg.parallel) {
		if !b.cfg.mode(m.base) {
			continue
		}
		logf("%s over 50 ms RTT: starting (load %s)", m.name, loadAvg())
		t, err := b.start(m.base, true, m.channels)
		if err != nil {
			b.res.fail(m.name, "rtt setup", err)
			continue
		}
		for _, dir := range []string{"up", "down"} {
			v, err := b.iperf(t, dir == "down", m.parallel)
			b.res.set("rtt_"+dir, m.name, v.Mbits, err)
		}
		t.stop()
	}
}

// moreRounds runs the short sections again, rounds-1 times, the modes taking turns, so their figures are medians.
func (b *bench) moreRounds() {
	if !b.cfg.section("rate") && !b.cfg.section("rr") {
		return
	}
	for round := 2; round <= b.cfg.rounds; round++ {
		for _, m := range modes {
			if !b.cfg.mode(m) {
				continue
			}
			logf("%s: round %d of %d (load %s)", m, round, b.cfg.rounds, loadAvg())
			t, err := b.start(m, false, 0)
			if err != nil {
				b.res.fail(m, "setup", err)
				continue
			}
			b.measureShort(m, t)
			t.stop()
		}
	}
}

func (b *bench) measure(m string, t *tunnel) {
	if b.cfg.section("bulk") {
		for _, dir := range []string{"up", "down"} {
			v, err := b.iperf(t, dir == "down", 1)
			b.res.set("bulk_"+dir, m, v.Mbits, err)
			if err == nil && m != "direct" {
				b.res.set("cpu_"+dir, m, v.CPUPerGB, nil)
			}
		}
	}
	b.measureShort(m, t)
	if b.cfg.strace && b.cfg.section("rr") && m != "direct" {
		b.straceRR(t, echoPort[m])
	}
	if b.cfg.section("hold") {
		h, err := b.hold(t, echoPort[m])
		b.res.setHold(m, h, err)
	}
	if b.cfg.section("udp") && udpMode(m) {
		b.measureUDP(m, t)
	}
}

// measureShort measures the sections that take seconds: connection rate and request/response.
func (b *bench) measureShort(m string, t *tunnel) {
	if b.cfg.section("rate") {
		r, err := b.rate(t, echoPort[m])
		b.res.setRate(m, r, err)
	}
	if b.cfg.section("rr") {
		for _, clients := range []int{1, 50} {
			r, err := b.rr(t, echoPort[m], clients)
			b.res.setRR(m, clients, r, err)
		}
	}
}

var modes = []string{"direct", "openssh", "sshuttle", "k8stunnel"}

// rttMode is one run over the delayed path.
type rttMode struct {
	name     string // as shown
	base     string // which tunnel
	channels int    // k8stunnel --channels; 0 leaves the default
	parallel int    // iperf3 -P
}

// rttModes are the runs over the delayed path: one stream through each tunnel, and n parallel streams through
// k8stunnel with its default flags, which choose the channels by the round trip.
func rttModes(n int) []rttMode {
	return []rttMode{
		{"openssh", "openssh", 1, 1},
		{"sshuttle", "sshuttle", 1, 1},
		{"k8stunnel", "k8stunnel", 0, 1},
		{fmt.Sprintf("k8stunnel ×%d", n), "k8stunnel", 0, n},
	}
}

// tunnel is one way from the laptop to the pod, up and running.
type tunnel struct {
	name string
	// host and ports say where the laptop dials to reach a pod port: the pod itself, or an ssh -L forward.
	host  string
	ports map[int]int
	// pid is the laptop-side process whose memory a held connection costs; 0 when there is none.
	pid   int
	alive func() bool
	stop  func()
}

func (t *tunnel) addr(podPort int) string {
	p := podPort
	if q, ok := t.ports[podPort]; ok {
		p = q
	}
	return net.JoinHostPort(t.host, strconv.Itoa(p))
}

// start brings mode up; delayed routes SSH through the delay relay.
func (b *bench) start(mode string, delayed bool, channels int) (*tunnel, error) {
	sshPort, kh := 22, b.lab.KnownHosts
	if delayed {
		sshPort, kh = delayPort, b.delayKnownHosts
	}
	sshOpts := []string{"-F", "/dev/null", "-i", b.lab.Identity, "-o", "UserKnownHostsFile=" + kh,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "Ciphers=aes128-gcm@openssh.com", "-p", strconv.Itoa(sshPort)}
	lap := b.lab.Laptop
	switch mode {
	case "direct":
		for _, c := range cidrs {
			if _, err := runOutput(lap, 10*time.Second, "ip", "route", "add", c, "via", e2e.NodeAddr); err != nil {
				return nil, err
			}
		}
		return &tunnel{name: mode, host: e2e.PodAddr, alive: func() bool { return true }, stop: func() {
			for _, c := range cidrs {
				runOutput(lap, 10*time.Second, "ip", "route", "del", c, "via", e2e.NodeAddr)
			}
		}}, nil

	case "openssh":
		t := &tunnel{name: mode, host: "127.0.0.1", ports: map[int]int{}}
		args := append([]string{"-N", "-o", "ExitOnForwardFailure=yes"}, sshOpts...)
		for _, p := range []int{iperfPort, echoPort["openssh"]} {
			t.ports[p] = 10000 + p
			args = append(args, "-L", fmt.Sprintf("127.0.0.1:%d:%s:%d", 10000+p, e2e.PodAddr, p))
		}
		args = append(args, "root@"+e2e.NodeAddr)
		p, err := startProc(lap, "ssh", args...)
		if err != nil {
			return nil, err
		}
		t.pid, t.alive, t.stop = p.Pid(), p.alive, p.stop
		// ssh -N says nothing when its forwards are up: poll one until an echo comes back through it.
		if err := b.pollEcho(t.addr(echoPort["openssh"]), p, 20*time.Second); err != nil {
			p.stop()
			return nil, err
		}
		return t, nil

	case "sshuttle":
		remote := "root@" + e2e.NodeAddr
		if delayed {
			remote += ":" + strconv.Itoa(delayPort)
		}
		// sshuttle passes -p itself when the remote names a port.
		ssh := "ssh " + strings.Join(sshOpts[:len(sshOpts)-2], " ")
		args := append([]string{"-r", remote, "-e", ssh}, cidrs...)
		p, err := startProc(lap, "sshuttle", args...)
		if err != nil {
			return nil, err
		}
		if err := p.waitOutput("Connected to server", 30*time.Second); err != nil {
			p.stop()
			return nil, err
		}
		// sshuttle says it is connected before its firewall rules are in.
		t := &tunnel{name: mode, host: e2e.PodAddr, pid: p.Pid(), alive: p.alive, stop: p.stop}
		if err := b.pollEcho(t.addr(echoPort["sshuttle"]), p, 20*time.Second); err != nil {
			p.stop()
			return nil, err
		}
		return t, nil

	case "k8stunnel":
		remote := "root@" + e2e.NodeAddr
		if delayed {
			remote += ":" + strconv.Itoa(delayPort)
		}
		args := []string{"-r", remote, "-i", b.lab.Identity, "--known-hosts", kh, "-F", "/dev/null"}
		if channels > 0 {
			args = append(args, "--channels", strconv.Itoa(channels))
		}
		c, err := b.lab.StartClient(append(args, cidrs...)...)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.WaitReady(ctx); err != nil {
			c.Stop(syscall.SIGKILL)
			return nil, err
		}
		alive := func() bool {
			select {
			case <-c.Exited():
				return false
			default:
				return true
			}
		}
		return &tunnel{name: mode, host: e2e.PodAddr, pid: c.Pid(), alive: alive, stop: func() {
			if err := c.Stop(syscall.SIGTERM); err != nil {
				logf("k8stunnel did not stop cleanly: %v\n%s", err, tail(c.Stderr()))
			}
		}}, nil
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

// pollEcho waits until addr echoes, from the laptop.
func (b *bench) pollEcho(addr string, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := b.lab.Laptop.Do(func() error { return echoOnce(addr, []byte("ping"), make([]byte, 4)) })
		if err == nil {
			return nil
		}
		if !p.alive() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, tail(p.out.String()))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no echo through %s within %v: %v\n%s", p.name, timeout, err, tail(p.out.String()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// iperf runs one iperf3 test through t and returns the receiver's throughput in Mbit/s.
func (b *bench) iperf(t *tunnel, reverse bool, parallel int) (bulkResult, error) {
	srv, err := startProc(b.lab.Pod, "iperf3", "-s", "-1", "--forceflush", "-B", e2e.PodAddr, "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return bulkResult{}, err
	}
	defer srv.stop()
	if err := srv.waitOutput("Server listening", 10*time.Second); err != nil {
		return bulkResult{}, err
	}
	host, port, _ := net.SplitHostPort(t.addr(iperfPort))
	args := []string{"-c", host, "-p", port, "-t", strconv.Itoa(int(b.cfg.bulk.Seconds())), "-J",
		"--connect-timeout", "5000", "-P", strconv.Itoa(parallel)}
	if reverse {
		args = append(args, "-R")
	}
	cpu0 := b.tunnelCPU()
	out, err := runOutput(b.lab.Laptop, b.cfg.bulk+30*time.Second, "iperf3", args...)
	cpu1 := b.tunnelCPU()
	cpu := cpu1.total() - cpu0.total()
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		if err == nil {
			err = jerr
		}
		return bulkResult{}, err
	}
	if r.Error != "" {
		return bulkResult{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	if err != nil {
		return bulkResult{}, err
	}
	v := r.End.SumReceived.BitsPerSecond / 1e6
	dir := "laptop→pod"
	if reverse {
		dir = "pod→laptop"
	}
	gb := r.End.SumReceived.Bytes / 1e9
	logf("  %s %s -P %d: %.0f Mbit/s, tunnel CPU %.2f s/GB (%s)", t.name, dir, parallel, v, cpu.Seconds()/gb, cpu1.since(cpu0, gb))
	return bulkResult{Mbits: v, CPUPerGB: cpu.Seconds() / gb}, nil
}

// bulkResult is one iperf3 run.
type bulkResult struct {
	Mbits float64
	// CPUPerGB is the CPU time the tunnel's processes (everything in the lab but iperf3) spent per GB moved.
	CPUPerGB float64
}

// tunnelCPU is the CPU time used so far by every process in the lab's namespaces except iperf3, by command name:
// the tunnel's client, ssh, sshd, helper. It tells apart a tunnel that is slow from one that starves for CPU on a
// busy machine.
func (b *bench) tunnelCPU() cpuTimes {
	t := cpuTimes{}
	for _, ns := range []*e2e.Netns{b.lab.Laptop, b.lab.Node, b.lab.Pod} {
		pids, _ := ns.Pids()
		for _, pid := range pids {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue
			}
			// comm is in parentheses and may hold spaces: fields count from after the last ')'.
			s := string(stat)
			i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
			if i < 0 || j < i {
				continue
			}
			comm := s[i+1 : j]
			f := strings.Fields(s[j+1:])
			if comm == "iperf3" || comm == b.selfComm() || len(f) < 13 {
				continue
			}
			u, _ := strconv.ParseInt(f[11], 10, 64)
			k, _ := strconv.ParseInt(f[12], 10, 64)
			t[comm] += time.Duration(u+k) * time.Second / 100 // USER_HZ
		}
	}
	return t
}

// tunnelSwitches counts, by command name, the times the threads of the tunnel's processes (as tunnelCPU picks
// them) went to sleep: each is a wakeup later, which is what a round trip mostly costs on a busy machine.
func (b *bench) tunnelSwitches() map[string]int {
	sw := map[string]int{}
	for _, ns := range []*e2e.Netns{b.lab.Laptop, b.lab.Node, b.lab.Pod} {
		pids, _ := ns.Pids()
		for _, pid := range pids {
			comm := procComm(pid)
			if comm == "" || comm == "iperf3" || comm == b.selfComm() {
				continue
			}
			tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			for _, task := range tasks {
				st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
				if err != nil {
					continue
				}
				for _, line := range strings.Split(string(st), "\n") {
					if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
						n, _ := strconv.Atoi(strings.TrimSpace(v))
						sw[comm] += n
					}
				}
			}
		}
	}
	return sw
}

// selfComm is the kernel's name for this program, which also runs the echo server and the delay relay: they are
// the lab's furniture, not the tunnel.
func (b *bench) selfComm() string {
	c := filepath.Base(b.self)
	if len(c) > 15 {
		c = c[:15]
	}
	return c
}

type cpuTimes map[string]time.Duration

func (t cpuTimes) total() time.Duration {
	var sum time.Duration
	for _, d := range t {
		sum += d
	}
	return sum
}

// since is what each command used after before was taken, per GB moved, as text.
func (t cpuTimes) since(before cpuTimes, gb float64) string {
	var parts []string
	for comm, d := range t {
		if d -= before[comm]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.2f", comm, d.Seconds()/gb))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// rate runs the connection-rate client through t.
func (b *bench) rate(t *tunnel, podPort int) (rateResult, error) {
	var r rateResult
	cpu0 := b.tunnelCPU()
	out, err := runOutput(b.lab.Laptop, b.cfg.rate+30*time.Second, b.self, "rate", "-addr", t.addr(podPort),
		"-c", "16", "-d", b.cfg.rate.String())
	cpu1 := b.tunnelCPU()
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, err
	}
	logf("  %s: %.0f conn/s, p50 %.2f ms, p99 %.2f ms, %d errors; CPU ms per conn: %s", t.name, r.Rate, r.P50ms, r.P99ms,
		r.Errors, cpu1.since(cpu0, float64(r.Conns)/1000))
	if r.Conns == 0 {
		return r, fmt.Errorf("no connection succeeded: %s", r.Err)
	}
	return r, nil
}

// rr runs the request/response client through t with clients warm connections.
func (b *bench) rr(t *tunnel, podPort, clients int) (rrResult, error) {
	var r rrResult
	cpu0, sw0 := b.tunnelCPU(), b.tunnelSwitches()
	out, err := runOutput(b.lab.Laptop, b.cfg.rate+30*time.Second, b.self, "rr", "-addr", t.addr(podPort),
		"-c", strconv.Itoa(clients), "-d", b.cfg.rate.String())
	cpu1, sw1 := b.tunnelCPU(), b.tunnelSwitches()
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, err
	}
	var sw []string
	for comm, n := range sw1 {
		if n -= sw0[comm]; n > 0 {
			sw = append(sw, fmt.Sprintf("%s %.1f", comm, float64(n)/float64(max(r.Trips, 1))))
		}
	}
	sort.Strings(sw)
	logf("  %s: %d clients, %.0f round trips/s, p50 %.3f ms, p99 %.3f ms; CPU µs per round trip: %s; sleeps per round trip: %s",
		t.name, clients, r.Rate, r.P50ms, r.P99ms, cpu1.since(cpu0, float64(r.Trips)/1e6), strings.Join(sw, ", "))
	if r.Err != "" {
		return r, fmt.Errorf("rr: %s", r.Err)
	}
	return r, nil
}

// straceRR counts the system calls per round trip of the tunnel's processes (the laptop side and every process on
// the node but the lab's own) during a one-connection request/response run under strace -c. strace slows each call
// down many times, so the run's rate means nothing; the counts per round trip are the figure.
func (b *bench) straceRR(t *tunnel, podPort int) {
	pids := map[int]string{}
	if t.pid != 0 {
		pids[t.pid] = "laptop"
		if kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", t.pid, t.pid)); err == nil {
			for _, f := range strings.Fields(string(kids)) { // sshuttle's ssh
				pid, _ := strconv.Atoi(f)
				pids[pid] = "laptop"
			}
		}
	}
	nodePids, _ := b.lab.Node.Pids()
	for _, pid := range nodePids {
		if comm := procComm(pid); comm != "" && comm != b.selfComm() {
			pids[pid] = "node"
		}
	}
	type traced struct {
		pid  int
		file string
		p    *proc
	}
	var ts []traced
	for pid := range pids {
		file := fmt.Sprintf("%s/strace-%d", b.lab.Dir, pid)
		p, err := startProc(b.lab.Laptop, "strace", "-c", "-f", "-o", file, "-p", strconv.Itoa(pid))
		if err != nil {
			logf("  strace: %v", err)
			continue
		}
		if err := p.waitOutput("attached", 10*time.Second); err != nil {
			logf("  strace: %v", err)
		}
		ts = append(ts, traced{pid, file, p})
	}
	out, err := runOutput(b.lab.Laptop, 30*time.Second, b.self, "rr", "-addr", t.addr(podPort), "-c", "1", "-d", "2s")
	for _, tr := range ts {
		tr.p.cmd.Process.Signal(syscall.SIGINT)
		<-tr.p.done
	}
	var r rrResult
	if err == nil {
		err = json.Unmarshal(out, &r)
	}
	if err != nil || r.Trips == 0 {
		logf("  strace run failed: %v", err)
		return
	}
	for _, tr := range ts {
		data, err := os.ReadFile(tr.file)
		if err != nil {
			continue
		}
		calls := straceCalls(string(data))
		total := calls["total"]
		delete(calls, "total")
		var top []string
		for name, n := range calls {
			if n*10 >= r.Trips {
				top = append(top, fmt.Sprintf("%s %.1f", name, float64(n)/float64(r.Trips)))
			}
		}
		sort.Strings(top)
		if total > 0 {
			logf("  %s %s (%s): %.1f syscalls per round trip: %s", t.name, pids[tr.pid], procComm(tr.pid), float64(total)/float64(r.Trips), strings.Join(top, ", "))
		}
	}
}

// straceCalls reads the calls column of strace -c's table, by syscall name and "total".
func straceCalls(table string) map[string]int {
	calls := map[string]int{}
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue
		}
		n, err := strconv.Atoi(f[3])
		if err != nil {
			continue
		}
		calls[f[len(f)-1]] = n
	}
	return calls
}

func procComm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// holdResult is the held-connections figure for one mode.
type holdResult struct {
	Steps []holdStep `json:"steps"`
	// Held is the most connections that were open and echoing at once.
	Held int `json:"held"`
	// RSSBeforeKiB and RSSPeakKiB are the laptop-side tunnel process's VmRSS before the first connection and at
	// the last step where every connection echoed.
	RSSBeforeKiB int     `json:"rss_before_kib,omitempty"`
	RSSPeakKiB   int     `json:"rss_peak_kib,omitempty"`
	KiBPerConn   float64 `json:"kib_per_conn,omitempty"`
	TunnelDied   bool    `json:"tunnel_died,omitempty"`
	rssHeld      int
}

// hold steps the number of open connections through t up and reads the tunnel process's memory at each step.
func (b *bench) hold(t *tunnel, podPort int) (holdResult, error) {
	var h holdResult
	if t.pid != 0 {
		h.RSSBeforeKiB, _ = rssKiB(t.pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := b.lab.Laptop.Command(ctx, b.self, "hold", "-addr", t.addr(podPort), "-steps", b.cfg.steps)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return h, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return h, err
	}
	if err := cmd.Start(); err != nil {
		return h, err
	}
	defer cmd.Wait()
	defer stdin.Close()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for {
		var line string
		var ok bool
		select {
		case line, ok = <-lines:
		case <-time.After(90 * time.Second):
			cancel()
			return h, errors.New("hold: no step finished within 90 s")
		}
		if !ok {
			break
		}
		var st holdStep
		if err := json.Unmarshal([]byte(line), &st); err != nil {
			return h, fmt.Errorf("hold: %w", err)
		}
		h.Steps = append(h.Steps, st)
		rss := 0
		if t.pid != 0 {
			rss, _ = rssKiB(t.pid)
		}
		// Held is how far the tunnel got: the most connections that echoed at once, also from a step that fell
		// short. Memory is read only at steps where every connection echoed.
		h.Held = max(h.Held, st.Echoing)
		if st.Echoing == st.Target && rss > 0 {
			h.RSSPeakKiB, h.rssHeld = rss, st.Echoing
		}
		logf("  %s: %d/%d open, %d echoing in %.1f s, rss %d KiB %s", t.name, st.Open, st.Target, st.Echoing, st.Seconds, rss, st.Err)
		if st.Echoing < st.Target {
			if !t.alive() {
				h.TunnelDied = true
				logf("  %s: the tunnel process died", t.name)
			}
			break
		}
		if len(h.Steps) == strings.Count(b.cfg.steps, ",")+1 {
			break
		}
		io.WriteString(stdin, "\n")
	}
	if h.rssHeld > 0 && h.RSSBeforeKiB > 0 {
		h.KiBPerConn = float64(h.RSSPeakKiB-h.RSSBeforeKiB) / float64(h.rssHeld)
	}
	return h, nil
}
