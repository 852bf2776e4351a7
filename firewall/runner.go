package firewall

import "sync"

// Tables is the narrow seam over go-iptables for one family: the subset of
// *iptables.IPTables the Firewall uses. Rule specs are the words after the
// chain name, as in `iptables -A CHAIN <spec>`.
type Tables interface {
	ListChains(table string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	// ClearAndDeleteChain succeeds when the chain does not exist.
	ClearAndDeleteChain(table, chain string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	// List returns the chain as `iptables -S <chain>` prints it.
	List(table, chain string) ([]string, error)
}

// Runner hands the Firewall the Tables of each family. It is the only way
// the Firewall touches the world.
type Runner interface {
	// Family returns the tables of fam, or an error wrapping
	// ErrFamilyUnavailable when that family's iptables cannot be used.
	Family(fam Family) (Tables, error)
	// Routes returns the routing of fam, for the UDP capture.
	Routes(fam Family) (Routes, error)
}

// NewRunner returns the Runner backed by the iptables binaries on PATH.
// A family is probed on first use; a failed probe is retried next time, since
// a missing kernel module may be loaded later.
func NewRunner() Runner {
	return &iptablesRunner{tables: map[Family]Tables{}, routes: map[Family]Routes{}}
}

type iptablesRunner struct {
	mu     sync.Mutex
	tables map[Family]Tables
	routes map[Family]Routes
}

func (r *iptablesRunner) Routes(fam Family) (Routes, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt, ok := r.routes[fam]; ok {
		return rt, nil
	}
	rt, err := newRoutes(fam)
	if err != nil {
		return nil, err
	}
	r.routes[fam] = rt
	return rt, nil
}

func (r *iptablesRunner) Family(fam Family) (Tables, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.tables[fam]; ok {
		return t, nil
	}
	t, err := NewTables(fam)
	if err != nil {
		return nil, err
	}
	r.tables[fam] = t
	return t, nil
}
