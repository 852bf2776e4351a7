#!/usr/bin/env bash
# Installs what the e2e tests and the demo need on Debian, and nothing when it is all there already.
# Needs root only when something is missing. Go itself is expected at /usr/local/go.
set -euo pipefail

packages=(openssh-server openssh-client iptables iproute2 curl procps sudo dnsmasq-base)

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
	# The tests start their own sshd inside a network namespace; installing openssh-server must not start the
	# machine's sshd. A policy-rc.d that says 101 forbids service starts during the install.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
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
