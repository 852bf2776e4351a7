package firewall

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory Runner that behaves like iptables closely enough to
// catch ordering mistakes: a chain must exist before rules go in, a jump
// target must exist, and a chain still jumped to cannot be deleted. Dump
// prints what it holds, so tests compare the whole rule set against a
// literal. The zero value is ready to use and safe for concurrent use; set
// the exported fields before using it.
type Fake struct {
	// Unavailable families fail Family with ErrFamilyUnavailable, as a
	// missing ip6tables would.
	Unavailable map[Family]bool
	// Fail, when set, is asked before every change (op is the iptables
	// flag: "-N", "-X", "-I", "-A", "-D") and a non-nil error is returned
	// instead of making it.
	Fail func(op string, fam Family, table, chain string) error

	mu     sync.Mutex
	chains map[fakeKey][]string // user chains always have an entry
	routes map[Family][]LocalRoute
	// flushed are the routes whose table FlushTable emptied: the ip rule
	// stays, the route is gone.
	flushed map[Family][]LocalRoute
	// orphans are the tables whose ip rule DeleteRule removed: the route in
	// the table stays.
	orphans map[Family][]uint32
}

type fakeKey struct {
	fam          Family
	table, chain string
}

var builtinChains = map[string][]string{
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

var builtinTargets = []string{"ACCEPT", "DROP", "RETURN", "REJECT", "REDIRECT", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG", "TPROXY"}

// Family implements Runner.
func (f *Fake) Family(fam Family) (Tables, error) {
	if f.Unavailable[fam] {
		return nil, fmt.Errorf("%w: %s: fake says so", ErrFamilyUnavailable, fam.Command())
	}
	return fakeTables{f: f, fam: fam}, nil
}

// Routes implements Runner.
func (f *Fake) Routes(fam Family) (Routes, error) {
	if f.Unavailable[fam] {
		return nil, fmt.Errorf("%w: ip -%d: fake says so", ErrFamilyUnavailable, fam)
	}
	return fakeRoutes{f: f, fam: fam}, nil
}

type fakeRoutes struct {
	f   *Fake
	fam Family
}

func (r fakeRoutes) Add(lr LocalRoute) error {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	if r.f.routes == nil {
		r.f.routes = map[Family][]LocalRoute{}
	}
	if !slices.Contains(r.f.routes[r.fam], lr) {
		r.f.routes[r.fam] = append(r.f.routes[r.fam], lr)
	}
	if r.f.flushed != nil {
		r.f.flushed[r.fam] = slices.DeleteFunc(r.f.flushed[r.fam], func(have LocalRoute) bool { return have.Table == lr.Table })
	}
	return nil
}

func (r fakeRoutes) Delete(lr LocalRoute) error {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	if r.f.routes != nil {
		r.f.routes[r.fam] = slices.DeleteFunc(r.f.routes[r.fam], func(have LocalRoute) bool { return have == lr })
	}
	if r.f.flushed != nil {
		r.f.flushed[r.fam] = slices.DeleteFunc(r.f.flushed[r.fam], func(have LocalRoute) bool { return have.Table == lr.Table })
	}
	if r.f.orphans != nil {
		r.f.orphans[r.fam] = slices.DeleteFunc(r.f.orphans[r.fam], func(table uint32) bool { return table == lr.Table })
	}
	return nil
}

func (r fakeRoutes) Tables() ([]uint32, error) {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	tables := slices.Clone(r.f.orphans[r.fam])
	for _, lr := range r.f.routes[r.fam] {
		if !slices.ContainsFunc(r.f.flushed[r.fam], func(have LocalRoute) bool { return have.Table == lr.Table }) {
			tables = append(tables, lr.Table)
		}
	}
	return tables, nil
}

// DeleteRule removes lr's ip rule of fam, as `ip rule del` does: the route
// in its table stays.
func (f *Fake) DeleteRule(fam Family, lr LocalRoute) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.routes[fam], lr) {
		return
	}
	f.routes[fam] = slices.DeleteFunc(f.routes[fam], func(have LocalRoute) bool { return have == lr })
	if f.orphans == nil {
		f.orphans = map[Family][]uint32{}
	}
	f.orphans[fam] = append(f.orphans[fam], lr.Table)
}

