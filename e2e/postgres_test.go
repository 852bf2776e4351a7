//go:build linux

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgBin finds a binary of Debian's postgresql package, which keeps the
// server's programs out of PATH.
func pgBin(t *testing.T, name string) string {
	t.Helper()
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(found) == 0 {
		t.Fatalf("%s not found under /usr/lib/postgresql (hint: run scripts/deps.sh, which installs postgresql)", name)
	}
	return found[len(found)-1]
}

// startPostgres runs a throwaway PostgreSQL server in the pod namespace on
// PodAddr:5432, as the postgres user, and stops it when the test ends.
func startPostgres(t *testing.T, lab *Lab) {
	t.Helper()
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("no postgres user: %v (hint: run scripts/deps.sh, which installs postgresql)", err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-pg-", namePrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	asPostgres := []string{"setpriv", "--reuid", pg.Uid, "--regid", pg.Gid, "--clear-groups", "--"}
	initdb := exec.Command(asPostgres[0], append(asPostgres[1:], pgBin(t, "initdb"), "-D", data, "-U", "postgres",
		"-A", "trust", "--no-sync")...)
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	hba, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(hba, "host all all 0.0.0.0/0 trust")
	hba.Close()

	cmd := lab.Pod.Command(context.Background(), asPostgres[0], append(asPostgres[1:], pgBin(t, "postgres"),
		"-D", data, "-k", dir, "-p", "5432", "-c", "listen_addresses="+PodAddr,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting postgres: %v", err)
	}
	exited := make(chan struct{})
	ready := make(chan struct{})
	var log syncBuffer
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.Write([]byte(sc.Text() + "\n"))
			if strings.Contains(sc.Text(), "ready to accept connections") {
				close(ready)
			}
		}
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT) // immediate shutdown: the data is thrown away
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("postgres log:\n%s", log.String())
		}
	})
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("postgres exited: %s", log.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("postgres not ready after 30s: %s", log.String())
	}
}

var tpsLine = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)

// pgbench runs pgbench in ns against the pod's server and returns its TPS.
// A hung transaction fails it: the run must end within the timeout.
func pgbench(t *testing.T, ns *Netns, args ...string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := []string{"-h", PodAddr, "-p", "5432", "-U", "postgres"}
	out, err := ns.Output(ctx, pgBin(t, "pgbench"), append(append(base, args...), "postgres")...)
	if ctx.Err() != nil {
		t.Fatalf("pgbench %v from %s did not finish within 60s: transactions hang\n%s", args, ns.Name, out)
	}
	if err != nil {
		t.Fatalf("pgbench %v from %s: %v\n%s", args, ns.Name, err, out)
	}
	m := tpsLine.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	tps, _ := strconv.ParseFloat(m[1], 64)
	return tps
}

// TestPostgres runs PostgreSQL's own benchmark client, TPC-B transactions
// in the simple query protocol, through the tunnel: its 12-byte "BEGIN;"
// message once stalled the frame batcher. The same run from the node, with
// no tunnel, gives the figure to compare with.
func TestPostgres(t *testing.T) {
	lab := newLab(t)
	startPostgres(t, lab)
	client := startQuietClient(t, lab)
	defer stopClient(t, client)

	pgbench(t, lab.Laptop, "-i", "-s", "1", "-q")
	tunnel := pgbench(t, lab.Laptop, "-c", "4", "-j", "2", "-T", "4")
	direct := pgbench(t, lab.Node, "-c", "4", "-j", "2", "-T", "4")
	if tunnel == 0 {
		t.Fatal("pgbench through the tunnel completed no transaction")
	}
	t.Logf("pgbench TPC-B, 4 clients, 4s: %.0f tps through the tunnel, %.0f tps direct from the node (%.2fx)",
		tunnel, direct, tunnel/direct)
}
