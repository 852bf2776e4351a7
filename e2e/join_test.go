package e2e

import (
	"context"
	"regexp"
	"testing"
	"time"
)

// TestLongLinkJoins: on a 50 ms link the client opens several channels, and through a real sshd each extra
// channel's helper hands its channel to the first helper, so that one process serves the whole link.
func TestLongLinkJoins(t *testing.T) {
	lab := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Inside the lab's laptop namespace only: its egress toward the node waits 50 ms.
	if out, err := lab.Laptop.Output(ctx, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "50ms"); err != nil {
		t.Skipf("no netem to make a long link (%v): %s", err, out)
	}
	c := startClient(t, lab)
	defer stopClient(t, c)
	httpGet(t, lab, "http://"+ServiceIP+"/")
	m := regexp.MustCompile(`long link: more channels.* channels=(\d+) joined=(\d+)`).FindStringSubmatch(c.Stderr())
	if m == nil {
		t.Fatalf("no extra channels on a 50 ms link; client log:\n%s", c.Stderr())
	}
	if m[1] == "1" || m[2] != m[1] {
		t.Errorf("%s channels, %s of them served by the first helper; want more than one, all joined\n%s",
			m[1], m[2], c.Stderr())
	}
}
