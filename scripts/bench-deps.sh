#!/usr/bin/env bash
# Installs what `make bench` needs on Debian on top of the e2e lab's packages: the tools it compares k8stunnel with
# (iperf3 measures throughput, sshuttle and openssh-client are the baselines) and python3-matplotlib for results.png.
set -euo pipefail
exec "$(dirname "$0")/deps.sh" iperf3 sshuttle openssh-client python3 python3-matplotlib
