package client

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/transport/transporttest"
)

// Stats follows the tunnel: bytes each way as they pass, connections, and the
// state through a lost link and its return.
func TestEngineStats(t *testing.T) {
	release := make(chan struct{})
	tr := &transporttest.Transport{Fail: func(attempt int) error {
		if attempt == 2 {
			<-release
		}
		return nil
	}}
	before := time.Now()
	e := startEngine(t, Config{}, tr, echoTarget(t))
	app := e.dial(t)
	echo(t, app, "hello")
	// The echo is counted once the write to the app has returned, which
	// can be just after the app has read it.
	waitFor(t, "the echo to be counted", func() bool { return e.c.Stats().BytesReceived == 5 })
	s := e.c.Stats()
	if s.State != StateConnected || s.Remote == "" || s.Started.Before(before) || s.Since.Before(s.Started) {
		t.Errorf("Stats = %+v, want connected to a remote, started and since after %v", s, before)
	}
	if s.ConnsActive != 1 || s.ConnsTotal != 1 || s.BytesSent != 5 || s.BytesReceived != 5 || s.Reconnects != 0 {
		t.Errorf("Stats = %+v, want 1 connection active of 1, 5 bytes each way, no reconnect", s)
	}
	if s.DNS != nil {
		t.Errorf("Stats().DNS = %+v without DNS, want nil", s.DNS)
	}
	if len(s.Forward) != 1 || s.Forward[0] != "10.96.0.0/12" || s.Port != e.c.Port() {
		t.Errorf("Stats forwards %v on %d, want [10.96.0.0/12] on %d", s.Forward, s.Port, e.c.Port())
	}
	app.Close()
	waitFor(t, "the connection to end", func() bool { return e.c.Stats().ConnsActive == 0 })

	lost := time.Now()
	tr.Links()[0].Kill(errors.New("cable cut"))
	e.logs.wait(t, "tunnel lost; new connections are reset until it is back")
	if s := e.c.Stats(); s.State != StateReconnecting || s.Since.Before(lost) || s.Reconnects != 0 {
		t.Errorf("while down: state %q since %v, %d reconnects; want reconnecting since after %v, 0", s.State, s.Since, s.Reconnects, lost)
	}
	close(release)
	e.logs.wait(t, "tunnel restored")
	if s := e.c.Stats(); s.State != StateConnected || s.Reconnects != 1 || s.ConnsTotal != 1 {
		t.Errorf("after the reconnect: %+v, want connected, 1 reconnect, still 1 connection in total", s)
	}
	e.shutdown(t)
}

// The tunnel's last line says why it ended and that the rules are gone.
func TestEngineExitLine(t *testing.T) {
	e := startEngine(t, Config{}, &transporttest.Transport{}, echoTarget(t))
	e.cancel(errors.New("terminated signal received"))
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r := <-e.logs:
			if r.Message != "tunnel stopped; firewall rules removed" {
				continue
			}
			reason := ""
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "reason" {
					reason = a.Value.String()
				}
				return true
			})
			if reason != "terminated signal received" || r.Level != slog.LevelInfo {
				t.Errorf("exit line at %v with reason %q, want info, terminated signal received", r.Level, reason)
			}
			e.shutdown(t)
			return
		case <-timeout:
			t.Fatal("no exit line")
		}
	}
}
