#!/usr/bin/env bash
# Installs what the e2e tests and the demo need on Debian, plus any packages named as arguments, and nothing when it
# is all there already. Needs root only when something is missing. Go itself is expected at /usr/local/go.
set -euo pipefail

packages=(openssh-server openssh-client iptables iproute2 curl procps sudo passwd dnsmasq-base postgresql iperf3 bind9-dnsutils "$@")

missing=()
for p in "${packages[@]}"; do
	if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
		missing+=("$p")
	fi
done

if ((${#missing[@]})); then
	if ((EUID != 0)); then
		echo "deps: missing packages: ${missing[*]}" >&2
		echo "hint: run as root: sudo scripts/deps.sh" >&2
		exit 1
	fi
	# The tests start their own sshd (and the bench its own iperf3) inside network namespaces; installing the
	# packages must not start the machine's. A policy-rc.d that says 101 forbids service starts during the install,
	# and debconf is told not to set up iperf3's daemon.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	# postgresql would create and start a "main" cluster; the tests run their own server in a namespace.
	if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
		mkdir -p /etc/postgresql-common
		echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
	fi
	echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
	echo "deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
	if [[ -x /usr/local/go/bin/go ]]; then
		echo "deps: go is not on PATH; add it with: export PATH=\$PATH:/usr/local/go/bin" >&2
	else
		echo "deps: go not found; install Go into /usr/local/go (see https://go.dev/doc/install)" >&2
		exit 1
	fi
fi
