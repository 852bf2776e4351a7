package firewall

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

var (
	// ErrFamilyUnavailable means a family's iptables binary is missing or its
	// nat table does not work (no ip6tables, or no IPv6 nat in the kernel).
	ErrFamilyUnavailable = errors.New("iptables family unavailable")
	// ErrNeedsLinux is what the transparent mode (rules, redirect, DNS
	// capture) says on other systems.
	ErrNeedsLinux = errors.New("transparent mode needs Linux; use --socks or --http-proxy")
	// ErrNeedRoot is what the privileged helper, started through sudo, exiting
	// before it answers means; the error carries NeedRootHint.
	ErrNeedRoot = errors.New("k8stunnel needs root for iptables")
)

// NeedRootHint tells how to give k8stunnel root for its firewall part.
const NeedRootHint = "run it with sudo, or let this user run only its firewall part as root, without a password: see k8stunnel sudoers"

// Firewall installs and removes one Spec's rules through a Runner.
//
// go-iptables' check-then-act helpers are not atomic, and the self-healing
// loop runs beside requests, so every method holds one mutex for its whole
// run.
type Firewall struct {
	runner Runner
	log    *slog.Logger
	// healEvery is how often ServeHelper checks the installed rules; a field
	// so tests can make it fast.
	healEvery time.Duration
	// lockPath, when set, is the file whose flock serialises Install with
	// other processes' (installLock); lockWaiting is called when another
	// holds it, for tests.
	lockPath    string
	lockWaiting func()

	mu        sync.Mutex
	installed *installation // nil when nothing is installed
}

// installation is what Install put in place, so Check can compare against it
// and Remove knows what to take away.
type installation struct {
	spec  Spec
	chain string
	fams  []installedFamily
}

type installedFamily struct {
	fam    Family
	tables Tables
	chains []installedChain
	// routes and route are the UDP capture's ip rule and route, when set.
	routes Routes
	route  LocalRoute
}

// installedChain is one chain of a family: the nat chain, and with UDP the
// two mangle chains.
type installedChain struct {
	table, name string
	hooks       []string
	// listed is the chain as iptables printed it right after Install; Check
	// compares against this rather than against the Plan, so it does not
	// depend on how a given iptables version spells a rule.
	listed []string
}

// chainRules groups the rules of one family's plan by chain, in plan order.
func chainRules(rules []Rule) (keys []installedChain, byChain map[[2]string][]Rule) {
	byChain = map[[2]string][]Rule{}
	for _, r := range rules {
		k := [2]string{r.Table, r.Chain}
		if _, ok := byChain[k]; !ok {
			keys = append(keys, installedChain{table: r.Table, name: r.Chain})
		}
		byChain[k] = append(byChain[k], r)
	}
	return keys, byChain
}