func (r fakeRoutes) Present(lr LocalRoute) (bool, error) {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return slices.Contains(r.f.routes[r.fam], lr) && !slices.ContainsFunc(r.f.flushed[r.fam], func(have LocalRoute) bool { return have.Table == lr.Table }), nil
}

// FlushTable empties routing table table of fam, as `ip route flush table`
// does: the ip rules that look it up stay.
func (f *Fake) FlushTable(fam Family, table uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.flushed == nil {
		f.flushed = map[Family][]LocalRoute{}
	}
	f.flushed[fam] = append(f.flushed[fam], LocalRoute{Table: table})
}

func (r fakeRoutes) List() ([]LocalRoute, error) {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return slices.Clone(r.f.routes[r.fam]), nil
}

// Flush empties every chain of table, as `iptables -t <table> -F` does:
// chains stay, rules (our jumps included) go.
func (f *Fake) Flush(fam Family, table string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.chains {
		if k.fam == fam && k.table == table {
			f.chains[k] = f.chains[k][:0]
		}
	}
}

// Dump returns every chain and rule, one per line, in `iptables -S` style
// prefixed with the command and table ("iptables -t nat -A OUTPUT -j X"):
// families in order IPv4, IPv6; tables by name; within a table the -N lines
// first, then the rules of built-in chains, then of user chains by name.
// Rule order inside a chain is kept, since it is meaningful. The ip rules
// and routes come last, as the commands that would add them.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]fakeKey, 0, len(f.chains))
	for k := range f.chains {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b fakeKey) int {
		return cmp.Or(
			cmp.Compare(a.fam, b.fam),
			cmp.Compare(a.table, b.table),
			cmp.Compare(builtinRank(a), builtinRank(b)),
			cmp.Compare(a.chain, b.chain),
		)
	})
	var b strings.Builder
	for i, k := range keys {
		if i == 0 || keys[i-1].fam != k.fam || keys[i-1].table != k.table {
			// -N lines of this family and table first.
			for _, n := range keys[i:] {
				if n.fam == k.fam && n.table == k.table && !isBuiltin(n.table, n.chain) {
					fmt.Fprintf(&b, "%s -t %s -N %s\n", n.fam.Command(), n.table, n.chain)
				}
			}
		}
		for _, rule := range f.chains[k] {
			fmt.Fprintf(&b, "%s -t %s -A %s %s\n", k.fam.Command(), k.table, k.chain, rule)
		}
	}
	for _, fam := range families {
		dst := "0.0.0.0/0"
		if fam == IPv6 {
			dst = "::/0"
		}
		for _, r := range f.routes[fam] {
			fmt.Fprintf(&b, "ip -%d rule add %s\n", fam, r)
			if !slices.ContainsFunc(f.flushed[fam], func(have LocalRoute) bool { return have.Table == r.Table }) {
				fmt.Fprintf(&b, "ip -%d route add local %s dev lo table %d\n", fam, dst, r.Table)
			}
		}
		for _, table := range f.orphans[fam] {
			fmt.Fprintf(&b, "ip -%d route add local %s dev lo table %d\n", fam, dst, table)
		}
	}
	return b.String()
}

// builtinRank sorts built-in chains first, in the kernel's order.
func builtinRank(k fakeKey) int {
	if i := slices.Index(builtinChains[k.table], k.chain); i >= 0 {
		return i
	}
	return len(builtinChains[k.table])
}

func isBuiltin(table, chain string) bool { return slices.Contains(builtinChains[table], chain) }

// fakeTables is one family's view of a Fake.
type fakeTables struct {
	f   *Fake
	fam Family
}

func (t fakeTables) key(table, chain string) fakeKey {
	return fakeKey{fam: t.fam, table: table, chain: chain}
}

// exists must be called with t.f.mu held.
func (t fakeTables) exists(table, chain string) bool {
	if isBuiltin(table, chain) {
		return true
	}
	_, ok := t.f.chains[t.key(table, chain)]
	return ok
}

// change runs the Fail hook and, if it allows, initialises the map. Must be
// called with t.f.mu held.
func (t fakeTables) change(op, table, chain string) error {
	if t.f.Fail != nil {
		if err := t.f.Fail(op, t.fam, table, chain); err != nil {
			return err
		}
	}
	if t.f.chains == nil {
		t.f.chains = map[fakeKey][]string{}
	}
	return nil
}

