package firewall

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// LocalRoute is what the UDP capture adds to one family's routing: `ip rule
// add fwmark Mark/Mask lookup Table` and, in that table, `ip route add local
// default dev lo`, which makes every marked packet come back in as if it
// were addressed to this host.
type LocalRoute struct {
	Mark, Mask, Table uint32
}

func (r LocalRoute) String() string {
	return "fwmark " + markMatch(r.Mark, r.Mask) + " lookup " + strconv.FormatUint(uint64(r.Table), 10)
}

// Routes is the seam over `ip rule` and `ip route` for one family.
type Routes interface {
	// Add adds the rule and the route; either may exist already.
	Add(r LocalRoute) error
	// Delete removes the rule and flushes the table; what is gone already
	// is not an error.
	Delete(r LocalRoute) error
	// List returns the fwmark rules there are, whoever made them.
	List() ([]LocalRoute, error)
	// Present reports whether the rule is there and its table still has a
	// route: a rule alone sends marked packets on to the next rule, and out
	// by the default route.
	Present(r LocalRoute) (bool, error)
	// Tables returns the numbers of the routing tables that have routes,
	// whoever made them (tables named in rt_tables are left out).
	Tables() ([]uint32, error)
}

// ours reports whether r is one the UDP capture of some instance makes,
// which is how Cleanup finds them without saved state.
func (r LocalRoute) ours() bool {
	return r.Mask == udpMarkMask && r.Table > udpTableBase && r.Table <= udpTableBase+15 &&
		r.Mark == (r.Table-udpTableBase)<<24
}

// ipRoutes runs the ip binary.
type ipRoutes struct {
	fam Family
	mu  sync.Mutex
}

var ipCommand = "ip"

func (ir *ipRoutes) run(args ...string) (string, error) {
	args = append([]string{"-" + strconv.Itoa(int(ir.fam))}, args...)
	var out, stderr bytes.Buffer
	cmd := exec.Command(ipCommand, args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", ipCommand, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

func (ir *ipRoutes) Add(r LocalRoute) error {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	table := strconv.FormatUint(uint64(r.Table), 10)
	dst := "0.0.0.0/0"
	if ir.fam == IPv6 {
		dst = "::/0"
	}
	if _, err := ir.run("route", "replace", "local", dst, "dev", "lo", "table", table); err != nil {
		return err
	}
	rules, err := ir.list()
	if err != nil {
		return err
	}
	for _, have := range rules {
		if have == r {
			return nil
		}
	}
	_, err = ir.run("rule", "add", "fwmark", markMatch(r.Mark, r.Mask), "lookup", table)
	return err
}

func (ir *ipRoutes) Delete(r LocalRoute) error {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	rules, err := ir.list()
	if err != nil {
		return err
	}
	for _, have := range rules {
		if have != r {
			continue
		}
		if _, err := ir.run("rule", "del", "fwmark", markMatch(r.Mark, r.Mask), "lookup", strconv.FormatUint(uint64(r.Table), 10)); err != nil {
			// Another process may have removed it since we looked.
			if now, lerr := ir.list(); lerr != nil || slices.Contains(now, r) {
				return err
			}
		}
	}
	return ir.flush(r.Table)
}

// flush empties table, which is then gone from `ip route show table all`.
func (ir *ipRoutes) flush(table uint32) error {
	name := strconv.FormatUint(uint64(table), 10)
	out, err := ir.run("route", "show", "table", name)
	if err != nil || strings.TrimSpace(out) == "" {
		return err
	}
	if _, err = ir.run("route", "flush", "table", name); err != nil {
		if out, serr := ir.run("route", "show", "table", name); serr == nil && strings.TrimSpace(out) == "" {
			return nil // flushed by another process meanwhile
		}
	}
	return err
}

func (ir *ipRoutes) Present(r LocalRoute) (bool, error) {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	rules, err := ir.list()
	if err != nil || !slices.Contains(rules, r) {
		return false, err
	}
	out, err := ir.run("route", "show", "table", strconv.FormatUint(uint64(r.Table), 10))
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(out) != "", nil
}

func (ir *ipRoutes) Tables() ([]uint32, error) {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	out, err := ir.run("route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	return parseTables(out), nil
}

// parseTables reads the numbered tables of `ip route show table all` lines
// such as "local default dev lo table 27449 scope host".
func parseTables(out string) []uint32 {
	var tables []uint32
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "table" {
				continue
			}
			if n, err := strconv.ParseUint(f[i+1], 10, 32); err == nil && !slices.Contains(tables, uint32(n)) {
				tables = append(tables, uint32(n))
			}
		}
	}
	return tables
}

func (ir *ipRoutes) List() ([]LocalRoute, error) {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	return ir.list()
}

func (ir *ipRoutes) list() ([]LocalRoute, error) {
	out, err := ir.run("rule", "show")
	if err != nil {
		return nil, err
	}
	return parseRules(out), nil
}

// parseRules reads the fwmark rules of `ip rule show` lines such as
// "32765:	from all fwmark 0x1000000/0xf000000 lookup 27449". A mark without
// mask has mask 0xffffffff; a table named in rt_tables is skipped.
func parseRules(out string) []LocalRoute {
	var rules []LocalRoute
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		var r LocalRoute
		var haveMark, haveTable bool
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "fwmark":
				m, mask, ok := strings.Cut(f[i+1], "/")
				if !ok {
					mask = "0xffffffff"
				}
				mv, err1 := strconv.ParseUint(m, 0, 32)
				kv, err2 := strconv.ParseUint(mask, 0, 32)
				if err1 == nil && err2 == nil {
					r.Mark, r.Mask, haveMark = uint32(mv), uint32(kv), true
				}
			case "lookup", "table":
				if t, err := strconv.ParseUint(f[i+1], 10, 32); err == nil {
					r.Table, haveTable = uint32(t), true
				}
			}
		}
		if haveMark && haveTable {
			rules = append(rules, r)
		}
	}
	return rules
}

// errNoIP is what a family's Routes says when the ip binary is missing.
var errNoIP = errors.New("the ip command (iproute2) is missing")

func newRoutes(fam Family) (Routes, error) {
	if _, err := exec.LookPath(ipCommand); err != nil {
		return nil, fmt.Errorf("%w: %w; install iproute2", ErrFamilyUnavailable, errNoIP)
	}
	return &ipRoutes{fam: fam}, nil
}
