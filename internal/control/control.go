// Package control is how `k8stunnel status` and `k8stunnel stop` reach a
// running tunnel. Each instance answers on a Unix socket, PID.sock, in a
// per-user runtime directory that only its user may enter; the socket is mode
// 0600 and every connection's peer is checked (SO_PEERCRED), so no other
// user (root aside) ever reads what the tunnel carries or stops it.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Status is what an instance says about itself; `status --json` prints it.
type Status struct {
	PID               int       `json:"pid"`
	Version           string    `json:"version"`
	Remote            string    `json:"remote"` // user@host:port of the node
	State             string    `json:"state"`  // connected, reconnecting, firewall lost, starting
	Since             time.Time `json:"since"`  // when State began
	Started           time.Time `json:"started"`
	UptimeSeconds     float64   `json:"uptime_s"`
	Reconnects        int64     `json:"reconnects"`
	RTTMillis         float64   `json:"rtt_ms"` // last SSH keepalive round trip; 0 before the first
	ConnectionsActive int64     `json:"connections_active"`
	ConnectionsTotal  int64     `json:"connections_total"`
	BytesSent         int64     `json:"bytes_sent"`
	BytesReceived     int64     `json:"bytes_received"`
	Forward           []string  `json:"forward"` // CIDRs captured
	Port              uint16    `json:"port"`    // where redirected connections arrive
	DNS               *DNS      `json:"dns,omitempty"`
	UDP               *UDP      `json:"udp,omitempty"`
	Expose            []Expose  `json:"expose,omitempty"` // -R entries
	Log               string    `json:"log,omitempty"`    // where the instance logs, when not a terminal
}

// Expose is one -R: where pods reach it on the node, and how often they did.
type Expose struct {
	Spec        string `json:"spec"` // as given: [BIND:]PORT:HOST:HOSTPORT
	Node        string `json:"node"` // IP:port the node listens on; empty before the first link
	Connections int64  `json:"connections"`
}

// UDP counts the UDP capture's flows and the datagrams it dropped.
type UDP struct {
	FlowsActive int64 `json:"flows_active"`
	FlowsTotal  int64 `json:"flows_total"`
	Dropped     int64 `json:"dropped"`
	Oversize    int64 `json:"oversize"`
}

// DNS counts the DNS proxy's work, with --dns.
type DNS struct {
	Queries  int64 `json:"queries"`
	Failures int64 `json:"failures"`
}

// Requests, one line each. A status request is answered with one line of
// JSON; a stop request with "stopping", after which the connection stays open
// until the instance has finished (its rules are removed) and exits.
const (
	reqStatus = "status"
	reqStop   = "stop"
)

const (
	sockSuffix = ".sock"
	// ioTimeout bounds a request and an answer; an instance answers at once.
	ioTimeout = 5 * time.Second
)

// ErrNotOwner means a runtime directory is not safe to use: another user
// owns it, others may enter it, or it is a symbolic link.
var ErrNotOwner = errors.New("runtime directory not private")

// Dir is where uid's instances put their sockets: /run/k8stunnel for root,
// else $XDG_RUNTIME_DIR/k8stunnel, else /tmp/k8stunnel-UID.
func Dir(uid int) string {
	if uid == 0 {
		return "/run/k8stunnel"
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(x) {
		return filepath.Join(x, "k8stunnel")
	}
	return filepath.Join(os.TempDir(), "k8stunnel-"+strconv.Itoa(uid))
}

// searchDirs are where Find looks: the caller's own directories, and for
// root everyone's.
func searchDirs(uid int) []string {
	dirs := []string{Dir(uid), filepath.Join(os.TempDir(), "k8stunnel-"+strconv.Itoa(uid))}
	if uid == 0 {
		more, _ := filepath.Glob("/run/user/*/k8stunnel")
		tmp, _ := filepath.Glob(filepath.Join(os.TempDir(), "k8stunnel-*"))
		dirs = append(dirs, append(more, tmp...)...)
	}
	var out []string
	seen := map[string]bool{}
	for _, d := range dirs {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

// MakeDir creates dir for uid, mode 0700, unless it exists, and checks that
// it is private to uid: in /tmp anyone could have made it first.
func MakeDir(dir string, uid int) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating the runtime directory: %w", err)
	}
	return checkDir(dir, uid)
}

// checkDir checks that dir is a directory (not a link to one) owned by uid
// that nobody else may enter; uid -1 accepts any owner.
func checkDir(dir string, uid int) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	owner, ok := fileOwner(fi)
	if !fi.IsDir() || !ok || (uid >= 0 && owner != uid) || fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%w: %s is %v, owned by uid %d; want a directory of uid %d, mode 0700 (remove it and start again)",
			ErrNotOwner, dir, fi.Mode(), owner, uid)
	}
	return nil
}