func (t fakeTables) errorf(format string, args ...any) error {
	return fmt.Errorf("fake %s: "+format, append([]any{t.fam.Command()}, args...)...)
}

func (t fakeTables) ListChains(table string) ([]string, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	chains := slices.Clone(builtinChains[table])
	var user []string
	for k := range t.f.chains {
		if k.fam == t.fam && k.table == table && !isBuiltin(table, k.chain) {
			user = append(user, k.chain)
		}
	}
	slices.Sort(user)
	return append(chains, user...), nil
}

func (t fakeTables) ChainExists(table, chain string) (bool, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return t.exists(table, chain), nil
}

func (t fakeTables) NewChain(table, chain string) error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if err := t.change("-N", table, chain); err != nil {
		return err
	}
	if t.exists(table, chain) {
		return t.errorf("chain %s already exists in table %s", chain, table)
	}
	t.f.chains[t.key(table, chain)] = nil
	return nil
}

func (t fakeTables) ClearAndDeleteChain(table, chain string) error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if err := t.change("-X", table, chain); err != nil {
		return err
	}
	if !t.exists(table, chain) {
		return nil
	}
	if isBuiltin(table, chain) {
		return t.errorf("cannot delete built-in chain %s", chain)
	}
	for k, rules := range t.f.chains {
		if k.fam != t.fam || k.table != table {
			continue
		}
		for _, r := range rules {
			if jumpsTo(strings.Fields(r), chain) {
				return t.errorf("chain %s is busy: %s jumps to it", chain, k.chain)
			}
		}
	}
	delete(t.f.chains, t.key(table, chain))
	return nil
}

// addable checks what iptables checks before adding a rule. Must be called
// with t.f.mu held.
func (t fakeTables) addable(table, chain string, spec []string) error {
	if !t.exists(table, chain) {
		return t.errorf("no chain %s in table %s", chain, table)
	}
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] != "-j" && spec[i] != "-g" {
			continue
		}
		target := spec[i+1]
		if !slices.Contains(builtinTargets, target) && !t.exists(table, target) {
			return t.errorf("no chain/target %s in table %s", target, table)
		}
	}
	return nil
}

func (t fakeTables) Insert(table, chain string, pos int, spec ...string) error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if err := t.change("-I", table, chain); err != nil {
		return err
	}
	if err := t.addable(table, chain, spec); err != nil {
		return err
	}
	k := t.key(table, chain)
	if pos < 1 || pos > len(t.f.chains[k])+1 {
		return t.errorf("index %d out of range in chain %s", pos, chain)
	}
	t.f.chains[k] = slices.Insert(t.f.chains[k], pos-1, strings.Join(spec, " "))
	return nil
}

func (t fakeTables) Append(table, chain string, spec ...string) error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if err := t.change("-A", table, chain); err != nil {
		return err
	}
	if err := t.addable(table, chain, spec); err != nil {
		return err
	}
	k := t.key(table, chain)
	t.f.chains[k] = append(t.f.chains[k], strings.Join(spec, " "))
	return nil
}

func (t fakeTables) Delete(table, chain string, spec ...string) error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if err := t.change("-D", table, chain); err != nil {
		return err
	}
	if !t.exists(table, chain) {
		return t.errorf("no chain %s in table %s", chain, table)
	}
	k := t.key(table, chain)
	i := slices.Index(t.f.chains[k], strings.Join(spec, " "))
	if i < 0 {
		return t.errorf("no rule %q in chain %s", strings.Join(spec, " "), chain)
	}
	t.f.chains[k] = slices.Delete(t.f.chains[k], i, i+1)
	return nil
}

func (t fakeTables) Exists(table, chain string, spec ...string) (bool, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if !t.exists(table, chain) {
		return false, t.errorf("no chain %s in table %s", chain, table)
	}
	return slices.Contains(t.f.chains[t.key(table, chain)], strings.Join(spec, " ")), nil
}

func (t fakeTables) List(table, chain string) ([]string, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if !t.exists(table, chain) {
		return nil, t.errorf("no chain %s in table %s", chain, table)
	}
	head := "-N " + chain
	if isBuiltin(table, chain) {
		head = "-P " + chain + " ACCEPT"
	}
	lines := []string{head}
	for _, r := range t.f.chains[t.key(table, chain)] {
		lines = append(lines, "-A "+chain+" "+r)
	}
	return lines, nil
}
