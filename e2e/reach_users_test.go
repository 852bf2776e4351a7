//go:build linux

package e2e

// Every way real users get to a node (issue 10), against the real OpenSSH sshd: a bastion, passwords, certificates,
// SSH as the user who ran sudo, and a user who runs only the firewall part as root through `k8stunnel sudoers`. One
// lab for all; each subtest adds what it needs to it (a bastion namespace, a second sshd on the node, local users):
//
//	laptop ── 10.200.1.0/24 ── node: sshd :22 (keys), sshd :2222 (passwords, user CA, host certificate)
//	   └───── 10.200.2.0/24 ── bastion: sshd :22 ── 10.200.3.0/24 ── node: sshd on 10.200.3.2:22

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReach(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("sudo"); err != nil {
		t.Fatal("sudo is not installed; install the test dependencies with: sudo scripts/deps.sh")
	}
	// Users first: t.Cleanup runs last-in first-out, so the lab (and her processes in it) is gone before they are.
	alice := addUser(t, "correct horse")
	bob := addUser(t, "")
	lab := newLab(t)
	pub, removePub, err := PublicCopy(binary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(removePub)

	t.Run("bastion", func(t *testing.T) {
		b, err := lab.AddBastion()
		if err != nil {
			t.Fatal(err)
		}
		// No route from the laptop to the node's address behind the bastion: only -J can get there.
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		if c, err := lab.Laptop.Dial(ctx, "tcp", net.JoinHostPort(NodeBehindAddr, "22")); err == nil {
			c.Close()
			t.Fatalf("the laptop reaches %s directly", NodeBehindAddr)
		}
		// 10.200.0.0/16 holds the bastion too: without its exemption the tunnel would capture its own connection.
		cidrs := []string{ServiceCIDR, "10.200.0.0/16"}
		common := []string{"-i", lab.Identity, "--known-hosts", b.KnownHosts}
		config := filepath.Join(t.TempDir(), "ssh_config")
		if err := os.WriteFile(config, []byte("Host behind\n  HostName "+NodeBehindAddr+"\n  User root\n  ProxyJump root@"+BastionAddr+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"-J", append(append([]string{"-J", "root@" + BastionAddr, "-r", "root@" + NodeBehindAddr, "-F", "/dev/null"}, common...), cidrs...)},
			{"ProxyJump", append(append([]string{"-r", "behind", "-F", config}, common...), cidrs...)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := startClientArgs(t, lab, tc.args...)
				httpGet(t, lab, "http://"+ServiceIP+"/")
				if want := `remote="root@` + NodeBehindAddr + `:22 via ` + BastionAddr + `:22"`; !strings.Contains(c.Stderr(), want) {
					t.Errorf("the log does not name the node and the bastion (%s):\n%s", want, c.Stderr())
				}
				rules := iptablesSave(t, lab)
				if !strings.Contains(rules, "-d "+BastionAddr+"/32 -j RETURN") {
					t.Errorf("no RETURN for the bastion %s in the laptop's rules:\n%s", BastionAddr, rules)
				}
				if strings.Contains(rules, NodeBehindAddr) {
					t.Errorf("the rules name the node %s, which the laptop never connects to:\n%s", NodeBehindAddr, rules)
				}
				stopClient(t, c)
			})
		}
		// ProxyCommand: OpenSSH's ssh carries the connection through the bastion. The tunnel has no address of its
		// own then, so the bastion is excluded by hand, as the README says.
		t.Run("ProxyCommand", func(t *testing.T) {
			pc := filepath.Join(t.TempDir(), "ssh_config")
			jump := "ssh -F /dev/null -i " + lab.Identity + " -o UserKnownHostsFile=" + b.KnownHosts +
				" -o BatchMode=yes -W %h:%p root@" + BastionAddr
			if err := os.WriteFile(pc, []byte("Host behind\n  HostName "+NodeBehindAddr+"\n  User root\n  ProxyCommand "+jump+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			c := startClientArgs(t, lab, append(append([]string{"-r", "behind", "-F", pc, "-x", BastionAddr}, common...), cidrs...)...)
			httpGet(t, lab, "http://"+ServiceIP+"/")
			if rules := iptablesSave(t, lab); strings.Contains(rules, NodeBehindAddr) {
				t.Errorf("the rules name the node %s, which the laptop never connects to:\n%s", NodeBehindAddr, rules)
			}
			stopClient(t, c)
		})
	})

	// A second sshd on the node for alice: her password, a user CA, and a host certificate.
	dir := t.TempDir()
	keygen := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ssh-keygen", append([]string{"-q"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen %q: %v: %s", args, err, out)
		}
	}
	ca, hostKey, aliceKey := filepath.Join(dir, "ca"), filepath.Join(dir, "host_key"), filepath.Join(dir, "id_alice")
	for _, k := range []string{ca, hostKey, aliceKey} {
		keygen("-t", "ed25519", "-N", "", "-f", k)
	}
	keygen("-s", ca, "-I", "lab-node", "-h", "-n", NodeAddr, hostKey+".pub")
	keygen("-s", ca, "-I", "alice", "-n", alice.Name, aliceKey+".pub")
	os.Remove(aliceKey + ".pub") // only the key and its certificate are left
	caPub, err := os.ReadFile(ca + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	const port = "2222"
	if _, err := lab.StartSSHD(lab.Node, "sshd-reach", []string{NodeAddr + ":" + port},
		"PasswordAuthentication yes",
		"TrustedUserCAKeys "+ca+".pub",
		"HostKey "+hostKey,
		"HostCertificate "+hostKey+"-cert.pub",
	); err != nil {
		t.Fatal(err)
	}
	// The host is known only through the CA.
	caKnownHosts := filepath.Join(dir, "known_hosts_ca")
	if err := os.WriteFile(caKnownHosts, []byte("@cert-authority ["+NodeAddr+"]:"+port+" "+string(caPub)), 0o600); err != nil {
		t.Fatal(err)
	}
	remote := alice.Name + "@" + NodeAddr + ":" + port
	// $HOME without keys: only what each case gives counts.
	emptyHome := t.TempDir()

	t.Run("certificates", func(t *testing.T) {
		c := startClientEnv(t, lab, []string{"HOME=" + emptyHome},
			"-r", remote, "-i", aliceKey, "--known-hosts", caKnownHosts, "-F", "/dev/null", ServiceCIDR)
		httpGet(t, lab, "http://"+ServiceIP+"/")
		stopClient(t, c)
		if strings.Contains(c.Stderr(), "changed") {
			t.Errorf("the host certificate was reported as a changed key:\n%s", c.Stderr())
		}
		if !strings.Contains(lab.sshdLogs(), "Accepted publickey for "+alice.Name) || !strings.Contains(lab.sshdLogs(), "ED25519-CERT") {
			t.Errorf("sshd did not log a certificate login for %s:\n%s", alice.Name, lab.sshdLogs())
		}
	})

	askpass := func(password string) []string {
		script := filepath.Join(t.TempDir(), "askpass")
		if err := os.WriteFile(script, []byte("#!/bin/sh\necho '"+password+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return []string{"HOME=" + emptyHome, "SSH_ASKPASS=" + script, "SSH_ASKPASS_REQUIRE=force", "DISPLAY="}
	}
	t.Run("password through SSH_ASKPASS", func(t *testing.T) {
		c := startClientEnv(t, lab, askpass("correct horse"),
			"-r", remote, "--known-hosts", caKnownHosts, "-F", "/dev/null", ServiceCIDR)
		httpGet(t, lab, "http://"+ServiceIP+"/")
		stopClient(t, c)
		if !strings.Contains(lab.sshdLogs(), "Accepted password for "+alice.Name) {
			t.Errorf("sshd did not log a password login for %s:\n%s", alice.Name, lab.sshdLogs())
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		c, err := StartClientCmd(lab, func(cmd *exec.Cmd) { cmd.Env = withEnv(cmd.Env, askpass("wrong")...) }, binary,
			"-r", remote, "--known-hosts", caKnownHosts, "-F", "/dev/null", ServiceCIDR)
		if err != nil {
			t.Fatal(err)
		}
		watchClient(t, c)
		if err := c.Wait(30 * time.Second); err == nil {
			t.Fatal("k8stunnel exited 0 with a wrong password")
		}
		checkOneErrorLine(t, c.Stderr(), alice.Name)
		if strings.Contains(c.Stderr(), "no SSH key found") {
			t.Errorf("a refused password is blamed on missing keys:\n%s", c.Stderr())
		}
	})

	// alice's own ~/.ssh is all there is: her key, her known_hosts, her ssh_config naming the node. Root's has
	// none of it (no key for the lab, no host "labnode").
	t.Run("sudo as yourself", func(t *testing.T) {
		files := labSSHFiles(t, lab)
		files["config"] = "Host labnode\n  HostName " + NodeAddr + "\n  User root\n"
		if err := alice.WriteSSHFiles(files); err != nil {
			t.Fatal(err)
		}
		removeRule, err := AllowSudo(alice.Name, pub)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := removeRule(); err != nil {
				t.Errorf("removing the sudoers entry: %v", err)
			}
		})
		c := startAsUser(t, lab, alice, AsUser(alice.Name, alice.Name, "sudo", "-n", pub, "-v", "-r", "labnode", ServiceCIDR))
		httpGet(t, lab, "http://"+ServiceIP+"/")
		stopClient(t, c)
		if want := `from="ssh -G" host=labnode user=root hostname=` + NodeAddr + ` port=22 local_user=` + alice.Name; !strings.Contains(c.Stderr(), want) {
			t.Errorf("the client did not resolve labnode through ssh -G as %s (want %q in its log)", alice.Name, want)
		}

		// With -e, the command is her ssh too: run as her, it reads her config, key and known_hosts.
		c = startAsUser(t, lab, alice, AsUser(alice.Name, alice.Name, "sudo", "-n", pub, "-e", "ssh -o BatchMode=yes", "-r", "labnode", ServiceCIDR))
		httpGet(t, lab, "http://"+ServiceIP+"/")
		stopClient(t, c)
	})

	// bob may run nothing as root but what `k8stunnel sudoers` printed for him.
	t.Run("k8stunnel sudoers", func(t *testing.T) {
		out, err := lab.Laptop.Command(t.Context(), AsUser(bob.Name, bob.Name, pub, "sudoers")[0], AsUser(bob.Name, bob.Name, pub, "sudoers")[1:]...).Output()
		if err != nil {
			t.Fatalf("k8stunnel sudoers as %s: %v", bob.Name, err)
		}
		if want := "\n" + bob.Name + " ALL=(root) NOPASSWD: " + pub + " firewall\n"; !strings.HasSuffix(string(out), want) {
			t.Fatalf("k8stunnel sudoers printed:\n%s\nwant it to end with %q", out, want)
		}
		removeRule, err := InstallSudoers(string(out))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := removeRule(); err != nil {
				t.Errorf("removing the sudoers entry: %v", err)
			}
		})
		if err := bob.WriteSSHFiles(labSSHFiles(t, lab)); err != nil {
			t.Fatal(err)
		}
		c := startAsUser(t, lab, bob, AsUser(bob.Name, bob.Name, pub, "-r", "root@"+NodeAddr, ServiceCIDR))
		httpGet(t, lab, "http://"+ServiceIP+"/")
		rootFirewallChild(t, lab, pub)
		stopClient(t, c)
	})
}

