#!/usr/bin/env bash
# Make sure a Docker engine answers; start one if we can (root on Debian/Ubuntu).
#   bash scripts/ensure-docker.sh
# Sandboxes run with --network none, so the daemon needs no bridge and no iptables rules.
set -euo pipefail

answers() { docker info >/dev/null 2>&1; }

if answers; then exit 0; fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no Docker engine answers; start one (e.g. 'sudo systemctl start docker') or run 'make docker' as root on Debian/Ubuntu" >&2
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing docker.io from Debian ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io >/dev/null
fi

echo "starting dockerd (--bridge=none --iptables=false) ..." >&2
mkdir -p /var/log
nohup dockerd --bridge=none --iptables=false --ip6tables=false >/var/log/rock-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if answers; then echo "docker engine is up" >&2; exit 0; fi
  sleep 1
done
echo "error: dockerd did not answer within 60 s; see /var/log/rock-dockerd.log" >&2
exit 1
