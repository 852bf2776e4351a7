//go:build linux

package tui

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const ptyChildEnv = "K8STUNNEL_TUI_PTY_CHILD"

// TestPtyChild runs, as the child of TestPasswordOnTerminal, on a pseudo
// terminal that is its controlling terminal.
func TestPtyChild(t *testing.T) {
	if os.Getenv(ptyChildEnv) != "1" {
		return // only runs as the child of the test below
	}
	if !CanPrompt() {
		fmt.Println("result: cannot prompt")
		os.Exit(0)
	}
	b, err := Password(t.Context(), "passphrase: ")
	fmt.Printf("result: %q %v\n", b, err)
	os.Exit(0)
}

// openPty opens a pseudo terminal pair with nothing but x/sys.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func TestPasswordOnTerminal(t *testing.T) {
	master, slave := openPty(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPtyChild$")
	cmd.Env = append(os.Environ(), ptyChildEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(master)
	var seen strings.Builder
	for !strings.Contains(seen.String(), "passphrase: ") {
		b, err := r.ReadByte()
		if err != nil {
			t.Fatalf("reading the terminal: %v; it said %q", err, seen.String())
		}
		seen.WriteByte(b)
		if strings.Contains(seen.String(), "result:") {
			t.Fatalf("child did not prompt: %q", seen.String())
		}
	}
	// Echo may still be on when the prompt shows (it goes off just after),
	// so what comes back before the result is not checked.
	if _, err := master.Write([]byte("s3cret\n")); err != nil {
		t.Fatal(err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the terminal: %v", err)
		}
		if strings.HasPrefix(line, "result:") {
			if want := `result: "s3cret" <nil>`; strings.TrimSpace(line) != want {
				t.Fatalf("child said %q, want %q", line, want)
			}
			return
		}
	}
}
