//go:build linux

package e2e

import (
	"regexp"
	"strings"
	"testing"
)

// TestStripedChannels: with three channels, through a real sshd, the two extra channels' helpers hand their channels
// to the first helper, so one process serves all three, and every redirected connection is striped over them: the
// whole data path (bulk both ways with digests, half-close, parallel echoes) still holds.
func TestStripedChannels(t *testing.T) {
	lab := newLab(t)
	c := startClientArgs(t, lab, append([]string{"-v", "--channels", "3"}, lab.ClientArgs(ServiceCIDR, PodCIDR)...)...)
	defer stopClient(t, c)
	if m := regexp.MustCompile(`channels up.* channels=(\d+) joined=(\d+)`).FindStringSubmatch(c.Stderr()); m == nil ||
		m[1] != "3" || m[2] != "3" {
		t.Fatalf("want 3 channels, all served by the first helper; client log:\n%s", c.Stderr())
	}
	dataPathTests(t, lab)
	striped := strings.Count(c.Stderr(), " parts=3")
	if striped < 3 {
		t.Errorf("%d connections striped over the 3 channels, want every one; client log:\n%s", striped, c.Stderr())
	}
}
