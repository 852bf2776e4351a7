// Package firewall owns the iptables nat rules that steer TCP connections for
// the forwarded CIDRs into k8stunnel's local listener, the mangle rules, ip
// rule and route table that steer UDP into its transparent socket (udp.go),
// and nothing else.
//
// It is split in three layers so each can be read and tested on its own:
//
//   - Plan turns a Spec (CIDRs, excludes, DNS) into an ordered list of rules.
//     It is pure, so table-driven tests pin the exact rule text.
//   - Firewall applies a Spec through a Runner, the narrow seam over
//     github.com/coreos/go-iptables. Fake implements the seam in memory and
//     prints what it holds as text, so other packages' tests can use it too.
//   - ServeHelper and StartHelper are the two ends of a privilege split, like
//     sshuttle's firewall process: only the small helper runs as root, and it
//     removes every rule it installed when its stdin reaches EOF, which also
//     happens when the unprivileged parent is killed with SIGKILL. It also
//     marks the DNS proxy's upstream sockets (DNSMark, mark.go) and makes the
//     UDP capture's sockets transparent, which the parent may not do itself.
//
// The rules follow sshuttle's nat method: one chain K8STUNNEL-<port> in the nat
// table per family, reached from OUTPUT (this host's own connections) and
// PREROUTING (connections routed through this host, e.g. from containers) by a
// jump inserted at position 1.
package firewall
