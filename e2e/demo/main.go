//go:build linux

// Command demo shows k8stunnel working: it builds the e2e lab (a laptop, a node running OpenSSH and a pod, each in
// its own network namespace), starts k8stunnel in the laptop and curls a service IP through it. Everything it
// creates is removed when it ends, also on Ctrl-C. Needs root. With -cleanup it only removes what interrupted
// e2e runs left behind.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/k8stunnel/k8stunnel/e2e"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: error: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	bin := flag.String("bin", "", "k8stunnel binary to run (default: build ./cmd/k8stunnel into a temp dir)")
	cleanup := flag.Bool("cleanup", false, "only remove namespaces, processes and temp dirs left by interrupted e2e runs")
	flag.Parse()

	if *cleanup {
		removed, err := e2e.RemoveLeftovers()
		for _, r := range removed {
			fmt.Println("removed", r)
		}
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	if *bin == "" {
		dir, err := os.MkdirTemp("", "k8stunnel-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		*bin = filepath.Join(dir, "k8stunnel")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", *bin, "./cmd/k8stunnel").CombinedOutput(); err != nil {
			return fmt.Errorf("building k8stunnel: %w\n%s\nhint: run the demo from the repository root (make demo)", err, out)
		}
	}

	lab, err := e2e.New(e2e.Options{Binary: *bin, ClientLog: os.Stderr})
	if err != nil {
		return err
	}
	defer func() {
		if err := lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: cleaning up:", err)
		}
		fmt.Println("\nlab removed")
	}()
	fmt.Printf("lab up: laptop %s, node %s (sshd on %s:22), pod %s (service %s:%d)\n\n",
		lab.Laptop.Name, lab.Node.Name, e2e.NodeAddr, lab.Pod.Name, e2e.ServiceIP, e2e.ServicePort)

	// -R, the other way: a page served on the laptop's loopback, which pods reach at the node's pod-side address.
	ln, err := lab.Laptop.Listen("tcp", "127.0.0.1:8000")
	if err != nil {
		return err
	}
	laptopPage := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from the laptop's 127.0.0.1:8000")
	}), ReadHeaderTimeout: 10 * time.Second}
	go laptopPage.Serve(ln)
	defer laptopPage.Close()

	args := append([]string{"-R", "8080:127.0.0.1:8000"}, lab.ClientArgs(e2e.ServiceCIDR, e2e.PodCIDR)...)
	fmt.Printf("$ ip netns exec %s k8stunnel %s\n", lab.Laptop.Name, strings.Join(args, " "))
	client, err := lab.StartClient(args...)
	if err != nil {
		return err
	}
	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := client.WaitReady(readyCtx); err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		return err
	}

	for _, url := range []string{"http://" + e2e.ServiceIP + "/", "http://" + e2e.PodAddr + ":" + strconv.Itoa(e2e.PodHTTPPort) + "/"} {
		fmt.Printf("\n$ ip netns exec %s curl -sS %s\n", lab.Laptop.Name, url)
		out, err := lab.Laptop.Output(ctx, "curl", "-sS", "--max-time", "10", url)
		fmt.Print(out)
		if err != nil {
			return err
		}
	}

	back := "http://" + e2e.NodePodSideAddr + ":8080/"
	fmt.Printf("\n$ ip netns exec %s curl -sS %s   # from the pod, through -R\n", lab.Pod.Name, back)
	out, err := lab.Pod.Output(ctx, "curl", "-sS", "--max-time", "10", back)
	fmt.Print(out)
	if err != nil {
		return err
	}

	// UDP goes through the tunnel too: dig asks the pod's DNS server (dnsmasq, as the e2e DNS lab runs it) directly.
	dns, err := lab.StartDNS()
	if err != nil {
		return err
	}
	defer dns.Close()
	fmt.Printf("\n$ ip netns exec %s dig +short @%s %s    # UDP\n", lab.Laptop.Name, e2e.ClusterDNSPodAddr, e2e.ServiceName)
	out, err = lab.Laptop.Output(ctx, "dig", "+short", "+tries=1", "+time=5", "@"+e2e.ClusterDNSPodAddr, e2e.ServiceName)
	fmt.Print(out)
	if err != nil {
		return err
	}

	fmt.Printf("\n$ ip netns exec %s k8stunnel status\n", lab.Laptop.Name)
	out, err = lab.Laptop.Output(ctx, *bin, "status")
	fmt.Print(out)
	if err != nil {
		return err
	}

	fmt.Println("\nstopping k8stunnel with SIGTERM")
	if err := client.Stop(syscall.SIGTERM); err != nil {
		return fmt.Errorf("k8stunnel did not exit cleanly: %w", err)
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}
