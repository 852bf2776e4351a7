package server

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/k8stunnel/k8stunnel/mux"
)

// Where a node keeps what Discover looks for. kubeadm and k3s lay their files
// out differently; both are covered. Paths are absolute on the node and read
// under Discover's root.
const (
	apiserverManifest  = "/etc/kubernetes/manifests/kube-apiserver.yaml"
	controllerManifest = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
	kubeletConfig      = "/var/lib/kubelet/config.yaml"
	k3sKubeletConfig   = "/var/lib/rancher/k3s/agent/etc/kubelet.conf.d/00-k3s-defaults.conf"
	k3sConfig          = "/etc/rancher/k3s/config.yaml"
	flannelEnv         = "/run/flannel/subnet.env"
	kubeProxyConfig    = "/var/lib/kube-proxy/config.conf"
	// kube-proxy usually runs as a pod: its config is a ConfigMap that the
	// kubelet writes below the pod's directory.
	kubeProxyConfigMaps = "/var/lib/kubelet/pods/*/volumes/kubernetes.io~configmap/kube-proxy/config.conf"
	procRoutes          = "/proc/net/route"
	resolvConf          = "/etc/resolv.conf"
)

// cniInterfaces start the names of the interfaces CNI plugins route pod
// subnets over: bridges (cni0, cbr0, kube-bridge), overlays (flannel.1,
// vxlan.calico, tunl0, weave) and per-pod or per-node links (cali*, cilium_*).
var cniInterfaces = []string{"cni0", "cbr0", "kube-bridge", "flannel", "vxlan.calico", "tunl0", "cali", "cilium_", "weave"}

// Discover looks on the node for what a user would otherwise look up by hand:
// the pod and service CIDRs, the cluster DNS IP and domain, and the node's
// own resolvers. Each fact found gets a line in Sources saying where it came
// from. Files that are missing or unreadable are skipped; Discover never
// fails, it finds less.
//
// root is "/" on a node; tests point it at a fake tree.
func Discover(root string) *mux.Facts {
	d := &discovery{root: root}

	for _, v := range d.flagValues(apiserverManifest, "--service-cluster-ip-range") {
		d.addCIDRs(&d.facts.ServiceCIDRs, "service CIDR", v, apiserverManifest)
	}
	for _, v := range d.flagValues(controllerManifest, "--cluster-cidr") {
		d.addCIDRs(&d.facts.PodCIDRs, "pod CIDR", v, controllerManifest)
	}
	for _, v := range d.flagValues(controllerManifest, "--service-cluster-ip-range") {
		d.addCIDRs(&d.facts.ServiceCIDRs, "service CIDR", v, controllerManifest)
	}

	// k3s takes its flags from a config file with the same names.
	k3s := d.yaml(k3sConfig)
	d.addCIDRs(&d.facts.PodCIDRs, "pod CIDR", k3s.scalar("cluster-cidr"), k3sConfig)
	d.addCIDRs(&d.facts.ServiceCIDRs, "service CIDR", k3s.scalar("service-cidr"), k3sConfig)
	d.addDNS(k3s.scalar("cluster-dns"), k3sConfig)
	d.setDomain(k3s.scalar("cluster-domain"), k3sConfig)

	var kubeletResolv string
	for _, path := range []string{kubeletConfig, k3sKubeletConfig} {
		y := d.yaml(path)
		for _, ip := range y.list("clusterDNS") {
			d.addDNS(ip, path)
		}
		d.setDomain(y.scalar("clusterDomain"), path)
		if kubeletResolv == "" {
			kubeletResolv = y.scalar("resolvConf")
		}
	}

	env := d.envFile(flannelEnv)
	d.addCIDRs(&d.facts.PodCIDRs, "pod CIDR", env["FLANNEL_NETWORK"], flannelEnv)
	d.addCIDRs(&d.facts.PodCIDRs, "pod CIDR", env["FLANNEL_IPV6_NETWORK"], flannelEnv)

	proxyConfigs := []string{kubeProxyConfig}
	if matches, err := filepath.Glob(filepath.Join(root, kubeProxyConfigMaps)); err == nil {
		for _, m := range matches {
			if rel, err := filepath.Rel(root, m); err == nil {
				proxyConfigs = append(proxyConfigs, "/"+rel)
			}
		}
	}
	for _, path := range proxyConfigs {
		// kube-proxy's clusterCIDR is the pod CIDR: traffic from it is not masqueraded.
		d.addCIDRs(&d.facts.PodCIDRs, "pod CIDR", d.yaml(path).scalar("clusterCIDR"), path)
	}

	// The routes give only this node's and its peers' pod subnets, not the
	// whole range: a last resort.
	if len(d.facts.PodCIDRs) == 0 {
		d.routes()
	}

	// The kubelet may point pods at another resolv.conf than the node's own
	// (systemd-resolved's upstream list instead of its 127.0.0.53 stub).
	for _, path := range []string{kubeletResolv, resolvConf} {
		if path != "" && d.nodeResolvers(path) {
			break
		}
	}
	return &d.facts
}

type discovery struct {
	root  string
	facts mux.Facts
}

func (d *discovery) read(path string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(d.root, path))
	if err != nil {
		return "", false
	}
	return string(b), true
}

func (d *discovery) lines(path string) []string {
	text, ok := d.read(path)
	if !ok {
		return nil
	}
	return strings.Split(text, "\n")
}

// addCIDRs records each CIDR of a comma-separated list (dual-stack clusters
// give one per family).
func (d *discovery) addCIDRs(list *[]string, what, value, source string) {
	for _, v := range strings.Split(value, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(v))
		if err != nil {
			continue
		}
		s := p.Masked().String()
		if !slices.Contains(*list, s) {
			*list = append(*list, s)
			d.facts.Sources = append(d.facts.Sources, fmt.Sprintf("%s %s from %s", what, s, source))
		}
	}
}