func addUser(t *testing.T, password string) *User {
	t.Helper()
	requireRoot(t)
	u, remove, err := AddUser(password)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := remove(); err != nil {
			t.Errorf("removing user %s: %v", u.Name, err)
		}
	})
	return u
}

// startClientEnv starts the test's k8stunnel with env added to its environment and waits until it is ready.
func startClientEnv(t *testing.T, lab *Lab, env []string, args ...string) *Client {
	t.Helper()
	return startReady(t, lab, func(cmd *exec.Cmd) { cmd.Env = withEnv(cmd.Env, env...) }, binary, args...)
}

// startAsUser runs argv (from AsUser) in the laptop with u's login environment and waits until it is ready.
func startAsUser(t *testing.T, lab *Lab, u *User, argv []string) *Client {
	t.Helper()
	env := UserEnv(u.Name, u.Home, "/usr/local/bin:/usr/bin:/bin")
	return startReady(t, lab, func(cmd *exec.Cmd) { cmd.Env = env }, argv[0], argv[1:]...)
}

// startReady runs name in the laptop, customized, and waits until it is ready.
func startReady(t *testing.T, lab *Lab, customize func(*exec.Cmd), name string, args ...string) *Client {
	t.Helper()
	c, err := StartClientCmd(lab, customize, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	watchClient(t, c)
	if err := c.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	return c
}

// sshdLogs is what every sshd of the lab has logged.
func (l *Lab) sshdLogs() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, d := range l.sshds {
		b.WriteString(d.Log())
	}
	return b.String()
}

// labSSHFiles is the lab's key and known_hosts as a user's ~/.ssh files.
func labSSHFiles(t *testing.T, lab *Lab) map[string]string {
	t.Helper()
	identity, err := os.ReadFile(lab.Identity)
	if err != nil {
		t.Fatal(err)
	}
	known, err := os.ReadFile(lab.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"id_ed25519": string(identity), "known_hosts": string(known)}
}