// Handler is what a Server asks the running instance.
type Handler struct {
	Status func() Status
	// Stop asks the instance to end as SIGTERM would; it must not wait.
	Stop func()
}

// Server answers this process's socket.
type Server struct {
	ln   *net.UnixListener
	path string
	h    Handler
	uid  int

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

// Listen creates this process's socket in dir (made with MakeDir) and starts
// answering on it until Close.
func Listen(dir string, h Handler) (*Server, error) {
	uid := os.Getuid()
	if err := MakeDir(dir, uid); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, strconv.Itoa(os.Getpid())+sockSuffix)
	os.Remove(path) // our pid's, so a dead process's that had it before us
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("creating the control socket: %w", err)
	}
	// The directory already keeps others out; this is the second lock.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("creating the control socket: %w", err)
	}
	s := &Server{ln: ln, path: path, h: h, uid: uid, conns: map[net.Conn]bool{}}
	s.wg.Go(s.serve)
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close removes the socket and ends every connection, the held stop
// requests' included, which tells their callers the instance is done. It
// returns once every goroutine of the Server has ended; safe twice.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close() // removes the socket file
	s.wg.Wait()
	return err
}

func (s *Server) serve() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(100 * time.Millisecond) // EMFILE: do not spin
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.wg.Go(func() {
			s.answer(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		})
		s.mu.Unlock()
	}
}

// answer serves one connection: a peer of another uid gets nothing at all.
func (s *Server) answer(c *net.UnixConn) {
	uid, err := peerUID(c)
	if err != nil || (uid != s.uid && uid != 0) {
		return
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
	if err != nil {
		return
	}
	switch strings.TrimSpace(line) {
	case reqStatus:
		b, _ := json.Marshal(s.h.Status())
		c.Write(append(b, '\n'))
	case reqStop:
		if _, err := io.WriteString(c, "stopping\n"); err != nil {
			return
		}
		c.SetDeadline(time.Time{})
		s.h.Stop()
		// Held until Close, or until the caller gives up waiting.
		io.Copy(io.Discard, c)
	}
}

// Find returns the sockets of the instances the caller may ask, by pid.
// Sockets nobody answers on any more (their instance was killed) are removed
// and left out.
func Find() []string { return find(searchDirs(os.Getuid()), os.Getuid()) }

func find(dirs []string, uid int) []string {
	var found []string
	for _, dir := range dirs {
		owner := uid
		if uid == 0 {
			owner = -1
		}
		if checkDir(dir, owner) != nil {
			continue
		}
		paths, _ := filepath.Glob(filepath.Join(dir, "*"+sockSuffix))
		for _, p := range paths {
			if _, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(p), sockSuffix)); err != nil {
				continue
			}
			c, err := net.DialTimeout("unix", p, ioTimeout)
			if errors.Is(err, syscall.ECONNREFUSED) {
				os.Remove(p)
				continue
			}
			if err != nil {
				continue
			}
			c.Close()
			found = append(found, p)
		}
	}
	sort.Slice(found, func(i, j int) bool { return PID(found[i]) < PID(found[j]) })
	return found
}

// PID is the pid a socket path names.
func PID(path string) int {
	pid, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), sockSuffix))
	return pid
}

// Query asks the instance at path for its status.
func Query(path string) (Status, error) {
	var st Status
	c, err := request(path, reqStatus)
	if err != nil {
		return st, err
	}
	defer c.Close()
	line, err := bufio.NewReader(io.LimitReader(c, 1<<20)).ReadBytes('\n')
	if err != nil {
		return st, fmt.Errorf("asking k8stunnel %d: no answer (%v)", PID(path), err)
	}
	if err := json.Unmarshal(line, &st); err != nil {
		return st, fmt.Errorf("asking k8stunnel %d: %w", PID(path), err)
	}
	return st, nil
}

// Stop asks the instance at path to stop and waits, until ctx ends, for it
// to have finished: its rules removed, its socket closed.
func Stop(ctx context.Context, path string) error {
	c, err := request(path, reqStop)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || line != "stopping\n" {
		return fmt.Errorf("stopping k8stunnel %d: it did not answer", PID(path))
	}
	c.SetDeadline(time.Time{})
	io.Copy(io.Discard, br)
	if ctx.Err() != nil {
		return fmt.Errorf("stopping k8stunnel %d: still running after %w", PID(path), context.Cause(ctx))
	}
	return nil
}

func request(path, req string) (net.Conn, error) {
	c, err := net.DialTimeout("unix", path, ioTimeout)
	if err != nil {
		return nil, fmt.Errorf("reaching k8stunnel %d: %w", PID(path), err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, req+"\n"); err != nil {
		c.Close()
		return nil, fmt.Errorf("reaching k8stunnel %d: %w", PID(path), err)
	}
	return c, nil
}
