//go:build linux

package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/k8stunnel/k8stunnel/mux"
)

const kubeadmAPIServer = `apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=192.168.33.10
    - --secure-port=6443
    - --service-cluster-ip-range=10.96.0.0/12
    image: registry.k8s.io/kube-apiserver:v1.31.0
`

const kubeadmControllerManager = `spec:
  containers:
  - command:
    - kube-controller-manager
    - --allocate-node-cidrs=true
    - --cluster-cidr=10.244.0.0/16
    - --service-cluster-ip-range=10.96.0.0/12
`

const kubeadmKubelet = `apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
resolvConf: /run/systemd/resolve/resolv.conf
rotateCertificates: true
`

const flannelSubnetEnv = `FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
`

// procRoute is /proc/net/route of a flannel node with a Calico-style /32 and
// the uplink's routes mixed in.
const procRoute = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
	"eth0\t00000000\t0121A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n" +
	"eth0\t0021A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n" +
	"cni0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
	"flannel.1\t0002F40A\t0002F40A\t0043\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
	"cali1234\t0501F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n"

func TestDiscover(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  mux.Facts
	}{
		{
			name: "kubeadm with flannel",
			files: map[string]string{
				apiserverManifest:                     kubeadmAPIServer,
				controllerManifest:                    kubeadmControllerManager,
				kubeletConfig:                         kubeadmKubelet,
				flannelEnv:                            flannelSubnetEnv,
				procRoutes:                            procRoute,
				"/run/systemd/resolve/resolv.conf":    "nameserver 192.168.33.1\nnameserver fe80::1%eth0\n",
				resolvConf:                            "nameserver 127.0.0.53\noptions edns0\n",
				"/etc/kubernetes/manifests/etcd.yaml": "- --listen-client-urls=https://127.0.0.1:2379\n",
			},
			want: mux.Facts{
				PodCIDRs:      []string{"10.244.0.0/16"},
				ServiceCIDRs:  []string{"10.96.0.0/12"},
				DNS:           []string{"10.96.0.10"},
				ClusterDomain: "cluster.local",
				NodeDNS:       []string{"192.168.33.1"},
				Sources: []string{
					"service CIDR 10.96.0.0/12 from /etc/kubernetes/manifests/kube-apiserver.yaml",
					"pod CIDR 10.244.0.0/16 from /etc/kubernetes/manifests/kube-controller-manager.yaml",
					"cluster DNS 10.96.0.10 from /var/lib/kubelet/config.yaml",
					"cluster domain cluster.local from /var/lib/kubelet/config.yaml",
					"node resolver 192.168.33.1 from /run/systemd/resolve/resolv.conf",
				},
			},
		},
		{
			name: "k3s",
			files: map[string]string{
				k3sConfig: "write-kubeconfig-mode: \"0644\"\ncluster-cidr: \"10.42.0.0/16,fd42::/56\"\n" +
					"service-cidr: 10.43.0.0/16 # the default\ncluster-domain: k3s.local.\n",
				k3sKubeletConfig: "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n" +
					"clusterDNS: [\"10.43.0.10\"]\nclusterDomain: \"cluster.local\"\n",
				flannelEnv: "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_IPV6_NETWORK=fd42::/56\n",
				resolvConf: "nameserver 10.0.2.3\n",
			},
			want: mux.Facts{
				PodCIDRs:      []string{"10.42.0.0/16", "fd42::/56"},
				ServiceCIDRs:  []string{"10.43.0.0/16"},
				DNS:           []string{"10.43.0.10"},
				ClusterDomain: "k3s.local",
				NodeDNS:       []string{"10.0.2.3"},
				Sources: []string{
					"pod CIDR 10.42.0.0/16 from /etc/rancher/k3s/config.yaml",
					"pod CIDR fd42::/56 from /etc/rancher/k3s/config.yaml",
					"service CIDR 10.43.0.0/16 from /etc/rancher/k3s/config.yaml",
					"cluster domain k3s.local from /etc/rancher/k3s/config.yaml",
					"cluster DNS 10.43.0.10 from /var/lib/rancher/k3s/agent/etc/kubelet.conf.d/00-k3s-defaults.conf",
					"node resolver 10.0.2.3 from /etc/resolv.conf",
				},
			},
		},
		{
			name: "kube-proxy configmap and dual-stack flags",
			files: map[string]string{
				apiserverManifest: "    - \"--service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/112\"\n",
				"/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~configmap/kube-proxy/config.conf": "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n" +
					"bindAddress: 0.0.0.0\nclusterCIDR: 192.168.0.0/16\nmode: iptables\n",
				"/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~configmap/other/config.conf": "clusterCIDR: 172.16.0.0/12\n",
			},
			want: mux.Facts{
				PodCIDRs:     []string{"192.168.0.0/16"},
				ServiceCIDRs: []string{"10.96.0.0/12", "fd00:10:96::/112"},
				Sources: []string{
					"service CIDR 10.96.0.0/12 from /etc/kubernetes/manifests/kube-apiserver.yaml",
					"service CIDR fd00:10:96::/112 from /etc/kubernetes/manifests/kube-apiserver.yaml",
					"pod CIDR 192.168.0.0/16 from /var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~configmap/kube-proxy/config.conf",
				},
			},
		},
		{
			name:  "only routes",
			files: map[string]string{procRoutes: procRoute},
			want: mux.Facts{
				PodCIDRs: []string{"10.244.1.0/24", "10.244.2.0/24"},
				Sources: []string{
					"pod subnet 10.244.1.0/24 from the node's routes (dev cni0)",
					"pod subnet 10.244.2.0/24 from the node's routes (dev flannel.1)",
				},
			},
		},
		{
			name: "garbage is skipped",
			files: map[string]string{
				apiserverManifest: "- --service-cluster-ip-range=\n- --service-cluster-ip-range=ten.96/12\n",
				kubeletConfig:     "clusterDNS:\n- not-an-ip\nclusterDomain: \"has space\"\n",
				procRoutes:        "Iface\tDestination\ncni0\tzz\n",
			},
		},
		{
			name: "a scalar for a list, bad domains and route fields",
			files: map[string]string{
				kubeletConfig:    "clusterDNS: 10.96.0.10 # one\nclusterDomain: cluster..local\n",
				k3sKubeletConfig: "clusterDomain: " + strings.Repeat("a", 64) + ".local\n",
				procRoutes:       "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\ncni0\tzz\t0\t1\t0\t0\t0\t00FFFFFF\ncni0\t0001F40A\t0\t1\t0\t0\t0\tmask\n",
			},
			want: mux.Facts{
				DNS:     []string{"10.96.0.10"},
				Sources: []string{"cluster DNS 10.96.0.10 from " + kubeletConfig},
			},
		},
		{name: "nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			got := Discover(root)
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("Discover:\n got %s\nwant %s", jsonOf(*got), jsonOf(tt.want))
			}
		})
	}
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for path, text := range files {
		full := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func jsonOf(f mux.Facts) string {
	b, _ := json.MarshalIndent(f, "", "  ")
	return string(b)
}

// discoverChildEnv names the fake tree the re-executed test binary mounts.
const discoverChildEnv = "K8STUNNEL_DISCOVER_FAKE_ROOT"

// TestDiscoverOnNode runs Discover("/") as the helper does, on a node whose
// files are a fake tree: the test binary re-executes itself in a new mount
// namespace (private, so nothing propagates back) and a new network
// namespace (so the routes are the fake's too), bind-mounts the fake /etc,
// /var/lib and /run over the real ones there, and prints what it found. The
// machine's own files are never touched.
func TestDiscoverOnNode(t *testing.T) {
	if fake := os.Getenv(discoverChildEnv); fake != "" {
		discoverChild(t, fake)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private mount namespace (run as root to include it)")
	}
	fake := t.TempDir()
	writeTree(t, fake, map[string]string{
		apiserverManifest:  kubeadmAPIServer,
		controllerManifest: kubeadmControllerManager,
		kubeletConfig:      strings.Replace(kubeadmKubelet, "resolvConf: /run/systemd/resolve/resolv.conf\n", "", 1),
		flannelEnv:         flannelSubnetEnv,
		resolvConf:         "nameserver 10.0.2.3\n",
	})
	cmd := exec.Command(os.Args[0], "-test.run=^TestDiscoverOnNode$", "-test.v")
	cmd.Env = append(os.Environ(), discoverChildEnv+"="+fake)
	// Go makes the new mount namespace's mounts private before exec.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in a private mount namespace: %v\n%s", err, out)
	}
	var got *mux.Facts
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if j, ok := strings.CutPrefix(sc.Text(), "FACTS "); ok {
			if err := json.Unmarshal([]byte(j), &got); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got == nil {
		t.Fatalf("the child printed no facts:\n%s", out)
	}
	want := mux.Facts{
		PodCIDRs:      []string{"10.244.0.0/16"},
		ServiceCIDRs:  []string{"10.96.0.0/12"},
		DNS:           []string{"10.96.0.10"},
		ClusterDomain: "cluster.local",
		NodeDNS:       []string{"10.0.2.3"},
		Sources: []string{
			"service CIDR 10.96.0.0/12 from /etc/kubernetes/manifests/kube-apiserver.yaml",
			"pod CIDR 10.244.0.0/16 from /etc/kubernetes/manifests/kube-controller-manager.yaml",
			"cluster DNS 10.96.0.10 from /var/lib/kubelet/config.yaml",
			"cluster domain cluster.local from /var/lib/kubelet/config.yaml",
			"node resolver 10.0.2.3 from /etc/resolv.conf",
		},
	}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("Discover(\"/\") on the fake node:\n got %s\nwant %s", jsonOf(*got), jsonOf(want))
	}
}