// New returns a Firewall that works through r, or through the iptables
// binaries on PATH when r is nil.
func New(r Runner, log *slog.Logger) *Firewall {
	if r == nil {
		r = NewRunner()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Firewall{runner: r, log: log, healEvery: time.Second}
	if _, real := r.(*iptablesRunner); real {
		f.lockPath = installLock
	}
	return f
}

// installLock is the file every k8stunnel's root child locks while it
// installs. The UDP capture picks its mark and routing table by looking at
// what other instances installed (freeUDPIndex): two instances starting at
// once would otherwise both see the same index free, and then take each
// other's datagrams, and the first to stop would delete the other's route.
// /run is root's alone, so no user can hold the lock or plant the file.
const installLock = "/run/k8stunnel-firewall.lock"

// Install replaces whatever this Firewall installed before with spec's
// rules. It first removes a stale chain of the same name (left by a run
// that could not clean up), then per family creates the chain, fills it, and
// only then inserts the jumps, so no connection ever sees a half-built chain.
// On error nothing is left installed: neither the old rules nor the new.
func (f *Firewall) Install(spec Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lockPath != "" {
		unlock, err := lockFile(f.lockPath, f.lockWaiting)
		if err != nil {
			return fmt.Errorf("installing rules: %w", err)
		}
		defer unlock()
	}

	if err := f.removeLocked(); err != nil {
		return err
	}
	chain := ChainName(spec)
	plan := Plan(spec)
	byFamily := map[Family][]Rule{}
	for _, r := range plan {
		byFamily[r.Family] = append(byFamily[r.Family], r)
	}

	// Find out which families work before touching anything, so a missing
	// ip6tables fails the Install without leaving IPv4 rules behind.
	tables := map[Family]Tables{}
	for _, fam := range families {
		t, err := f.runner.Family(fam)
		switch {
		case err == nil:
			tables[fam] = t
		case len(byFamily[fam]) == 0:
			// Nothing to install, and such a family cannot hold stale rules.
		case fam == IPv6:
			return fmt.Errorf("installing IPv6 rules: %w; drop the IPv6 targets, or install ip6tables with nat support", err)
		default:
			return fmt.Errorf("installing IPv4 rules: %w; install iptables", err)
		}
	}

	inst := &installation{spec: spec, chain: chain}
	if spec.UDPPort != 0 {
		spec.udpIdx = freeUDPIndex(tables, spec)
		plan = Plan(spec)
		byFamily = map[Family][]Rule{}
		for _, r := range plan {
			byFamily[r.Family] = append(byFamily[r.Family], r)
		}
	}
	for _, fam := range families {
		t, ok := tables[fam]
		if !ok {
			continue
		}
		for _, table := range []string{natTable, mangleTable} {
			for _, name := range []string{chain, UDPChainName(spec)} {
				if removed, err := removeChain(t, table, name); err != nil {
					f.rollback(inst)
					return fmt.Errorf("removing stale %s chain %s: %w", fam, name, err)
				} else if removed {
					f.log.Info("removed stale firewall rules", "family", fam, "table", table, "chain", name)
				}
			}
		}
		if len(byFamily[fam]) == 0 {
			continue
		}
		inst.fams = append(inst.fams, installedFamily{fam: fam, tables: t})
		fi := &inst.fams[len(inst.fams)-1]
		keys, byChain := chainRules(byFamily[fam])
		if len(keys) > 1 {
			// The UDP capture's route goes in before the rules that mark
			// packets for it: marked packets without it would leave by the
			// default route.
			rt, err := f.runner.Routes(fam)
			if err == nil {
				fi.route = LocalRoute{Mark: UDPMark(spec), Mask: udpMarkMask, Table: UDPTable(spec)}
				err = rt.Add(fi.route)
				fi.routes = rt
			}
			if err != nil {
				f.rollback(inst)
				return fmt.Errorf("installing %s route for UDP: %w", fam, err)
			}
		}
		for _, k := range keys {
			k.hooks = chainHooks(spec, k.table, k.name)
			listed, err := installChain(t, k.table, k.name, byChain[[2]string{k.table, k.name}], k.hooks)
			fi.chains = append(fi.chains, k)
			if err != nil {
				f.rollback(inst)
				return fmt.Errorf("installing %s rules in %s chain %s: %w", fam, k.table, k.name, err)
			}
			fi.chains[len(fi.chains)-1].listed = listed
		}
	}
	f.installed = inst
	f.log.Debug("firewall rules installed", "chain", chain, "rules", len(plan))
	return nil
}

func installChain(t Tables, table, chain string, rules []Rule, hooks []string) (listed []string, err error) {
	if err := t.NewChain(table, chain); err != nil {
		return nil, err
	}
	for _, r := range rules {
		if err := t.Append(table, chain, r.Args...); err != nil {
			return nil, fmt.Errorf("adding %q: %w", strings.Join(r.Args, " "), err)
		}
	}
	if listed, err = t.List(table, chain); err != nil {
		return nil, err
	}
	for _, hook := range hooks {
		if err := t.Insert(table, hook, 1, "-j", chain); err != nil {
			return nil, fmt.Errorf("adding jump from %s: %w", hook, err)
		}
	}
	return listed, nil
}

// rollback undoes a partial Install; the error that made it necessary is the
// one worth reporting, so its own failures are only logged.
func (f *Firewall) rollback(inst *installation) {
	for _, fi := range inst.fams {
		if err := removeFamily(fi); err != nil {
			f.log.Error("undoing partial firewall install", "family", fi.fam, "chain", inst.chain, "err", err)
		}
	}
}

// removeFamily removes one family's chains, then its UDP route: the route
// must outlive the rules that mark packets for it.
func removeFamily(fi installedFamily) error {
	for _, c := range fi.chains {
		if _, err := removeChain(fi.tables, c.table, c.name); err != nil {
			return fmt.Errorf("%s chain %s: %w", c.table, c.name, err)
		}
	}
	if fi.routes != nil {
		if err := fi.routes.Delete(fi.route); err != nil {
			return fmt.Errorf("route %s: %w", fi.route, err)
		}
	}
	return nil
}

// Remove takes away the jumps and the chain Install created. Rules that are
// already gone count as removed, so Remove is safe to call twice; after an
// error, calling it again retries.
func (f *Firewall) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removeLocked()
}

