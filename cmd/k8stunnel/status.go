package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/internal/control"
	"github.com/k8stunnel/k8stunnel/tui"
)

// errStopRequested is why a tunnel ends on `k8stunnel stop`.
var errStopRequested = errors.New("k8stunnel stop")

// serveControl opens this instance's control socket.
func serveControl(c *client.Client, logDest string, stop func()) (*control.Server, error) {
	return control.Listen(runtimeDir(), control.Handler{
		Status: func() control.Status { return statusOf(c.Stats(), logDest, time.Now()) },
		Stop:   stop,
	})
}

func statusOf(s client.Stats, logDest string, now time.Time) control.Status {
	st := control.Status{
		PID: os.Getpid(), Version: version, Remote: s.Remote, State: s.State, Since: s.Since, Started: s.Started,
		Reconnects: s.Reconnects, RTTMillis: float64(s.RTT.Microseconds()) / 1000,
		ConnectionsActive: s.ConnsActive, ConnectionsTotal: s.ConnsTotal,
		BytesSent: s.BytesSent, BytesReceived: s.BytesReceived,
		Forward: s.Forward, Port: s.Port, Log: logDest,
	}
	if !s.Started.IsZero() {
		st.UptimeSeconds = now.Sub(s.Started).Seconds()
	}
	if s.DNS != nil {
		st.DNS = &control.DNS{Queries: s.DNS.Queries, Failures: s.DNS.Failures}
	}
	if u := s.UDP; u != nil {
		st.UDP = &control.UDP{FlowsActive: u.FlowsActive, FlowsTotal: u.FlowsTotal, Dropped: u.Dropped, Oversize: u.Oversize}
	}
	for _, x := range s.Expose {
		st.Expose = append(st.Expose, control.Expose{Spec: x.Spec, Node: x.At, Connections: x.Connections})
	}
	return st
}

// runStatus prints every instance the caller may see, once or, with watch,
// every second until ctx ends.
func runStatus(ctx context.Context, asJSON, watch bool, stdout io.Writer) error {
	for {
		var all []control.Status
		for _, path := range control.Find() {
			if st, err := control.Query(path); err == nil {
				all = append(all, st)
			}
		}
		if watch {
			io.WriteString(stdout, "\x1b[H\x1b[2J") // home, clear
		}
		if asJSON {
			if all == nil {
				all = []control.Status{}
			}
			b, _ := json.MarshalIndent(all, "", "  ")
			fmt.Fprintf(stdout, "%s\n", b)
		} else {
			writeStatus(stdout, all, time.Now())
		}
		if !watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// writeStatus is the text form, one block per instance.
func writeStatus(w io.Writer, all []control.Status, now time.Time) {
	if len(all) == 0 {
		fmt.Fprintln(w, "no k8stunnel running (that you may see; root sees everyone's)")
		return
	}
	p := tui.Printable // what an instance says is not ours to trust
	for i, st := range all {
		if i > 0 {
			fmt.Fprintln(w)
		}
		state := st.State
		if st.State != client.StateConnected {
			state += " since " + st.Since.Local().Format("15:04:05")
		}
		fmt.Fprintf(w, "k8stunnel %d (%s): %s\n", st.PID, p(st.Version), p(state))
		fmt.Fprintf(w, "  node         %s\n", p(orDash(st.Remote)))
		fmt.Fprintf(w, "  uptime       %s, %d reconnects\n", time.Duration(st.UptimeSeconds*float64(time.Second)).Round(time.Second), st.Reconnects)
		rtt := "-"
		if st.RTTMillis > 0 {
			rtt = strconv.FormatFloat(st.RTTMillis, 'f', 1, 64) + " ms"
		}
		fmt.Fprintf(w, "  ssh rtt      %s\n", rtt)
		fmt.Fprintf(w, "  forwarding   %s on port %d\n", p(strings.Join(st.Forward, " ")), st.Port)
		fmt.Fprintf(w, "  connections  %d active, %d total\n", st.ConnectionsActive, st.ConnectionsTotal)
		fmt.Fprintf(w, "  traffic      %s sent, %s received\n", bytesString(st.BytesSent), bytesString(st.BytesReceived))
		if st.DNS != nil {
			fmt.Fprintf(w, "  dns          %d queries, %d failed\n", st.DNS.Queries, st.DNS.Failures)
		}
		if u := st.UDP; u != nil {
			fmt.Fprintf(w, "  udp          %d flows active, %d total, %d datagrams dropped, %d oversize\n", u.FlowsActive, u.FlowsTotal, u.Dropped, u.Oversize)
		}
		for _, x := range st.Expose {
			fmt.Fprintf(w, "  exposing     -R %s at %s, %d connections\n", p(x.Spec), p(orDash(x.Node)), x.Connections)
		}
		if st.Log != "" {
			fmt.Fprintf(w, "  log          %s\n", p(st.Log))
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesString(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, suffix := float64(n), "kMGTPE"
	i := -1
	for f >= unit && i < len(suffix)-1 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %cB", f, suffix[i])
}

// stopTimeout bounds how long stop waits for an instance to remove its
// rules and exit.
const stopTimeout = 30 * time.Second

// runStop stops the instance pid (0: the only one), or all of them, the way
// SIGTERM does, and waits until each has removed its rules and exited.
func runStop(ctx context.Context, pid int, all bool, stderr io.Writer) error {
	socks := map[int]string{}
	var pids []int
	for _, path := range control.Find() {
		n := control.PID(path)
		socks[n] = path
		pids = append(pids, n)
	}
	switch {
	case all:
		if len(pids) == 0 {
			fmt.Fprintln(stderr, "k8stunnel: nothing to stop")
			return nil
		}
	case pid != 0:
		pids = []int{pid}
	case len(pids) == 0:
		return errors.New("no k8stunnel running that you may stop")
	case len(pids) > 1:
		return &tui.HintError{Err: fmt.Errorf("%d k8stunnels are running (%s)", len(pids), joinInts(pids)),
			Hint: "name one: k8stunnel stop PID, or stop them all: k8stunnel stop --all"}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, stopTimeout, fmt.Errorf("%v", stopTimeout))
	defer cancel()
	var errs []error
	for _, p := range pids {
		var err error
		if path, ok := socks[p]; ok {
			err = control.Stop(ctx, path)
		} else {
			err = signalStop(ctx, p)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(stderr, "k8stunnel: stopped %d\n", p)
	}
	return errors.Join(errs...)
}

func baseName(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

func joinInts(ns []int) string {
	var ss []string
	for _, n := range ns {
		ss = append(ss, strconv.Itoa(n))
	}
	return strings.Join(ss, ", ")
}