// discoverChild runs inside the private mount namespace.
func discoverChild(t *testing.T, fake string) {
	for _, dir := range []string{"/etc", "/var/lib", "/run"} {
		src := filepath.Join(fake, dir)
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(src, dir, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind-mounting the fake %s: %v", dir, err)
		}
	}
	b, err := json.Marshal(Discover("/"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("FACTS %s\n", b)
}

// FuzzDiscover feeds the same bytes to every file Discover reads: whatever a
// node holds, Discover must not panic, and what it reports must parse.
func FuzzDiscover(f *testing.F) {
	for _, seed := range []string{kubeadmAPIServer, kubeadmKubelet, flannelSubnetEnv, procRoute,
		"clusterDNS: [10.0.0.1,\nclusterDNS:\n-\n- [\n", "- --cluster-cidr=\"\n"} {
		f.Add(seed)
	}
	paths := []string{apiserverManifest, controllerManifest, kubeletConfig, k3sKubeletConfig, k3sConfig,
		flannelEnv, kubeProxyConfig, procRoutes, resolvConf}
	f.Fuzz(func(t *testing.T, text string) {
		root := t.TempDir()
		files := make(map[string]string)
		for _, p := range paths {
			files[p] = text
		}
		writeTree(t, root, files)
		facts := Discover(root)
		for _, s := range slices.Concat(facts.PodCIDRs, facts.ServiceCIDRs) {
			if _, err := netip.ParsePrefix(s); err != nil {
				t.Errorf("reported CIDR %q does not parse: %v", s, err)
			}
		}
		for _, s := range slices.Concat(facts.DNS, facts.NodeDNS) {
			if _, err := netip.ParseAddr(s); err != nil {
				t.Errorf("reported address %q does not parse: %v", s, err)
			}
		}
		if d := facts.ClusterDomain; d != "" && !hostnameLike(d) {
			t.Errorf("reported cluster domain %q", d)
		}
	})
}
