//go:build linux

// Command bench measures k8stunnel side by side with direct routing, OpenSSH and sshuttle, in one run on one
// topology: the e2e lab (a laptop, a node running a real sshd, a pod, each in its own network namespace). It prints a
// table and writes results.json and results.png into -out. Needs root; everything it starts runs inside the lab's
// namespaces and all traffic stays there.
//
// What is measured, for each way of reaching the pod from the laptop:
//
//   - bulk throughput both ways: iperf3 -c in the laptop, iperf3 -s in the pod, 10 s each (-R for pod→laptop),
//     and the CPU time the tunnel's processes (client, ssh, sshd, helper; not iperf3) spent per GB moved;
//   - new connections per second and p50/p99 latency: 16 clients doing connect, 32-byte echo, close;
//   - request/response: 64 bytes each way on 1 and on 50 warm connections, round trips per second, p50/p99;
//   - connections held open and still echoing, stepped up to 10 000, and the client's RSS per held connection;
//   - bulk throughput with 50 ms RTT on the path to the node: a userspace delay relay in front of sshd;
//   - UDP (direct and k8stunnel only): echo round trip p50/p99, and iperf3 -u loss at 50 and 200 Mbit/s.
//
// These two short sections run -rounds times (3 by default), every mode once per round, and each figure is the median
// of its rounds: on a small, shared machine one run of a few seconds can be 10-20 % off, and a ratio of two such
// runs made minutes apart more so.
//
// The ways: direct (a route via the node: no tunnel, no crypto, the ceiling), openssh (`ssh -N -L` port forwards:
// one SSH channel per connection, OpenSSH's own crypto and windows), sshuttle (the Debian package, nat method, same
// CIDRs) and k8stunnel. OpenSSH and sshuttle's ssh use the cipher k8stunnel prefers (aes128-gcm), so the comparison
// is between implementations, not ciphers.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/e2e"
)

func main() {
	if len(os.Args) > 1 {
		if tool, ok := tools[os.Args[1]]; ok {
			if err := tool(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "bench %s: error: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: error: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	bin      string
	out      string
	bulk     time.Duration
	rate     time.Duration
	steps    string
	parallel int
	rounds   int
	strace   bool
	only     map[string]bool
	modes    map[string]bool
}

func (c config) section(name string) bool { return len(c.only) == 0 || c.only[name] }
func (c config) mode(name string) bool    { return len(c.modes) == 0 || c.modes[name] }

func run() error {
	var cfg config
	var only, modes string
	flag.StringVar(&cfg.bin, "bin", "", "k8stunnel binary (default: build ./cmd/k8stunnel)")
	flag.StringVar(&cfg.out, "out", "bench-out", "directory for results.json and results.png")
	flag.DurationVar(&cfg.bulk, "bulk", 10*time.Second, "length of each iperf3 run")
	flag.DurationVar(&cfg.rate, "rate", 4*time.Second, "length of each connection-rate run")
	flag.StringVar(&cfg.steps, "steps", "1000,2000,5000,10000", "held-connection steps")
	flag.IntVar(&cfg.parallel, "parallel", 4, "iperf3 -P for the parallel 50 ms RTT run (k8stunnel with default flags)")
	flag.IntVar(&cfg.rounds, "rounds", 3, "run the short sections (rate, rr) this many times, the modes taking turns, and report medians")
	flag.BoolVar(&cfg.strace, "strace", false, "also count each tunnel's system calls per request/response round trip (strace -c)")
	flag.StringVar(&only, "only", "", "run only these sections: bulk,rate,rr,hold,rtt,udp (default all)")
	flag.StringVar(&modes, "modes", "", "run only these modes: direct,openssh,sshuttle,k8stunnel (default all)")
	flag.Parse()
	cfg.only = set(only)
	cfg.modes = set(modes)
	cfg.rounds = max(cfg.rounds, 1)

	if err := checkTools(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if cfg.bin == "" {
		dir, err := os.MkdirTemp("", "k8stunnel-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.bin = filepath.Join(dir, "k8stunnel")
		fmt.Fprintln(os.Stderr, "bench: building k8stunnel")
		if out, err := exec.Command("go", "build", "-o", cfg.bin, "./cmd/k8stunnel").CombinedOutput(); err != nil {
			return fmt.Errorf("building k8stunnel: %w\n%s\nhint: run from the repository root (make bench)", err, out)
		}
	}
	if removed, _ := e2e.RemoveLeftovers(); len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "bench: removed leftovers of interrupted runs: %v\n", removed)
	}

	lab, err := e2e.New(e2e.Options{Binary: cfg.bin})
	if err != nil {
		return err
	}
	// On Ctrl-C the lab goes, with everything running in it; the deferred Close covers every other way out.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "\nbench: interrupted, removing the lab")
		lab.Close()
		os.Exit(1)
	}()
	defer lab.Close()

	b := &bench{cfg: cfg, lab: lab, self: self, res: newResults(cfg)}
	if err := b.prepare(); err != nil {
		return err
	}
	start := time.Now()
	b.runAll()
	b.res.Seconds = time.Since(start).Seconds()

	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	fmt.Println()
	b.res.printTable(os.Stdout)
	if err := b.res.writeJSON(filepath.Join(cfg.out, "results.json")); err != nil {
		return err
	}
	if err := b.res.writePNG(filepath.Join(cfg.out, "results.json"), filepath.Join(cfg.out, "results.png")); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s and %s (%.0f s)\n", filepath.Join(cfg.out, "results.json"), filepath.Join(cfg.out, "results.png"), b.res.Seconds)
	return nil
}

func set(csv string) map[string]bool {
	m := map[string]bool{}
	for _, s := range strings.Split(csv, ",") {
		if s = strings.TrimSpace(s); s != "" {
			m[s] = true
		}
	}
	return m
}

func checkTools() error {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark needs root for its network namespaces (run: sudo make bench)")
	}
	for _, tool := range []string{"iperf3", "sshuttle", "ssh", python} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w\nhint: install the benchmark's tools with: sudo scripts/bench-deps.sh", err)
		}
	}
	if err := exec.Command(python, "-c", "import matplotlib").Run(); err != nil {
		return fmt.Errorf("%s cannot import matplotlib: %w\nhint: install the benchmark's tools with: sudo scripts/bench-deps.sh", python, err)
	}
	return nil
}

// python is Debian's interpreter, where python3-matplotlib installs; a python3 earlier on PATH (pyenv) lacks it.
const python = "/usr/bin/python3"

// loadAvg is the 1-minute load average, recorded with each section: other work on the machine skews figures.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}
