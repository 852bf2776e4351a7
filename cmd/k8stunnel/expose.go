package main

import (
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/template"

	"github.com/spf13/pflag"

	"github.com/k8stunnel/k8stunnel/client"
	"github.com/k8stunnel/k8stunnel/mux"
)

const cmdManifest = "manifest"

// exposeSyntax is how -R is written, for usage errors.
const exposeSyntax = "want [BIND:]PORT:HOST:HOSTPORT as ssh -R takes it, e.g. -R 8080:127.0.0.1:8000"

// parseExposes parses every -R, and refuses one node address and port twice.
func parseExposes(specs []string) ([]client.Expose, error) {
	var xs []client.Expose
	type key struct {
		bind netip.Addr
		port uint16
	}
	seen := map[key]bool{}
	for _, s := range specs {
		x, err := parseExpose(s)
		if err != nil {
			return nil, err
		}
		k := key{x.Bind, x.Port}
		if seen[k] {
			return nil, usagef("-R %q: node port %d is exposed twice", s, x.Port)
		}
		seen[k] = true
		xs = append(xs, x)
	}
	if len(xs) > mux.MaxExposes {
		return nil, usagef("at most %d -R per tunnel", mux.MaxExposes)
	}
	return xs, nil
}

// parseExpose parses one -R: [BIND:]PORT:HOST:HOSTPORT, IPv6 addresses in
// brackets. BIND is an IP of the node; HOST is dialled here, so it may be a
// name.
func parseExpose(s string) (client.Expose, error) {
	parts, ok := splitColons(s)
	if !ok || (len(parts) != 3 && len(parts) != 4) {
		return client.Expose{}, usagef("bad -R %q: %s", s, exposeSyntax)
	}
	var x client.Expose
	if len(parts) == 4 {
		a, err := netip.ParseAddr(parts[0])
		if err != nil || a.Zone() != "" {
			return client.Expose{}, usagef("bad -R %q: the bind address %q is not an IP of the node (0.0.0.0 means all of them)", s, parts[0])
		}
		x.Bind = a.Unmap()
		parts = parts[1:]
	}
	port, err1 := parsePort(parts[0])
	hostPort, err2 := parsePort(parts[2])
	if err1 != nil || err2 != nil {
		return client.Expose{}, usagef("bad -R %q: ports are 1 to 65535; %s", s, exposeSyntax)
	}
	host := parts[1]
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.String()
	} else if !mux.ValidName(host) {
		return client.Expose{}, usagef("bad -R %q: %q is not a host name or IP; %s", s, parts[1], exposeSyntax)
	}
	x.Port, x.Host, x.HostPort = port, host, hostPort
	return x, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err == nil && n == 0 {
		err = strconv.ErrRange
	}
	return uint16(n), err
}

// splitColons splits s on the colons outside brackets, dropping the
// brackets: "[::1]:80" is "::1" and "80". It reports false for brackets
// that are unbalanced or do not make a whole field.
func splitColons(s string) ([]string, bool) {
	var parts []string
	for s != "" || len(parts) == 0 {
		if strings.HasPrefix(s, "[") {
			end := strings.Index(s, "]")
			if end < 0 {
				return nil, false
			}
			parts = append(parts, s[1:end])
			s = s[end+1:]
			if s != "" && s[0] != ':' {
				return nil, false
			}
		} else {
			end := strings.IndexByte(s, ':')
			if end < 0 {
				end = len(s)
			}
			if strings.ContainsAny(s[:end], "[]") {
				return nil, false
			}
			parts = append(parts, s[:end])
			s = s[end:]
		}
		if s == "" {
			break
		}
		s = s[1:] // the colon
		if s == "" {
			parts = append(parts, "")
		}
	}
	return parts, true
}

// manifest is what `k8stunnel manifest` prints: a Service without selector
// and an EndpointSlice naming the node address, so pods reach the laptop by
// a cluster DNS name.
type manifest struct {
	Name, Namespace string
	Address         netip.Addr
	Ports           []uint16
}

func (m manifest) AddressType() string {
	if m.Address.Is6() {
		return "IPv6"
	}
	return "IPv4"
}

func parseManifest(args []string) (invocation, error) {
	fs := pflag.NewFlagSet("k8stunnel manifest", pflag.ContinueOnError)
	specs := fs.StringArrayP("expose", "R", nil, "")
	m := manifest{}
	fs.StringVar(&m.Name, "name", "laptop", "")
	fs.StringVarP(&m.Namespace, "namespace", "n", "default", "")
	fs.SetOutput(io.Discard)
	const usage = "(usage: k8stunnel manifest -R ADDR:PORT:HOST:HOSTPORT... [--name NAME] [--namespace NS] | kubectl apply -f -)"
	if err := fs.Parse(args); err != nil {
		return invocation{}, usagef("manifest: %v %s", err, usage)
	}
	if fs.NArg() > 0 || len(*specs) == 0 {
		return invocation{}, usagef("manifest takes one -R or more and no arguments %s", usage)
	}
	if !isDNSLabel(m.Name) || !isDNSLabel(m.Namespace) || m.Name[0] < 'a' {
		return invocation{}, usagef("manifest: --name and --namespace are DNS labels: lowercase letters, digits and '-', the name starting with a letter")
	}
	xs, err := parseExposes(*specs)
	if err != nil {
		return invocation{}, err
	}
	for _, x := range xs {
		if !x.Bind.IsValid() || x.Bind.IsUnspecified() {
			return invocation{}, usagef("manifest -R %v: name the node address pods reach, as the tunnel logs it "+
				"(\"pods reach %s at ADDR:%d\"), e.g. -R 10.244.0.1:%d:%s", x, x.Target(), x.Port, x.Port, x.Target())
		}
		if m.Address.IsValid() && x.Bind != m.Address {
			return invocation{}, usagef("manifest: every -R must name the same node address (%v and %v); print one manifest per address", m.Address, x.Bind)
		}
		m.Address = x.Bind
		m.Ports = append(m.Ports, x.Port)
	}
	return invocation{cmd: cmdManifest, manifest: m}, nil
}

// isDNSLabel reports an RFC 1123 label, as Kubernetes names must be.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

var manifestTemplate = template.Must(template.New("manifest").Parse(`# Pods reach the laptop through k8stunnel -R at {{.Name}}.{{.Namespace}}.svc{{range .Ports}} :{{.}}{{end}}
apiVersion: v1
kind: Service
metadata:
  name: {{.Name}}
  namespace: {{.Namespace}}
spec:
  ports:
{{- range .Ports}}
  - name: tcp-{{.}}
    protocol: TCP
    port: {{.}}
    targetPort: {{.}}
{{- end}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {{.Name}}-k8stunnel
  namespace: {{.Namespace}}
  labels:
    kubernetes.io/service-name: {{.Name}}
    endpointslice.kubernetes.io/managed-by: k8stunnel
addressType: {{.AddressType}}
ports:
{{- range .Ports}}
- name: tcp-{{.}}
  protocol: TCP
  port: {{.}}
{{- end}}
endpoints:
- addresses:
  - "{{.Address}}"
`))

func writeManifest(w io.Writer, m manifest) error { return manifestTemplate.Execute(w, m) }
