//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/internal/control"
)

// statusOf runs `k8stunnel status --json` in the laptop, as root, and returns what it says about the client with pid.
func statusOf(t *testing.T, lab *Lab, pid int) control.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := lab.Laptop.Output(ctx, binary, "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var all []control.Status
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatalf("k8stunnel status --json: %v\n%s", err, out)
	}
	for _, st := range all {
		if st.PID == pid {
			return st
		}
	}
	t.Fatalf("k8stunnel status --json does not list pid %d:\n%s", pid, out)
	return control.Status{}
}

// TestStatus: `k8stunnel status` shows a tunnel's connections and its state through a reconnect, only to its own
// user, and `k8stunnel stop` ends it cleanly.
func TestStatus(t *testing.T) {
	lab := newLab(t)
	before := iptablesSave(t, lab)
	c := startClient(t, lab)
	addr := servePod(t, lab, func(conn net.Conn) { io.Copy(conn, conn) })
	const held = 40
	var conns []net.Conn
	for i := range held {
		conn := dialLaptop(t, lab, addr)
		msg := fmt.Sprintf("hello %d\n", i)
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, make([]byte, len(msg))); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		conns = append(conns, conn)
	}

	st := statusOf(t, lab, c.Pid())
	if st.State != "connected" || st.ConnectionsActive < held || st.ConnectionsTotal < held ||
		st.Remote != "root@"+NodeAddr+":22" || st.BytesSent == 0 || st.BytesReceived == 0 || st.Port == 0 {
		t.Errorf("status with %d connections held: %+v, want connected to root@%s:22, >= %d active, bytes moved",
			held, st, NodeAddr, held)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	text, err := lab.Laptop.Output(ctx, binary, "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, fmt.Sprintf("k8stunnel %d ", c.Pid())) || !strings.Contains(text, "root@"+NodeAddr+":22") ||
		!strings.Contains(text, ServiceCIDR) {
		t.Errorf("k8stunnel status does not name pid %d, the node and the CIDRs:\n%s", c.Pid(), text)
	}
	for _, conn := range conns {
		conn.Close()
	}

	// Another user neither sees the tunnel nor reaches its socket, nor stops it.
	sock := fmt.Sprintf("/run/k8stunnel/%d.sock", c.Pid())
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket %s: %v, %v; want mode 0600", sock, fi, err)
	}
	pub, removePub, err := PublicCopy(binary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(removePub)
	asNobody := func(args ...string) (string, error) {
		argv := AsUser("nobody", "nogroup", append([]string{pub}, args...)...)
		cmd := lab.Laptop.Command(ctx, argv[0], argv[1:]...)
		cmd.Env = UserEnv("nobody", "/", "/usr/bin:/bin")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := asNobody("status", "--json"); err != nil || strings.Contains(out, strconv.Itoa(c.Pid())) {
		t.Errorf("k8stunnel status as nobody: %v\n%s\nwant it to succeed without pid %d", err, out, c.Pid())
	}
	if out, err := asNobody("stop", strconv.Itoa(c.Pid())); err == nil {
		t.Errorf("k8stunnel stop %d as nobody succeeded:\n%s", c.Pid(), out)
	}

	// A forced reconnect: the helper killed while the node drops what the laptop sends, so that the state
	// stays reconnecting long enough to be seen.
	unblock, err := BlockLaptop(lab)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unblock() })
	helpers, err := lab.NodeHelperPids()
	if err != nil || len(helpers) == 0 {
		t.Fatalf("no k8stunnel helper on the node (%v)", err)
	}
	for _, pid := range helpers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	waitState := func(state string, reconnects int64) control.Status {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := statusOf(t, lab, c.Pid())
			if st.State == state && st.Reconnects == reconnects {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("status still %+v after 20s, want %s with %d reconnects", st, state, reconnects)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	down := waitState("reconnecting", 0)
	if err := unblock(); err != nil {
		t.Fatal(err)
	}
	up := waitState("connected", 1)
	if !up.Since.After(down.Since) {
		t.Errorf("connected since %v, not after reconnecting since %v", up.Since, down.Since)
	}

	// stop ends it the SIGTERM way: rules gone, a clean exit, an exit line.
	out, err := lab.Laptop.Command(ctx, binary, "stop", strconv.Itoa(c.Pid())).CombinedOutput()
	if err != nil {
		t.Fatalf("k8stunnel stop %d: %v\n%s", c.Pid(), err, out)
	}
	if after := iptablesSave(t, lab); after != before {
		t.Errorf("after k8stunnel stop the laptop's rules differ\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := c.Wait(StopTimeout); err != nil {
		t.Errorf("k8stunnel after stop: %v", err)
	}
	if !strings.Contains(c.Stderr(), `msg="tunnel stopped; firewall rules removed" reason="k8stunnel stop"`) {
		t.Errorf("no exit line naming the stop in the log")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket left after stop: %v", err)
	}
}
