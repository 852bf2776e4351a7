#!/usr/bin/env bash
# Installs what `make bench` needs on Debian on top of scripts/deps.sh (the e2e lab): the tools it compares
# k8stunnel with and the chart library. Installs nothing when it is all there already; needs root only when
# something is missing.
set -euo pipefail

# iperf3 measures throughput, sshuttle and openssh-client are the baselines, python3-matplotlib draws results.png.
packages=(iperf3 sshuttle openssh-client python3 python3-matplotlib)

missing=()
for p in "${packages[@]}"; do
	if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
		missing+=("$p")
	fi
done

if ((${#missing[@]})); then
	if ((EUID != 0)); then
		echo "bench-deps: missing packages: ${missing[*]}" >&2
		echo "hint: run as root: sudo scripts/bench-deps.sh" >&2
		exit 1
	fi
	# iperf3's package offers to start a system-wide iperf3 server: the bench starts its own, inside the lab,
	# so a policy-rc.d that says 101 forbids service starts during the install, and debconf is told no.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
	echo "bench-deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
