package main

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/k8stunnel/k8stunnel/client"
)

func TestParseExpose(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		in   string
		want client.Expose
	}{
		{"8080:127.0.0.1:8000", client.Expose{Port: 8080, Host: "127.0.0.1", HostPort: 8000}},
		{"8080:localhost:8000", client.Expose{Port: 8080, Host: "localhost", HostPort: 8000}},
		{"10.244.0.1:8080:127.0.0.1:8000", client.Expose{Bind: a("10.244.0.1"), Port: 8080, Host: "127.0.0.1", HostPort: 8000}},
		{"0.0.0.0:80:web.lan:80", client.Expose{Bind: a("0.0.0.0"), Port: 80, Host: "web.lan", HostPort: 80}},
		{"[fd00::1]:8080:[::1]:8000", client.Expose{Bind: a("fd00::1"), Port: 8080, Host: "::1", HostPort: 8000}},
		{"8080:[::1]:8000", client.Expose{Port: 8080, Host: "::1", HostPort: 8000}},
	} {
		got, err := parseExpose(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseExpose(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if s := got.String(); s != tc.in {
			t.Errorf("%+v prints as %q, want %q", got, s, tc.in)
		}
	}
	for _, in := range []string{
		"", "8080", "8080:8000", "8080:host", "0:127.0.0.1:8000", "8080:127.0.0.1:0", "70000:127.0.0.1:80",
		"node1:8080:127.0.0.1:8000", "fd00::1:8080:127.0.0.1:8000", "[fd00::1:8080:127.0.0.1:8000",
		"[fd00::1]x:8080:127.0.0.1:8000", "8080:bad host:80", "8080::80", "a:b:c:d:e", "8080:127.0.0.1:80:",
		"[fe80::1%eth0]:8080:127.0.0.1:80",
	} {
		if x, err := parseExpose(in); !errors.As(err, new(usageError)) {
			t.Errorf("parseExpose(%q) = %+v, %v; want a usage error", in, x, err)
		}
	}
}

func TestParseTunnelExpose(t *testing.T) {
	inv, err := parse([]string{"-r", "node1", "-R", "8080:127.0.0.1:8000", "--expose", "10.244.0.1:9090:localhost:9000",
		"-R", "8081:127.0.0.1:1", "10.244.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	want := []client.Expose{
		{Port: 8080, Host: "127.0.0.1", HostPort: 8000},
		{Bind: netip.MustParseAddr("10.244.0.1"), Port: 9090, Host: "localhost", HostPort: 9000},
		{Port: 8081, Host: "127.0.0.1", HostPort: 1},
	}
	if !reflect.DeepEqual(inv.cfg.Expose, want) {
		t.Errorf("Expose = %+v, want %+v", inv.cfg.Expose, want)
	}
	for _, args := range [][]string{
		{"-r", "node1", "-R", "8080", "10.244.0.0/16"},
		{"-r", "node1", "-R", "8080:127.0.0.1:80", "-R", "8080:127.0.0.1:81", "10.244.0.0/16"},
	} {
		var stderr bytes.Buffer
		if code := run(t.Context(), args, new(bytes.Buffer), &stderr); code != 2 || !strings.Contains(stderr.String(), "-R") {
			t.Errorf("run(%q) = %d, %q; want exit 2 naming -R", args, code, stderr.String())
		}
	}
}

func TestManifest(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"manifest", "-R", "10.244.1.1:8080:127.0.0.1:8000", "-R", "10.244.1.1:9090:localhost:9000", "--name", "vm", "-n", "mesh"}
	if code := run(t.Context(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("run(%q) = %d, %s", args, code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"kind: Service\nmetadata:\n  name: vm\n  namespace: mesh\nspec:\n  ports:\n  - name: tcp-8080\n    protocol: TCP\n    port: 8080\n    targetPort: 8080\n  - name: tcp-9090\n",
		"kind: EndpointSlice\n", "    kubernetes.io/service-name: vm\n", "addressType: IPv4\n",
		"ports:\n- name: tcp-8080\n  protocol: TCP\n  port: 8080\n- name: tcp-9090\n",
		"endpoints:\n- addresses:\n  - \"10.244.1.1\"\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("manifest lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "selector") {
		t.Errorf("the Service has a selector:\n%s", out)
	}
	for _, bad := range [][]string{
		{"manifest"},
		{"manifest", "-R", "8080:127.0.0.1:8000"}, // no node address
		{"manifest", "-R", "0.0.0.0:8080:127.0.0.1:8000"},
		{"manifest", "-R", "10.0.0.1:80:127.0.0.1:80", "-R", "10.0.0.2:81:127.0.0.1:81"},
		{"manifest", "-R", "10.0.0.1:80:127.0.0.1:80", "--name", "Bad_Name"},
		{"manifest", "-R", "10.0.0.1:80:127.0.0.1:80", "extra"},
	} {
		if _, err := parse(bad); !errors.As(err, new(usageError)) {
			t.Errorf("parse(%q) = %v, want a usage error", bad, err)
		}
	}
}
