package firewall

import (
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter sends log lines to t.Log, so they show only for failing tests.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func mixedSpec(t testing.TB) Spec {
	return Spec{
		Port:    12300,
		Include: targets(t, "10.96.0.0/12", "fd00::/8"),
		Exclude: targets(t, "192.168.33.10"),
	}
}

const mixedDump = `iptables -t nat -N K8STUNNEL-12300
iptables -t nat -A OUTPUT -j K8STUNNEL-12300
iptables -t nat -A K8STUNNEL-12300 -d 192.168.33.10/32 -j RETURN
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.96.0.0/12 -p tcp -j REDIRECT --to-ports 12300
ip6tables -t nat -N K8STUNNEL-12300
ip6tables -t nat -A OUTPUT -j K8STUNNEL-12300
ip6tables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t nat -A K8STUNNEL-12300 -d fd00::/8 -p tcp -j REDIRECT --to-ports 12300
`

func TestInstallRemove(t *testing.T) {
	fake := &Fake{}
	// Someone else's rule in OUTPUT must survive, and ours go in front of it.
	v4, _ := fake.Family(IPv4)
	if err := v4.Append("nat", "OUTPUT", "-d", "10.0.0.1/32", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	fw := New(fake, testLogger(t))
	for i := range 2 { // twice: Install replaces, it does not add
		if err := fw.Install(mixedSpec(t)); err != nil {
			t.Fatalf("Install #%d: %v", i+1, err)
		}
		want := strings.Replace(mixedDump, "iptables -t nat -A OUTPUT -j K8STUNNEL-12300\n",
			"iptables -t nat -A OUTPUT -j K8STUNNEL-12300\niptables -t nat -A OUTPUT -d 10.0.0.1/32 -j ACCEPT\n", 1)
		if got := fake.Dump(); got != want {
			t.Fatalf("after Install #%d:\n%s\nwant\n%s", i+1, got, want)
		}
		if ok, err := fw.Check(); !ok || err != nil {
			t.Fatalf("Check after Install #%d = %v, %v; want true", i+1, ok, err)
		}
	}
	for i := range 2 {
		if err := fw.Remove(); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
		if got, want := fake.Dump(), "iptables -t nat -A OUTPUT -d 10.0.0.1/32 -j ACCEPT\n"; got != want {
			t.Fatalf("after Remove #%d:\n%s\nwant\n%s", i+1, got, want)
		}
	}
}

func TestInstallDifferentSpecReplaces(t *testing.T) {
	fake := &Fake{}
	fw := New(fake, testLogger(t))
	if err := fw.Install(mixedSpec(t)); err != nil {
		t.Fatal(err)
	}
	if err := fw.Install(Spec{Port: 5, Include: targets(t, "10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	const want = `iptables -t nat -N K8STUNNEL-5
iptables -t nat -A OUTPUT -j K8STUNNEL-5
iptables -t nat -A K8STUNNEL-5 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-5 -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 5
`
	if got := fake.Dump(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestInstallRemovesStaleChain(t *testing.T) {
	fake := &Fake{}
	// A previous run was killed before it could clean up, in both families,
	// even though this run has no IPv6 targets.
	if err := New(fake, testLogger(t)).Install(mixedSpec(t)); err != nil {
		t.Fatal(err)
	}
	fw := New(fake, testLogger(t))
	if err := fw.Install(Spec{Port: 12300, Include: targets(t, "10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	const want = `iptables -t nat -N K8STUNNEL-12300
iptables -t nat -A OUTPUT -j K8STUNNEL-12300
iptables -t nat -A K8STUNNEL-12300 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-12300 -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 12300
`
	if got := fake.Dump(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestInstallWithoutIPv6(t *testing.T) {
	fake := &Fake{Unavailable: map[Family]bool{IPv6: true}}
	fw := New(fake, testLogger(t))
	err := fw.Install(mixedSpec(t))
	if !errors.Is(err, ErrFamilyUnavailable) || !strings.Contains(err.Error(), "drop the IPv6 targets") {
		t.Fatalf("Install with an IPv6 target and no ip6tables = %v; want ErrFamilyUnavailable with a hint", err)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("failed Install left rules behind:\n%s", got)
	}
	// IPv4-only specs do not need ip6tables.
	if err := fw.Install(Spec{Port: 1, Include: targets(t, "10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
}

func TestInstallFailureRollsBack(t *testing.T) {
	fake := &Fake{}
	fake.Fail = func(op string, fam Family, table, chain string) error {
		if fam == IPv6 && op == "-I" && chain == "OUTPUT" {
			return errors.New("injected")
		}
		return nil
	}
	fw := New(fake, testLogger(t))
	if err := fw.Install(mixedSpec(t)); err == nil {
		t.Fatal("Install succeeded despite the injected failure")
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("failed Install left rules behind:\n%s", got)
	}
	if ok, err := fw.Check(); !ok || err != nil {
		t.Fatalf("Check after failed Install = %v, %v; want true (nothing installed)", ok, err)
	}
}

func TestCheckDetectsChanges(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(t *testing.T, fake *Fake)
	}{
		{"missing OUTPUT jump", func(t *testing.T, fake *Fake) {
			v6, _ := fake.Family(IPv6)
			if err := v6.Delete("nat", "OUTPUT", "-j", "K8STUNNEL-12300"); err != nil {
				t.Fatal(err)
			}
		}},

		{"flushed nat table", func(t *testing.T, fake *Fake) { fake.Flush(IPv4, "nat") }},
		{"chain deleted", func(t *testing.T, fake *Fake) {
			fake.Flush(IPv6, "nat")
			v6, _ := fake.Family(IPv6)
			if err := v6.ClearAndDeleteChain("nat", "K8STUNNEL-12300"); err != nil {
				t.Fatal(err)
			}
		}},
		{"extra rule in chain", func(t *testing.T, fake *Fake) {
			v4, _ := fake.Family(IPv4)
			if err := v4.Append("nat", "K8STUNNEL-12300", "-j", "RETURN"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake := &Fake{}
			fw := New(fake, testLogger(t))
			if err := fw.Install(mixedSpec(t)); err != nil {
				t.Fatal(err)
			}
			tt.mutate(t, fake)
			if ok, err := fw.Check(); ok || err != nil {
				t.Fatalf("Check = %v, %v; want false", ok, err)
			}
			restored, err := fw.heal(mixedSpec(t))
			if !restored || err != nil {
				t.Fatalf("heal = %v, %v; want true", restored, err)
			}
			if got := fake.Dump(); got != mixedDump {
				t.Fatalf("after heal:\n%s\nwant\n%s", got, mixedDump)
			}
		})
	}
}

func TestCleanup(t *testing.T) {
	fake := &Fake{}
	for _, port := range []uint16{1000, 2000, 3000} {
		// Separate Firewalls, as separate runs that all died would leave.
		spec := Spec{Port: port, Include: targets(t, "10.0.0.0/8")}
		if port == 2000 {
			spec.Include = targets(t, "10.0.0.0/8", "fd00::/8")
		}
		if err := New(fake, testLogger(t)).Install(spec); err != nil {
			t.Fatal(err)
		}
	}
	v4, _ := fake.Family(IPv4)
	if err := v4.NewChain("nat", "OTHER"); err != nil {
		t.Fatal(err)
	}
	if err := v4.Append("nat", "OUTPUT", "-j", "OTHER"); err != nil {
		t.Fatal(err)
	}
	removed, err := Cleanup(fake, testLogger(t))
	if err != nil || removed != 4 {
		t.Fatalf("Cleanup = %d, %v; want 4 chains removed", removed, err)
	}
	const want = "iptables -t nat -N OTHER\niptables -t nat -A OUTPUT -j OTHER\n"
	if got := fake.Dump(); got != want {
		t.Fatalf("after Cleanup:\n%s\nwant\n%s", got, want)
	}
	if removed, err := Cleanup(fake, testLogger(t)); err != nil || removed != 0 {
		t.Fatalf("second Cleanup = %d, %v; want 0, nil", removed, err)
	}
}

func TestCleanupWithoutIPv6(t *testing.T) {
	fake := &Fake{Unavailable: map[Family]bool{IPv6: true}}
	if err := New(fake, testLogger(t)).Install(Spec{Port: 1, Include: targets(t, "10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	if removed, err := Cleanup(fake, testLogger(t)); err != nil || removed != 1 {
		t.Fatalf("Cleanup = %d, %v; want 1, nil", removed, err)
	}
	fake.Unavailable[IPv4] = true
	if _, err := Cleanup(fake, testLogger(t)); !errors.Is(err, ErrFamilyUnavailable) {
		t.Fatalf("Cleanup with no iptables at all = %v; want ErrFamilyUnavailable", err)
	}
}

// TestGatewayHooks: only gateway mode captures routed connections
// (PREROUTING); by default nothing but this host's own (OUTPUT) is captured.
func TestGatewayHooks(t *testing.T) {
	fake := &Fake{}
	fw := New(fake, testLogger(t))
	spec := Spec{Port: 5, Include: targets(t, "10.0.0.0/8")}
	if err := fw.Install(spec); err != nil {
		t.Fatal(err)
	}
	if got := fake.Dump(); strings.Contains(got, "PREROUTING") {
		t.Fatalf("PREROUTING captured without gateway mode:\n%s", got)
	}
	spec.Gateway = true
	if err := fw.Install(spec); err != nil {
		t.Fatal(err)
	}
	const want = `iptables -t nat -N K8STUNNEL-5
iptables -t nat -A PREROUTING -j K8STUNNEL-5
iptables -t nat -A OUTPUT -j K8STUNNEL-5
iptables -t nat -A K8STUNNEL-5 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-5 -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 5
`
	if got := fake.Dump(); got != want {
		t.Fatalf("gateway mode:\n%s\nwant\n%s", got, want)
	}
	v4, _ := fake.Family(IPv4)
	if err := v4.Delete("nat", "PREROUTING", "-j", "K8STUNNEL-5"); err != nil {
		t.Fatal(err)
	}
	if ok, err := fw.Check(); ok || err != nil {
		t.Errorf("Check with the PREROUTING jump gone = %v, %v; want false", ok, err)
	}
	if err := fw.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := fake.Dump(); got != "" {
		t.Errorf("after Remove:\n%s", got)
	}
}

// TestInstancesOnOnePort: two instances on the same port but different
// listen addresses (-l 127.0.0.1:P, -l [::1]:P) each keep their own chain,
// instead of removing each other's as stale and healing it back every second.
func TestInstancesOnOnePort(t *testing.T) {
	fake := &Fake{}
	a, b := New(fake, testLogger(t)), New(fake, testLogger(t))
	specA := Spec{Port: 12300, Include: targets(t, "10.96.0.0/12"), Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:12300")}}
	specB := Spec{Port: 12300, Include: targets(t, "fd00::/8"), Listen: []netip.AddrPort{netip.MustParseAddrPort("[::1]:12300")}}
	if ChainName(specA) == ChainName(specB) || !strings.HasPrefix(ChainName(specA), "K8STUNNEL-12300-") || len(ChainName(specA)) > 28 {
		t.Fatalf("chain names %q and %q: want distinct K8STUNNEL-12300-<hash>, at most 28 characters", ChainName(specA), ChainName(specB))
	}
	if err := a.Install(specA); err != nil {
		t.Fatal(err)
	}
	if err := b.Install(specB); err != nil {
		t.Fatal(err)
	}
	for name, fw := range map[string]*Firewall{"first": a, "second": b} {
		if ok, err := fw.Check(); !ok || err != nil {
			t.Errorf("%s instance's Check = %v, %v; want true", name, ok, err)
		}
	}
	if err := a.Remove(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Check(); !ok || err != nil {
		t.Errorf("after the first instance left, the second's Check = %v, %v; want true", ok, err)
	}
}

// TestInstallRemoveUDP: the UDP capture's mangle chains and ip rule go in
// with the nat chain and all of it comes out again, by Remove and by
// Cleanup, which needs no saved state.
func TestInstallRemoveUDP(t *testing.T) {
	fake := &Fake{}
	spec := Spec{Port: 7, UDPPort: 8, Include: targets(t, "10.0.0.0/8", "fd00::/8")}
	fw := New(fake, testLogger(t))
	if err := fw.Install(spec); err != nil {
		t.Fatal(err)
	}
	mark := markMatch(UDPMark(spec), udpMarkMask)
	want := strings.ReplaceAll(`iptables -t mangle -N K8STUNNEL-7
iptables -t mangle -N K8STUNNEL-7-T
iptables -t mangle -A PREROUTING -j K8STUNNEL-7-T
iptables -t mangle -A OUTPUT -j K8STUNNEL-7
iptables -t mangle -A K8STUNNEL-7 -m mark --mark 0x10000000/0x10000000 -j RETURN
iptables -t mangle -A K8STUNNEL-7 -m addrtype --dst-type LOCAL -j RETURN
iptables -t mangle -A K8STUNNEL-7 -m addrtype --dst-type BROADCAST -j RETURN
iptables -t mangle -A K8STUNNEL-7 -m addrtype --dst-type MULTICAST -j RETURN
iptables -t mangle -A K8STUNNEL-7 -d 10.0.0.0/8 -p udp -j MARK --set-xmark @M
iptables -t mangle -A K8STUNNEL-7-T -p udp -m mark --mark @M -j TPROXY --on-port 8 --on-ip 127.0.0.1 --tproxy-mark @M
iptables -t nat -N K8STUNNEL-7
iptables -t nat -A OUTPUT -j K8STUNNEL-7
iptables -t nat -A K8STUNNEL-7 -m addrtype --dst-type LOCAL -j RETURN
iptables -t nat -A K8STUNNEL-7 -d 10.0.0.0/8 -p tcp -j REDIRECT --to-ports 7
ip6tables -t mangle -N K8STUNNEL-7
ip6tables -t mangle -N K8STUNNEL-7-T
ip6tables -t mangle -A PREROUTING -j K8STUNNEL-7-T
ip6tables -t mangle -A OUTPUT -j K8STUNNEL-7
ip6tables -t mangle -A K8STUNNEL-7 -m mark --mark 0x10000000/0x10000000 -j RETURN
ip6tables -t mangle -A K8STUNNEL-7 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t mangle -A K8STUNNEL-7 -m addrtype --dst-type MULTICAST -j RETURN
ip6tables -t mangle -A K8STUNNEL-7 -d fd00::/8 -p udp -j MARK --set-xmark @M
ip6tables -t mangle -A K8STUNNEL-7-T -p udp -m mark --mark @M -j TPROXY --on-port 8 --on-ip ::1 --tproxy-mark @M
ip6tables -t nat -N K8STUNNEL-7
ip6tables -t nat -A OUTPUT -j K8STUNNEL-7
ip6tables -t nat -A K8STUNNEL-7 -m addrtype --dst-type LOCAL -j RETURN
ip6tables -t nat -A K8STUNNEL-7 -d fd00::/8 -p tcp -j REDIRECT --to-ports 7
ip -4 rule add fwmark @M lookup TABLE
ip -4 route add local 0.0.0.0/0 dev lo table TABLE
ip -6 rule add fwmark @M lookup TABLE
ip -6 route add local ::/0 dev lo table TABLE
`, "@M", mark)
	want = strings.ReplaceAll(want, "TABLE", strconv.Itoa(int(UDPTable(spec))))
	if got := fake.Dump(); got != want {
		t.Fatalf("after Install:\n%s\nwant\n%s", got, want)
	}
	if ok, err := fw.Check(); !ok || err != nil {
		t.Fatalf("Check = %v, %v; want true", ok, err)
	}
	v4, _ := fake.Family(IPv4)
	if err := v4.Delete("mangle", "PREROUTING", "-j", "K8STUNNEL-7-T"); err != nil {
		t.Fatal(err)
	}
	if ok, err := fw.Check(); ok || err != nil {
		t.Fatalf("Check with the TPROXY jump gone = %v, %v; want false", ok, err)
	}
	if err := fw.Install(spec); err != nil {
		t.Fatal(err)
	}
	rt, _ := fake.Routes(IPv6)
	if err := rt.Delete(LocalRoute{Mark: UDPMark(spec), Mask: udpMarkMask, Table: UDPTable(spec)}); err != nil {
		t.Fatal(err)
	}
	if ok, err := fw.Check(); ok || err != nil {
		t.Fatalf("Check with the IPv6 ip rule gone = %v, %v; want false", ok, err)
	}
	// The rule alone, its table emptied (ip route flush table, a network
	// manager dropping routes it did not make): marked datagrams would leave
	// by the default route.
	if err := fw.Install(spec); err != nil {
		t.Fatal(err)
	}
	fake.FlushTable(IPv4, UDPTable(spec))
	if ok, err := fw.Check(); ok || err != nil {
		t.Fatalf("Check with the IPv4 UDP table flushed = %v, %v; want false", ok, err)
	}
	if err := fw.Install(spec); err != nil {
		t.Fatal(err)
	}
	if got := fake.Dump(); got != want {
		t.Fatalf("after reinstalling over a flushed table:\n%s\nwant\n%s", got, want)
	}
	for range 2 {
		if err := fw.Remove(); err != nil {
			t.Fatal(err)
		}
		if got := fake.Dump(); got != "" {
			t.Fatalf("after Remove:\n%s", got)
		}
	}
	if err := New(fake, testLogger(t)).Install(spec); err != nil {
		t.Fatal(err)
	}
	if removed, err := Cleanup(fake, testLogger(t)); err != nil || removed != 6 {
		t.Fatalf("Cleanup = %d, %v; want 6 chains", removed, err)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("after Cleanup:\n%s", got)
	}
}

// racingRunner is a Fake where, just before each jump deletion and chain
// deletion, another process (a dying instance's root child) does it first,
// so ours fails the way iptables then fails.
type racingRunner struct{ *Fake }

func (r racingRunner) Family(fam Family) (Tables, error) {
	t, err := r.Fake.Family(fam)
	return racingTables{t}, err
}

type racingTables struct{ Tables }

func (t racingTables) Delete(table, chain string, spec ...string) error {
	t.Tables.Delete(table, chain, spec...)
	return errors.New("iptables: Bad rule (does a matching rule exist in that chain?)")
}

func (t racingTables) ClearAndDeleteChain(table, chain string) error {
	t.Tables.ClearAndDeleteChain(table, chain)
	return errors.New("iptables: No chain/target/match by that name")
}

// TestCleanupRacesAnotherRemover: `k8stunnel cleanup` run while a killed
// tunnel's root child is removing the same rules succeeds, with everything
// gone, instead of failing on what the other removed first.
func TestCleanupRacesAnotherRemover(t *testing.T) {
	fake := &Fake{}
	spec := Spec{Port: 7, UDPPort: 8, Include: targets(t, "10.0.0.0/8")}
	if err := New(fake, testLogger(t)).Install(spec); err != nil {
		t.Fatal(err)
	}
	if removed, err := Cleanup(racingRunner{fake}, testLogger(t)); err != nil || removed != 3 {
		t.Fatalf("Cleanup = %d, %v; want 3 chains and no error", removed, err)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("after Cleanup:\n%s", got)
	}
}

// collidingSpecs are two instances' specs whose chain names hash to the same
// UDP mark.
func collidingSpecs(t *testing.T) (a, b Spec) {
	a = Spec{Port: 12300, UDPPort: 12300, Include: targets(t, "10.96.0.0/12")}
	b = a
	for b.Port = 1; udpIndex(b) != udpIndex(a) || b.Port == a.Port; b.Port++ {
	}
	b.UDPPort = b.Port
	return a, b
}

// TestUDPInstancesTakeOwnMarks: two instances whose chain names hash to the
// same UDP mark still get different marks and tables, or each would take the
// other's datagrams.
func TestUDPInstancesTakeOwnMarks(t *testing.T) {
	specA, specB := collidingSpecs(t)
	fake := &Fake{}
	a, b := New(fake, testLogger(t)), New(fake, testLogger(t))
	if err := a.Install(specA); err != nil {
		t.Fatal(err)
	}
	if err := b.Install(specB); err != nil {
		t.Fatal(err)
	}
	ra, rb := a.installed.fams[0].route, b.installed.fams[0].route
	if ra.Mark == rb.Mark || ra.Table == rb.Table || !ra.ours() || !rb.ours() {
		t.Fatalf("instances on ports %d and %d got routes %v and %v; want their own mark and table each", specA.Port, specB.Port, ra, rb)
	}
	if !strings.Contains(fake.Dump(), "--set-xmark "+markMatch(rb.Mark, udpMarkMask)) {
		t.Errorf("the second instance's rules do not use its mark %#x:\n%s", rb.Mark, fake.Dump())
	}
	// Healing reinstalls with the same choice while the other is there.
	if err := b.Install(specB); err != nil {
		t.Fatal(err)
	}
	if got := b.installed.fams[0].route; got != rb {
		t.Errorf("reinstalled with %v, want %v again", got, rb)
	}
	for _, fw := range []*Firewall{a, b} {
		if err := fw.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if got := fake.Dump(); got != "" {
		t.Errorf("after both removed:\n%s", got)
	}
}

// TestUDPInstancesStartingTogether: two instances installing at the same time
// (two root children, each with its own Firewall) still get their own mark.
// The first is held right after it chose its mark, before its TPROXY chain
// exists; the second then runs, and without the install lock it chose the
// same mark, since it saw nothing in use.
func TestUDPInstancesStartingTogether(t *testing.T) {
	specA, specB := collidingSpecs(t)
	lock := filepath.Join(t.TempDir(), "lock")
	blocked := make(chan struct{})
	bDone := make(chan error, 1)
	var once sync.Once
	fake := &Fake{}
	b := New(fake, testLogger(t))
	a := New(newChainHook{Runner: fake, hook: func(chain string) {
		if chain != UDPChainName(specA) {
			return
		}
		once.Do(func() {
			go func() { bDone <- b.Install(specB) }()
			select {
			case err := <-bDone:
				bDone <- err // B went all the way while A was half done
			case <-blocked:
			}
		})
	}}, testLogger(t))
	for _, fw := range []*Firewall{a, b} {
		fw.lockPath = lock
	}
	b.lockWaiting = func() { close(blocked) }
	if err := a.Install(specA); err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatal(err)
	}
	ra, rb := a.installed.fams[0].route, b.installed.fams[0].route
	if ra.Mark == rb.Mark || ra.Table == rb.Table {
		t.Fatalf("instances installing together got routes %v and %v; want their own mark and table each", ra, rb)
	}
	for _, fw := range []*Firewall{a, b} {
		if err := fw.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if got := fake.Dump(); got != "" {
		t.Errorf("after both removed:\n%s", got)
	}
}

// newChainHook is a Runner whose Tables call hook before creating a chain.
type newChainHook struct {
	Runner
	hook func(chain string)
}

func (r newChainHook) Family(fam Family) (Tables, error) {
	t, err := r.Runner.Family(fam)
	if err != nil {
		return nil, err
	}
	return hookTables{Tables: t, hook: r.hook}, nil
}

type hookTables struct {
	Tables
	hook func(chain string)
}

func (t hookTables) NewChain(table, chain string) error {
	t.hook(chain)
	return t.Tables.NewChain(table, chain)
}

// TestInstallLockMissingDir: without the lock's directory (no /run), Install
// still installs.
func TestInstallLockMissingDir(t *testing.T) {
	fw := New(&Fake{}, testLogger(t))
	fw.lockPath = filepath.Join(t.TempDir(), "missing", "lock")
	if err := fw.Install(Spec{Port: 12300, UDPPort: 12300, Include: targets(t, "10.96.0.0/12")}); err != nil {
		t.Fatal(err)
	}
	if err := fw.Remove(); err != nil {
		t.Fatal(err)
	}
}

// TestCleanupOrphanTable: a UDP capture's table whose ip rule is gone
// already (deleted by hand, or by a run killed between the two) still has
// its route; Cleanup finds it by number, as it finds chains by name.
func TestCleanupOrphanTable(t *testing.T) {
	fake := &Fake{}
	spec := Spec{Port: 7, UDPPort: 8, Include: targets(t, "10.0.0.0/8", "fd00::/8")}
	if err := New(fake, testLogger(t)).Install(spec); err != nil {
		t.Fatal(err)
	}
	fake.DeleteRule(IPv6, LocalRoute{Mark: UDPMark(spec), Mask: udpMarkMask, Table: UDPTable(spec)})
	if _, err := Cleanup(fake, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if got := fake.Dump(); got != "" {
		t.Fatalf("after Cleanup:\n%s", got)
	}
}

func TestParseTables(t *testing.T) {
	out := `local default dev lo table 27449 scope host
local ::/0 dev lo table 27450 metric 1024 pref medium
broadcast 127.255.255.255 dev lo table local proto kernel scope link src 127.0.0.1
default via 10.0.0.1 dev eth0
local 10.0.0.2 dev eth0 table 27449 proto kernel scope host src 10.0.0.2
`
	if got := parseTables(out); !slices.Equal(got, []uint32{27449, 27450}) {
		t.Fatalf("parseTables = %v, want [27449 27450]", got)
	}
}
