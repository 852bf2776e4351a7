package main

import (
	"strings"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/internal/control"
)

func TestWriteStatus(t *testing.T) {
	now := time.Date(2025, 1, 2, 10, 0, 0, 0, time.Local)
	st := statusOf(client.Stats{
		Remote: "root@node1:22\x1b]0;pwned\x07", State: client.StateReconnecting, Since: now.Add(-time.Minute),
		Started: now.Add(-time.Hour), Reconnects: 2, RTT: 1500 * time.Microsecond, ConnsActive: 40, ConnsTotal: 52,
		BytesSent: 1234, BytesReceived: 5_600_000, Forward: []string{"10.96.0.0/12", "10.244.0.0/16"}, Port: 12300,
		DNS:    &client.DNSStats{Queries: 7, Failures: 1},
		Expose: []client.ExposeStats{{Spec: "8080:127.0.0.1:8000", At: "10.244.1.1:8080", Connections: 3}},
	}, "/run/k8stunnel/1.log", now)
	if st.UptimeSeconds != 3600 || st.RTTMillis != 1.5 || st.DNS.Queries != 7 {
		t.Errorf("statusOf = %+v", st)
	}
	var b strings.Builder
	writeStatus(&b, []control.Status{st}, now)
	got := b.String()
	for _, want := range []string{
		"reconnecting since 09:59:00", `node         root@node1:22\x1b]0;pwned\a`, "1h0m0s, 2 reconnects", "1.5 ms",
		"10.96.0.0/12 10.244.0.0/16 on port 12300", "40 active, 52 total", "1.2 kB sent, 5.6 MB received",
		"7 queries, 1 failed", "exposing     -R 8080:127.0.0.1:8000 at 10.244.1.1:8080, 3 connections", "log          /run/k8stunnel/1.log",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status text lacks %q:\n%s", want, got)
		}
	}
	if strings.ContainsAny(got, "\x1b\x07") {
		t.Errorf("control characters reached the terminal:\n%q", got)
	}
}
