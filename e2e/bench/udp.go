//go:build linux

package main

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/k8stunnel/k8stunnel/e2e"
)

// UDP is measured for direct routing and k8stunnel only: OpenSSH's -L and sshuttle's nat method carry no UDP.
const (
	udpEchoPort   = 7101
	udpRoundTrips = 2000
)

func udpMode(m string) bool { return m == "direct" || m == "k8stunnel" }

// startUDPEcho echoes datagrams on the pod's udpEchoPort until the bench ends.
func (b *bench) startUDPEcho() error {
	var pc net.PacketConn
	if err := b.lab.Pod.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", net.JoinHostPort(e2e.PodAddr, strconv.Itoa(udpEchoPort)))
		return err
	}); err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return nil
}

// measureUDP runs the UDP figures for m: echo round trips one at a time, then iperf3 -u at 50 and 200 Mbit/s.
func (b *bench) measureUDP(m string, t *tunnel) {
	p50, p99, err := b.udpRoundTrips(t)
	b.res.set("udp_p50", m, p50, err)
	b.res.set("udp_p99", m, p99, err)
	for _, rate := range []string{"50", "200"} {
		loss, err := b.iperfUDP(t, rate+"M")
		b.res.set("udp_loss_"+rate, m, loss, err)
	}
}

// udpRoundTrips sends 32-byte datagrams to the pod's UDP echo one at a time, from one socket (one flow), and returns
// the round trip's p50 and p99 in ms. A datagram with no echo within a second counts as lost and is not timed.
func (b *bench) udpRoundTrips(t *tunnel) (p50, p99 float64, err error) {
	dst, err := netip.ParseAddrPort(t.addr(udpEchoPort))
	if err != nil {
		return 0, 0, err
	}
	var pc *net.UDPConn
	if err := b.lab.Laptop.Do(func() (err error) {
		c, err := net.ListenPacket("udp4", ":0")
		pc, _ = c.(*net.UDPConn)
		return err
	}); err != nil {
		return 0, 0, err
	}
	defer pc.Close()
	msg, buf := make([]byte, 32), make([]byte, 64)
	var rtts []time.Duration
	for i := range udpRoundTrips {
		msg[0], msg[1] = byte(i>>8), byte(i)
		start := time.Now()
		if _, err := pc.WriteToUDPAddrPort(msg, dst); err != nil {
			return 0, 0, err
		}
		pc.SetReadDeadline(start.Add(time.Second))
		for {
			n, _, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // lost
			}
			if n == len(msg) && buf[0] == msg[0] && buf[1] == msg[1] {
				rtts = append(rtts, time.Since(start))
				break
			}
		}
	}
	if len(rtts) < udpRoundTrips/2 {
		return 0, 0, fmt.Errorf("only %d of %d UDP echoes came back", len(rtts), udpRoundTrips)
	}
	slices.Sort(rtts)
	ms := func(q float64) float64 { return float64(rtts[int(q*float64(len(rtts)-1))].Microseconds()) / 1000 }
	logf("  %s UDP echo: p50 %.2f ms, p99 %.2f ms (%d of %d answered)", t.name, ms(0.5), ms(0.99), len(rtts), udpRoundTrips)
	return ms(0.5), ms(0.99), nil
}

// iperfUDP runs iperf3 -u at rate through t and returns the percentage of datagrams lost. The receiver asks for a
// 2 MiB socket buffer, as the e2e test does (see e2e/udp_test.go).
func (b *bench) iperfUDP(t *tunnel, rate string) (float64, error) {
	srv, err := startProc(b.lab.Pod, "iperf3", "-s", "-1", "--forceflush", "-B", e2e.PodAddr, "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return 0, err
	}
	defer srv.stop()
	if err := srv.waitOutput("Server listening", 10*time.Second); err != nil {
		return 0, err
	}
	host, port, _ := net.SplitHostPort(t.addr(iperfPort))
	args := []string{"-u", "-b", rate, "-w", "2M", "-c", host, "-p", port, "-t", strconv.Itoa(int(b.cfg.bulk.Seconds())),
		"-J", "--connect-timeout", "5000"}
	out, err := runOutput(b.lab.Laptop, b.cfg.bulk+30*time.Second, "iperf3", args...)
	lost, packets, err := e2e.IperfUDPResult(out, err)
	if err != nil {
		return 0, err
	}
	logf("  %s iperf3 -u -b %s: %.2f%% lost of %d datagrams", t.name, rate, lost, packets)
	return lost, nil
}
