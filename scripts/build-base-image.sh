#!/usr/bin/env bash
# Build the sandbox base image rock/base:bookworm from debootstrap (no registry needed).
#   bash scripts/build-base-image.sh [TAG]
# Skips the build when the tag exists. Uses the Debian mirror named in the machine's apt sources.
set -euo pipefail
TAG=${1:-rock/base:bookworm}
if docker image inspect "$TAG" >/dev/null 2>&1; then exit 0; fi

mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
         | grep -oE 'https?://[^ ]+' | grep -v security | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  else
    echo "error: debootstrap is missing; install it (apt-get install debootstrap) and re-run 'make images'" >&2
    exit 1
  fi
fi

root=$(mktemp -d /tmp/rock-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror into $root (about a minute) ..." >&2
debootstrap --variant=minbase \
  --include=python3,git,procps,ca-certificates,coreutils,findutils,grep,sed \
  bookworm "$root" "$mirror" >/tmp/rock-debootstrap.log 2>&1 \
  || { echo "error: debootstrap failed; see /tmp/rock-debootstrap.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' -c 'WORKDIR /root' -c 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "built $TAG" >&2