func (f *Firewall) removeLocked() error {
	if f.installed == nil {
		return nil
	}
	var errs []error
	for _, fi := range f.installed.fams {
		if err := removeFamily(fi); err != nil {
			errs = append(errs, fmt.Errorf("removing %s rules: %w", fi.fam, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	f.log.Debug("firewall rules removed", "chain", f.installed.chain)
	f.installed = nil
	return nil
}

// Check reports whether the chains, their jumps and the UDP capture's ip
// rule and route are still exactly as Install left them; something else flushing the nat table (iptables -t nat
// -F, a firewall manager reloading) makes it false. With nothing installed,
// there is nothing to differ and Check is true.
func (f *Firewall) Check() (ok bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.installed == nil {
		return true, nil
	}
	for _, fi := range f.installed.fams {
		for _, c := range fi.chains {
			listed, err := fi.tables.List(c.table, c.name)
			if err != nil {
				exists, existsErr := fi.tables.ChainExists(c.table, c.name)
				if existsErr == nil && !exists {
					return false, nil
				}
				return false, fmt.Errorf("listing %s chain %s: %w", fi.fam, c.name, err)
			}
			if !slices.Equal(listed, c.listed) {
				return false, nil
			}
			for _, hook := range c.hooks {
				ok, err := fi.tables.Exists(c.table, hook, "-j", c.name)
				if err != nil {
					return false, fmt.Errorf("checking %s jump from %s to %s: %w", fi.fam, hook, c.name, err)
				}
				if !ok {
					return false, nil
				}
			}
		}
		if fi.routes != nil {
			ok, err := fi.routes.Present(fi.route)
			if err != nil {
				return false, fmt.Errorf("checking %s UDP route: %w", fi.fam, err)
			}
			if !ok {
				return false, nil
			}
		}
	}
	return true, nil
}

// installedSpec is the Spec currently installed, for the healing loop.
func (f *Firewall) installedSpec() (Spec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.installed == nil {
		return Spec{}, false
	}
	return f.installed.spec, true
}

// Cleanup removes every K8STUNNEL-* chain in the nat table of both families,
// with the jumps to it, whatever port it was made for. It needs no saved
// state, so it can repair what a crashed or killed run left behind. A nil r
// means the iptables binaries on PATH. removed counts chains, per family.
func Cleanup(r Runner, log *slog.Logger) (removed int, err error) {
	if r == nil {
		r = NewRunner()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	usable := 0
	for _, fam := range families {
		t, err := r.Family(fam)
		if err != nil {
			// A family whose iptables does not work cannot hold our rules.
			log.Debug("skipping firewall cleanup", "family", fam, "err", err)
			errs = append(errs, err)
			continue
		}
		usable++
		for _, table := range []string{natTable, mangleTable} {
			chains, err := t.ListChains(table)
			if err != nil {
				errs = append(errs, fmt.Errorf("listing %s %s chains: %w", fam, table, err))
				continue
			}
			for _, chain := range chains {
				if !strings.HasPrefix(chain, ChainPrefix) {
					continue
				}
				if _, err := removeChain(t, table, chain); err != nil {
					errs = append(errs, fmt.Errorf("removing %s chain %s: %w", fam, chain, err))
					continue
				}
				removed++
				log.Info("removed firewall rules", "family", fam, "table", table, "chain", chain)
			}
		}
		if err := cleanupRoutes(r, fam, log); err != nil {
			errs = append(errs, err)
		}
	}
	if usable == 0 {
		return 0, fmt.Errorf("cleaning up firewall rules: %w", errors.Join(errs...))
	}
	var real []error
	for _, e := range errs {
		if !errors.Is(e, ErrFamilyUnavailable) {
			real = append(real, e)
		}
	}
	if len(real) > 0 {
		return removed, fmt.Errorf("cleaning up firewall rules: %w", errors.Join(real...))
	}
	return removed, nil
}

// cleanupRoutes removes the UDP capture's ip rules and tables of fam,
// whichever instance made them: a table of ours whose rule is gone already
// (deleted by hand, or by a run killed between the two) is flushed too,
// which a look at the rules alone would miss.
func cleanupRoutes(r Runner, fam Family, log *slog.Logger) error {
	rt, err := r.Routes(fam)
	if err != nil {
		return err
	}
	rules, err := rt.List()
	if err != nil {
		return fmt.Errorf("listing %s ip rules: %w", fam, err)
	}
	for _, lr := range rules {
		if !lr.ours() {
			continue
		}
		if err := rt.Delete(lr); err != nil {
			return fmt.Errorf("removing %s ip rule %s: %w", fam, lr, err)
		}
		log.Info("removed UDP route", "family", fam, "rule", lr.String())
	}
	tables, err := rt.Tables()
	if err != nil {
		return fmt.Errorf("listing %s routing tables: %w", fam, err)
	}
	for _, table := range tables {
		lr := LocalRoute{Mark: (table - udpTableBase) << 24, Mask: udpMarkMask, Table: table}
		if !lr.ours() {
			continue
		}
		if err := rt.Delete(lr); err != nil {
			return fmt.Errorf("flushing %s routing table %d: %w", fam, table, err)
		}
		log.Info("removed UDP routing table", "family", fam, "table", table)
	}
	return nil
}

// removeChain deletes every jump to chain from the hook chains of table,
// then the chain itself. A chain or jump that is already gone is not an
// error, also when another process (a dying instance's root child, while
// `k8stunnel cleanup` runs) removes it between our look and our change.
func removeChain(t Tables, table, chain string) (removed bool, err error) {
	for _, hook := range hookChains {
		lines, err := t.List(table, hook)
		if err != nil {
			return removed, fmt.Errorf("listing %s: %w", hook, err)
		}
		for _, line := range lines {
			spec, ok := jumpSpec(line, hook, chain)
			if !ok {
				continue
			}
			if err := t.Delete(table, hook, spec...); err != nil {
				if still, xerr := t.Exists(table, hook, spec...); xerr != nil || still {
					return removed, fmt.Errorf("deleting jump %q: %w", line, err)
				}
			}
			removed = true
		}
	}
	exists, err := t.ChainExists(table, chain)
	if err != nil || !exists {
		return removed, err
	}
	if err := t.ClearAndDeleteChain(table, chain); err != nil {
		if still, xerr := t.ChainExists(table, chain); xerr != nil || still {
			return removed, err
		}
	}
	return true, nil
}

// jumpSpec returns the rule spec of line, as printed by `iptables -S hook`,
// when the rule jumps (or goes) to chain. Our own jumps carry no quoted
// words, so splitting on spaces is enough to hand the spec back to Delete.
func jumpSpec(line, hook, chain string) ([]string, bool) {
	fields := strings.Fields(line)
	if len(fields) < 2 || fields[0] != "-A" || fields[1] != hook {
		return nil, false
	}
	spec := fields[2:]
	return spec, jumpsTo(spec, chain)
}

// jumpsTo reports whether a rule spec jumps (-j) or goes (-g) to chain.
func jumpsTo(spec []string, chain string) bool {
	for i := 0; i+1 < len(spec); i++ {
		if (spec[i] == "-j" || spec[i] == "-g") && spec[i+1] == chain {
			return true
		}
	}
	return false
}

// heal re-installs want when the rules went missing or changed, or when a
// previous heal could not install them. It reports whether it installed.
func (f *Firewall) heal(want Spec) (restored bool, err error) {
	if _, installed := f.installedSpec(); installed {
		ok, err := f.Check()
		if err != nil || ok {
			return false, err
		}
	}
	if err := f.Install(want); err != nil {
		return false, fmt.Errorf("restoring firewall rules: %w", err)
	}
	return true, nil
}
