package firewall

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Caller is the process the root helper works for: the k8stunnel client that
// started it, directly or through sudo. A Spec is installed only when its
// ports are that process's own listening sockets, so a sudo rule for
// `k8stunnel firewall` cannot be used to send other users' connections to a
// port that some other program holds, or that nobody holds yet.
type Caller struct {
	Pid int
	// UID is the user who invoked sudo (SUDO_UID), or the parent's when the
	// helper was started without sudo.
	UID int
}

// procRoot is /proc; tests point it at a fake tree.
var procRoot = "/proc"

// FindCaller finds the caller of this helper: the nearest ancestor that is
// not sudo (sudo runs as one or two processes of its own between the client
// and us). Its real uid must be SUDO_UID when sudo set one.
func FindCaller() (Caller, error) {
	pid := os.Getppid()
	for range 4 {
		st, err := readStatus(pid)
		if err != nil {
			return Caller{}, fmt.Errorf("finding the process that started the firewall helper: %w", err)
		}
		if st.name != "sudo" {
			uid := st.uid
			if s := os.Getenv("SUDO_UID"); s != "" {
				want, err := strconv.Atoi(s)
				if err != nil {
					return Caller{}, fmt.Errorf("bad SUDO_UID %q", s)
				}
				if uid != want {
					return Caller{}, fmt.Errorf("the firewall helper's caller (pid %d) runs as uid %d, not as SUDO_UID %d", pid, uid, want)
				}
			}
			return Caller{Pid: pid, UID: uid}, nil
		}
		pid = st.ppid
	}
	return Caller{}, errors.New("finding the process that started the firewall helper: too many sudo processes")
}

type procStatus struct {
	name      string
	ppid, uid int
}

func readStatus(pid int) (procStatus, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return procStatus{}, err
	}
	var st procStatus
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		switch key {
		case "Name":
			st.name = fields[0]
		case "PPid":
			st.ppid, err = strconv.Atoi(fields[0])
		case "Uid":
			st.uid, err = strconv.Atoi(fields[0]) // real uid
		}
		if err != nil {
			return procStatus{}, fmt.Errorf("reading %s status: %w", strconv.Itoa(pid), err)
		}
	}
	if st.name == "" {
		return procStatus{}, fmt.Errorf("process %d has no name in its status", pid)
	}
	return st, nil
}

// Authorize checks that spec only redirects to sockets the caller holds: a
// listening TCP socket on spec.Port, with DNS a UDP and a listening TCP
// socket on spec.DNSPort, and with UDP capture a UDP socket on spec.UDPPort,
// each owned by the caller's uid and open in the caller process.
func (c Caller) Authorize(spec Spec) error {
	held, err := socketInodes(c.Pid)
	if err != nil {
		return fmt.Errorf("checking the firewall spec: %w", err)
	}
	need := []portUse{{"tcp", spec.Port}}
	if len(spec.DNS) > 0 {
		need = append(need, portUse{"udp", spec.DNSPort}, portUse{"tcp", spec.DNSPort})
	}
	if spec.UDPPort != 0 {
		need = append(need, portUse{"udp", spec.UDPPort})
	}
	for _, n := range need {
		ok, err := c.holds(held, n.proto, n.port)
		if err != nil {
			return fmt.Errorf("checking the firewall spec: %w", err)
		}
		if !ok {
			return fmt.Errorf("refusing rules that redirect to port %d/%s: it is not a socket of the calling k8stunnel (pid %d, uid %d)", n.port, n.proto, c.Pid, c.UID)
		}
	}
	return nil
}

type portUse struct {
	proto string
	port  uint16
}

// holds reports whether one of the caller's sockets listens (TCP) or is
// bound (UDP) on port and is owned by the caller's uid.
func (c Caller) holds(held map[string]bool, proto string, port uint16) (bool, error) {
	for _, file := range []string{proto, proto + "6"} {
		socks, err := readSockets(filepath.Join(procRoot, "net", file), proto == "tcp")
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && file != proto {
				continue // no IPv6
			}
			return false, err
		}
		for _, s := range socks {
			if s.port == port && s.uid == c.UID && held[s.inode] {
				return true, nil
			}
		}
	}
	return false, nil
}

// socketInodes returns the inodes of the sockets open in process pid.
func socketInodes(pid int) (map[string]bool, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing the caller's files: %w", err)
	}
	inodes := map[string]bool{}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	return inodes, nil
}

type socket struct {
	port  uint16
	uid   int
	inode string
}

// tcpListen is the state column of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// readSockets parses /proc/net/{tcp,tcp6,udp,udp6}: after a header line, one
// socket per line with "local_address st ... uid timeout inode" in columns
// 1, 3, 7 and 9, the address as hex IP:port. listening keeps only sockets in
// the LISTEN state.
func readSockets(path string, listening bool) ([]socket, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []socket
	lines := strings.Split(string(b), "\n")
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		if listening && f[3] != tcpListen {
			continue
		}
		_, portHex, ok := strings.Cut(f[1], ":")
		pb, err := hex.DecodeString(portHex)
		if !ok || err != nil || len(pb) != 2 {
			return nil, fmt.Errorf("%s: bad local address %q", path, f[1])
		}
		uid, err := strconv.Atoi(f[7])
		if err != nil {
			return nil, fmt.Errorf("%s: bad uid %q", path, f[7])
		}
		out = append(out, socket{port: uint16(pb[0])<<8 | uint16(pb[1]), uid: uid, inode: f[9]})
	}
	return out, nil
}