func (d *discovery) addDNS(value, source string) {
	a, err := netip.ParseAddr(strings.TrimSpace(value))
	if err != nil {
		return
	}
	s := a.Unmap().String()
	if !slices.Contains(d.facts.DNS, s) {
		d.facts.DNS = append(d.facts.DNS, s)
		d.facts.Sources = append(d.facts.Sources, fmt.Sprintf("cluster DNS %s from %s", s, source))
	}
}

func (d *discovery) setDomain(value, source string) {
	name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(value)), ".")
	if d.facts.ClusterDomain != "" || name == "" {
		return
	}
	if !hostnameLike(name) {
		return
	}
	d.facts.ClusterDomain = name
	d.facts.Sources = append(d.facts.Sources, fmt.Sprintf("cluster domain %s from %s", name, source))
}

// hostnameLike reports whether name is dot-separated labels of letters,
// digits and hyphens, which is what a cluster domain looks like (miekg/dns's
// IsDomainName accepts nearly any bytes).
func hostnameLike(name string) bool {
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// flagValues finds a flag in a static pod manifest, whose command line is a
// YAML list with one argument per line: `    - --flag=value`.
func (d *discovery) flagValues(path, flag string) []string {
	var values []string
	for _, line := range d.lines(path) {
		arg := unquote(strings.TrimPrefix(strings.TrimSpace(line), "- "))
		if v, ok := strings.CutPrefix(arg, flag+"="); ok {
			values = append(values, unquote(v))
		}
	}
	return values
}

// yamlFile is just enough YAML for the flat config files Discover reads
// (kubelet's, kube-proxy's, k3s'): top-level `key: value` scalars and
// `key:` lists, either `- item` lines or `[a, b]`. It avoids a YAML library
// for a few keys.
type yamlFile []string

func (d *discovery) yaml(path string) yamlFile { return yamlFile(d.lines(path)) }

// scalar returns the value of a top-level `key: value` line, unquoted.
func (y yamlFile) scalar(key string) string {
	for _, line := range y {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return unquote(stripComment(v))
		}
	}
	return ""
}

// list returns the items of a top-level list.
func (y yamlFile) list(key string) []string {
	for i, line := range y {
		v, ok := strings.CutPrefix(line, key+":")
		if !ok {
			continue
		}
		v = stripComment(v)
		if inline, ok := strings.CutPrefix(v, "["); ok {
			var items []string
			for _, item := range strings.Split(strings.TrimSuffix(inline, "]"), ",") {
				if item = unquote(item); item != "" {
					items = append(items, item)
				}
			}
			return items
		}
		if v != "" {
			return []string{unquote(v)} // a scalar where a list was expected
		}
		var items []string
		for _, next := range y[i+1:] {
			item, ok := strings.CutPrefix(strings.TrimSpace(next), "-")
			if !ok {
				break
			}
			items = append(items, unquote(stripComment(item)))
		}
		return items
	}
	return nil
}

func stripComment(s string) string {
	if i := strings.Index(s, " #"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// envFile reads KEY=VALUE lines, as flannel writes them.
func (d *discovery) envFile(path string) map[string]string {
	env := make(map[string]string)
	for _, line := range d.lines(path) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			env[k] = unquote(v)
		}
	}
	return env
}

// routes records the IPv4 subnets routed over CNI interfaces, from the
// kernel's table (columns: Iface Destination Gateway Flags RefCnt Use Metric
// Mask ..., addresses in hex, in the host's byte order). Host routes (/32,
// one per pod with Calico) are left out: they would be a list of pods.
func (d *discovery) routes() {
	lines := d.lines(procRoutes)
	for _, line := range lines[min(1, len(lines)):] {
		f := strings.Fields(line)
		if len(f) < 8 || !isCNIInterface(f[0]) {
			continue
		}
		dst, err1 := hexIPv4(f[1])
		mask, err2 := hexIPv4(f[7])
		if err1 != nil || err2 != nil {
			continue
		}
		bits := 0
		for _, b := range mask.As4() {
			bits += popcount(b)
		}
		if bits == 0 || bits == 32 {
			continue
		}
		p := netip.PrefixFrom(dst, bits).Masked()
		d.addCIDRs(&d.facts.PodCIDRs, "pod subnet", p.String(), "the node's routes (dev "+f[0]+")")
	}
}

func isCNIInterface(name string) bool {
	for _, p := range cniInterfaces {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// hexIPv4 decodes an address as /proc/net/route prints it: the 32-bit
// value in the host's byte order, which is little-endian on every
// architecture k8stunnel is built for.
func hexIPv4(s string) (netip.Addr, error) {
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return netip.Addr{}, err
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(v))
	return netip.AddrFrom4(b), nil
}

func popcount(b byte) int {
	n := 0
	for ; b != 0; b &= b - 1 {
		n++
	}
	return n
}

// nodeResolvers records the nameservers of a resolv.conf; false when the file
// has none.
func (d *discovery) nodeResolvers(path string) bool {
	cc, err := dns.ClientConfigFromFile(filepath.Join(d.root, path))
	if err != nil {
		return false
	}
	found := false
	for _, s := range cc.Servers {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			continue // a link-local resolver cannot be named across the tunnel
		}
		found = true
		s := a.Unmap().String()
		if !slices.Contains(d.facts.NodeDNS, s) {
			d.facts.NodeDNS = append(d.facts.NodeDNS, s)
			d.facts.Sources = append(d.facts.Sources, fmt.Sprintf("node resolver %s from %s", s, path))
		}
	}
	return found
}
